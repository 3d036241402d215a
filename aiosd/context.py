"""The context manager's logic (paper section 4.2): generation snapshots and per-agent contexts.

No sockets here: the llm worker passes in how to spill to storage (`spill`/`fetch`/`discard`
callables that make the `_sto_put`/`_sto_get` internal calls) and how to count tokens. `fetch`
takes the bytes out of storage and `discard` deletes those of a snapshot that goes without being
read back: a spilled K/V cache is megabytes, and storage keeps only the ones still wanted.

Snapshots live in host memory under `budget` bytes: in the llm worker's shared-memory arena
(aiosd.kv_shm) when it has one, else in private memory. Over budget, the least recently used one
leaves memory by whichever is cheaper under a simple cost model: writing its KV bytes to LMDB
(and reading them back later) at `disk_bytes_per_s`, or dropping them and recomputing the
prefill from its tokens at `prefill_tokens_per_s` (vLLM's recompute). Tokens, sampler state and
parameters are always kept, so a dropped snapshot still restores token-identically.
"""

from __future__ import annotations

import io
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import torch

from aiosd.errors import AiosError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Entry:
    aid: int
    snap: Any                          # an engine KvSnapshot
    meta: dict                         # what the llm_chat asked for: stop strings, stream, ...
    where: str = "ram"                 # ram | storage | dropped
    nbytes: int = 0


class SnapshotStore:
    """Snapshots by id. With an `arena` (aiosd.kv_shm, the worker's shared-memory segment of
    `budget` bytes) the K/V live in it: `reserve` is what the engine's snapshot asks for a
    place, and makes room by evicting the least recently used."""

    def __init__(self, budget: int, spill: Callable[[str, bytes], None] | None = None,
                 fetch: Callable[[str], bytes | None] | None = None,
                 disk_bytes_per_s: float = 200e6, prefill_tokens_per_s: float = 500.0, arena: Any = None,
                 discard: Callable[[str], None] | None = None):
        self.budget, self.spill, self.fetch, self.discard, self.arena = budget, spill, fetch, discard, arena
        self.disk_bytes_per_s, self.prefill_tokens_per_s = disk_bytes_per_s, prefill_tokens_per_s
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.ram_bytes = 0

    def reserve(self, shape: tuple, dtype: Any) -> Any:
        """An arena region for a cache of `shape`, evicting LRU snapshots until one fits; None
        without an arena or when even an empty arena is too small (then private memory)."""
        if self.arena is None:
            return None
        while (region := self.arena.alloc(shape, dtype)) is None:
            victim = next((s for s, e in self.entries.items() if e.where == "ram" and e.snap.region), None)
            if victim is None:
                return None
            self._leave_ram(victim, self.entries[victim])
        return region

    def put(self, aid: int, snap: Any, meta: dict) -> str:
        sid = secrets.token_hex(8)
        if snap.kv is not None and getattr(snap, "region", None) is None:
            self._place(snap)
        e = Entry(aid, snap, meta, "ram", _ram_bytes(snap))
        self.entries[sid] = e
        self.ram_bytes += e.nbytes
        self._evict(keep=sid)
        return sid

    def get(self, sid: str, aid: int, is_root: bool = False) -> Entry:
        e = self.entries.get(sid)
        if e is None:
            raise AiosError("ENOENT", f"no snapshot {sid!r} (never taken, or evicted)")
        if e.aid != aid and not is_root:
            raise AiosError("EACCES", f"snapshot {sid} belongs to agent {e.aid}")
        self.entries.move_to_end(sid)
        if e.where == "storage":
            blob = self.fetch(sid) if self.fetch else None
            if blob is None:
                raise AiosError("ENOENT", f"snapshot {sid} was evicted from storage")
            e.snap.kv = torch.load(io.BytesIO(blob), weights_only=True)
            self._place(e.snap)
            e.where, e.nbytes = "ram", _ram_bytes(e.snap)
            self.ram_bytes += e.nbytes
            self._evict(keep=sid)
        return e

    def drop_agent(self, aid: int) -> None:
        for sid in [s for s, e in self.entries.items() if e.aid == aid]:
            e = self.entries.pop(sid)
            if e.where == "ram":
                self.ram_bytes -= e.nbytes
                _free(e.snap)
            elif e.where == "storage" and self.discard is not None:
                self.discard(sid)

    def close(self) -> None:
        """Forget every snapshot and unlink the arena (the llm worker exits)."""
        for aid in {e.aid for e in self.entries.values()}:
            self.drop_agent(aid)
        if self.arena is not None:
            self.arena.close()

    def _place(self, snap: Any) -> None:
        """Move a private kv (read back from storage, or another engine's bytes) into the
        arena, shaped like the cache it will be restored into when it is a torch cache."""
        kv = snap.kv
        shape = tuple(kv.shape)
        if kv.dim() == 5 and kv.dtype != torch.uint8:
            shape = (*shape[:3], snap.n_prompt + snap.max_tokens, shape[4])
        region = self.reserve(shape, kv.dtype)
        if region is not None:
            t = region.tensor()
            snap.kv = (t[:, :, :, :kv.shape[3]] if kv.dim() == 5 else t).copy_(kv)
            snap.region = region

    def _evict(self, keep: str) -> None:
        for sid, e in list(self.entries.items()):
            if self.ram_bytes <= self.budget:
                return
            if sid == keep or e.where != "ram" or e.snap.kv is None:
                continue
            self._leave_ram(sid, e)

    def _leave_ram(self, sid: str, e: Entry) -> None:
        """Spill e to storage or drop its K/V, whichever the cost model finds cheaper."""
        copy_s = 2 * e.snap.nbytes / self.disk_bytes_per_s  # out now, back in on restore
        recompute_s = len(e.snap.tokens) / self.prefill_tokens_per_s
        if self.spill is not None and copy_s < recompute_s:
            buf = io.BytesIO()
            torch.save(e.snap.kv.contiguous(), buf)
            try:
                self.spill(sid, buf.getvalue())
                e.where = "storage"
            except AiosError:
                e.where = "dropped"
        else:
            e.where = "dropped"
        _free(e.snap)
        if e.where == "dropped":
            e.snap.n_cached = 0
        self.ram_bytes -= e.nbytes


