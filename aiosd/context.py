"""The context manager's logic (paper section 4.2): generation snapshots and per-agent contexts.

No sockets here: the llm worker passes in how to spill to storage (`spill`/`fetch` callables
that make the `_sto_put`/`_sto_get` internal calls) and how to count tokens.

Snapshots live in host memory under `budget` bytes. Over budget, the least recently used one
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
    def __init__(self, budget: int, spill: Callable[[str, bytes], None] | None = None,
                 fetch: Callable[[str], bytes | None] | None = None,
                 disk_bytes_per_s: float = 200e6, prefill_tokens_per_s: float = 500.0):
        self.budget, self.spill, self.fetch = budget, spill, fetch
        self.disk_bytes_per_s, self.prefill_tokens_per_s = disk_bytes_per_s, prefill_tokens_per_s
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.ram_bytes = 0

    def put(self, aid: int, snap: Any, meta: dict) -> str:
        sid = secrets.token_hex(8)
        e = Entry(aid, snap, meta, "ram", snap.nbytes)
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
            e.where = "ram"
            self.ram_bytes += e.nbytes
            self._evict(keep=sid)
        return e

    def drop_agent(self, aid: int) -> None:
        for sid in [s for s, e in self.entries.items() if e.aid == aid]:
            e = self.entries.pop(sid)
            if e.where == "ram":
                self.ram_bytes -= e.nbytes

    def _evict(self, keep: str) -> None:
        for sid, e in list(self.entries.items()):
            if self.ram_bytes <= self.budget:
                return
            if sid == keep or e.where != "ram" or e.snap.kv is None:
                continue
            copy_s = 2 * e.nbytes / self.disk_bytes_per_s       # out now, back in on restore
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
            e.snap.kv = None
            if e.where == "dropped":
                e.snap.n_cached = 0
            self.ram_bytes -= e.nbytes


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
