"""Per-agent short-term memory: records, keys, a byte quota and LRU eviction (no I/O).

The memory manager process wires this to its socket and to storage: every method that
may push records out returns them (`evicted`) so the caller can write them to storage
before forgetting them, and reads report which ids are swapped out (`missing`) so the
caller can fetch them and `swap_in` them again (the paper's K-LRU swap).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosd import protocol
from aiosd.errors import AiosError

OVERHEAD = 64  # bytes charged per record beyond its payload: ids, times, dict slots


def record_size(rec: dict) -> int:
    content = rec.get("content")
    n = len(content) if isinstance(content, (bytes, str)) else len(protocol.pack(content))
    if rec.get("key"):
        n += len(rec["key"])
    if rec.get("metadata"):
        n += len(protocol.pack(rec["metadata"]))
    return n + len(rec.get("role") or "") + OVERHEAD


SWAP_PREFIX = b"mem:"
PERSIST_PREFIX = b"persist:"


def persist_prefix(name: str) -> bytes:
    """Where the memories that agents of this name left at exit (mem_persist) live."""
    return PERSIST_PREFIX + name.encode() + b"\0"


def persist_key(name: str, aid: int) -> bytes:
    # zero-padded, so that the last key under the name's prefix is its latest run
    return persist_prefix(name) + f"{aid:012d}".encode()


def swap_key(aid: int, rid: int) -> bytes:
    """Where an evicted record lives in storage's history database."""
    return SWAP_PREFIX + f"{aid}:{rid:012d}".encode()