def _ram_bytes(snap: Any) -> int:
    region = getattr(snap, "region", None)
    return region.nbytes if region is not None else snap.nbytes


def _free(snap: Any) -> None:
    region = getattr(snap, "region", None)
    snap.kv, snap.region = None, None
    if region is not None:
        region.release()


@dataclass
class AgentContext:
    messages: list[dict] = field(default_factory=list)
    window: int = 2048
    strategy: str = "truncate"
    updated: float = field(default_factory=time.time)


def check_messages(messages: Any) -> list[dict]:
    """OpenAI-style messages, or EINVAL naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise AiosError("EINVAL", "messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise AiosError("EINVAL", f"messages[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise AiosError("EINVAL", f"messages[{i}].role must be one of {', '.join(ROLES)}, not {role!r}")
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise AiosError("EINVAL", f"messages[{i}].content must be a string")
        msg = {"role": role, "content": content}
        for k in ("tool_calls", "tool_call_id", "name"):
            if k in m:
                msg[k] = m[k]
        out.append(msg)
    return out


def truncate(messages: list[dict], fits: Callable[[list[dict]], bool]) -> list[dict]:
    """Drop the oldest turns (never the system prompt nor the last message) until `fits`."""
    msgs = list(messages)
    while not fits(msgs):
        idx = next((i for i, m in enumerate(msgs[:-1]) if m["role"] != "system"), None)
        if idx is None:
            break
        msgs.pop(idx)
    return msgs


def summarize_split(messages: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(system messages, the older half of the turns to summarise, the turns kept verbatim)."""
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    cut = max(1, len(turns) // 2) if len(turns) > 1 else 0
    return system, turns[:cut], turns[cut:]


def summary_prompt(old: list[dict]) -> list[dict]:
    convo = "\n".join(f"{m['role']}: {m['content']}" for m in old)
    return [{"role": "system", "content": "You summarise conversations concisely."},
            {"role": "user", "content": f"Summarise this conversation in a few sentences:\n\n{convo}"}]