@dataclass
class AgentMemory:
    aid: int
    quota: int
    policy: str = "evict"                   # evict | fail
    persist: bool = False                   # keep in storage when the agent exits
    ids: list[int] = field(default_factory=list)        # every live record, oldest first
    resident: OrderedDict = field(default_factory=OrderedDict)  # id -> record, LRU first
    sizes: dict[int, int] = field(default_factory=dict)  # id -> charged bytes (live records)
    keys: dict[str, int] = field(default_factory=dict)   # key -> id
    vectors: dict[int, Any] = field(default_factory=dict)  # id -> embedding, filled by search
    on_disk: set[int] = field(default_factory=set)         # ids with a copy in storage
    used: int = 0                           # bytes of resident records
    next_id: int = 1
    # told (aid, key, record or None) whenever a keyed record becomes resident or stops being:
    # the memory manager mirrors those for the kernel (aiosd/memory_mirror.py)
    watch: Callable[[int, str, dict | None], None] | None = field(default=None, repr=False, compare=False)

    # ---- writes -------------------------------------------------------------------------
    def write(self, content: Any, role: str = "user", key: str | None = None,
              metadata: dict | None = None, now: float | None = None) -> tuple[int, list[dict]]:
        """Append a record, or replace the one holding `key`; returns (id, evicted)."""
        rec = {"id": 0, "role": role or "user", "content": content, "key": key,
               "metadata": metadata or {}, "time": time.time() if now is None else now}
        size = record_size(rec)
        old = self.keys.get(key) if key else None
        rid = old if old is not None else self.next_id
        rec["id"] = rid
        freed = self.sizes.get(rid, 0) if rid in self.resident else 0
        evicted = self._make_room(size - freed, protect={rid})
        if old is not None:
            self._forget(rid)
        else:
            self.next_id += 1
            self.ids.append(rid)
        if key:
            self.keys[key] = rid
        self.vectors.pop(rid, None)
        self._admit(rec, size)
        return rid, evicted

    def _admit(self, rec: dict, size: int) -> None:
        self._make_resident(rec)
        self.sizes[rec["id"]] = size
        self.used += size

    def _make_resident(self, rec: dict, oldest: bool = False) -> None:
        self.resident[rec["id"]] = rec
        if oldest:
            self.resident.move_to_end(rec["id"], last=False)
        if self.watch is not None and rec.get("key"):
            self.watch(self.aid, rec["key"], rec)

    def _forget(self, rid: int) -> None:
        """Drop the resident copy (if any) without dropping the id."""
        rec = self.resident.pop(rid, None)
        if rec is not None:
            self.used -= self.sizes[rid]
            if self.watch is not None and rec.get("key"):
                self.watch(self.aid, rec["key"], None)

    def _make_room(self, need: int, protect: set[int] = frozenset()) -> list[dict]:
        if self.used + need <= self.quota:
            return []
        if self.policy != "evict":
            raise AiosError("ENOMEM", f"agent {self.aid} would use {self.used + need} bytes of memory, "
                                      f"over its quota of {self.quota}")
        if need > self.quota:
            raise AiosError("ENOMEM", f"a record of {need} bytes does not fit agent {self.aid}'s memory "
                                      f"quota of {self.quota}")
        evicted = []
        for rid in list(self.resident):
            if self.used + need <= self.quota:
                break
            if rid in protect:
                continue
            evicted.append(self.resident[rid])
            self._forget(rid)
        if self.used + need > self.quota:
            # put back what we took out: nothing changes when the write fails
            for rec in reversed(evicted):
                self._make_resident(rec, oldest=True)
                self.used += self.sizes[rec["id"]]
            raise AiosError("ENOMEM", f"agent {self.aid}'s memory quota of {self.quota} bytes is held "
                                      "by records being read")
        return evicted

    # ---- reads --------------------------------------------------------------------------
    def select(self, key: str | None = None, last: int | None = None, start: int | None = None,
               end: int | None = None) -> list[int]:
        """The ids a mem_read names: by key, by id range [start, end), the last n, or all."""
        if key is not None:
            rid = self.keys.get(key)
            if rid is None:
                raise AiosError("ENOENT", f"agent {self.aid} has no memory key '{key}'")
            return [rid]
        ids = self.ids
        if start is not None or end is not None:
            lo = start or 0
            hi = end if end is not None else self.next_id
            ids = [i for i in ids if lo <= i < hi]
        if last is not None:
            ids = ids[-last:] if last else []
        return list(ids)

    def fetch(self, ids: list[int]) -> tuple[dict[int, dict], list[int]]:
        """Resident records (touched, most recent last) and the ids swapped out to storage."""
        found, missing = {}, []
        for rid in ids:
            rec = self.resident.get(rid)
            if rec is None:
                missing.append(rid)
            else:
                self.resident.move_to_end(rid)
                found[rid] = rec
        return found, missing

    def swap_in(self, records: list[dict], protect: set[int] = frozenset()) -> tuple[list[dict], list[dict]]:
        """Bring records back from storage where they fit; returns (admitted, evicted)."""
        admitted, evicted = [], []
        for rec in records:
            rid = rec.get("id")
            if rid not in self.sizes or rid in self.resident:
                continue
            try:
                evicted += self._make_room(self.sizes[rid], protect=protect | {rid})
            except AiosError:
                continue  # stays in storage; the caller still returns it
            self._make_resident(rec)
            self.used += self.sizes[rid]
            admitted.append(rec)
        return admitted, evicted

    # ---- clearing and quota -------------------------------------------------------------
    def clear(self, key: str | None = None, record: int | None = None, everything: bool = False) -> list[int]:
        """Remove a record, a key or all; returns the ids removed (the caller drops swapped copies)."""
        if everything:
            ids = list(self.ids)
        elif key is not None:
            if key not in self.keys:
                raise AiosError("ENOENT", f"agent {self.aid} has no memory key '{key}'")
            ids = [self.keys[key]]
        elif record is not None:
            if record not in self.sizes:
                raise AiosError("ENOENT", f"agent {self.aid} has no memory record {record}")
            ids = [record]
        else:
            raise AiosError("EINVAL", "mem_clear needs key, record or all")
        gone = set(ids)
        for rid in ids:
            self._forget(rid)
            self.sizes.pop(rid, None)
            self.vectors.pop(rid, None)
        self.ids = [i for i in self.ids if i not in gone]
        self.keys = {k: v for k, v in self.keys.items() if v not in gone}
        return ids

    def restore(self, records: list[dict]) -> None:
        """Take back records whose swap-out failed, over quota rather than lost."""
        for rec in records:
            if rec["id"] in self.sizes and rec["id"] not in self.resident:
                self._make_resident(rec, oldest=True)
                self.used += self.sizes[rec["id"]]

    def swapped_out(self) -> list[int]:
        return [i for i in self.ids if i not in self.resident]

    def set_quota(self, size: int) -> list[dict]:
        if size < self.used and self.policy != "evict":
            raise AiosError("ENOMEM", f"agent {self.aid} already uses {self.used} bytes, more than {size}")
        self.quota = size
        return self._make_room(0)

    def load(self, records: list[dict]) -> list[dict]:
        """Replace everything with `records` (a rollback); returns what did not fit."""
        self.clear(everything=True)
        self.keys.clear()
        evicted = []
        for rec in sorted(records, key=lambda r: int(r.get("id", 0))):
            rec = dict(rec)
            rid = int(rec["id"])
            size = record_size(rec)
            self.ids.append(rid)
            if rec.get("key"):
                self.keys[rec["key"]] = rid
            self.next_id = max(self.next_id, rid + 1)
            try:
                evicted += self._make_room(size, protect={rid})
            except AiosError:  # larger than the quota (or policy fail): it lives in storage
                self.sizes[rid] = size
                evicted.append(rec)
                continue
            self._admit(rec, size)
        return evicted

    def touch(self, key: str) -> None:
        """A read of `key` served elsewhere (the kernel's mirror): most recently used now."""
        rid = self.keys.get(key)
        if rid is not None and rid in self.resident:
            self.resident.move_to_end(rid)

    def stats(self) -> dict:
        return {"aid": self.aid, "records": len(self.ids), "resident": len(self.resident),
                "used": self.used, "quota": self.quota, "policy": self.policy}


class MemoryStore:
    """Every agent's memory, created on first use with the configured defaults."""

    def __init__(self, default_quota: int, default_policy: str = "evict",
                 watch: Callable[[int, str, dict | None], None] | None = None):
        self.default_quota = default_quota
        self.default_policy = default_policy
        self.watch = watch
        self.agents: dict[int, AgentMemory] = {}

    def get(self, aid: int, quota: int | None = None) -> AgentMemory:
        mem = self.agents.get(aid)
        if mem is None:
            q = quota if quota else self.default_quota
            mem = self.agents[aid] = AgentMemory(aid, q, self.default_policy, watch=self.watch)
        return mem

    def peek(self, aid: int) -> AgentMemory | None:
        return self.agents.get(aid)

    def release(self, aid: int) -> AgentMemory | None:
        mem = self.agents.pop(aid, None)
        if mem is not None and mem.watch is not None:
            for rec in mem.resident.values():
                if rec.get("key"):
                    mem.watch(aid, rec["key"], None)
        return mem
