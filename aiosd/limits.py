"""Per-agent LLM limits the kernel enforces before forwarding: in-flight requests and a
token budget per minute. Pure bookkeeping with an injectable clock, no I/O.

The budget is charged from the llm worker's "usage" events, i.e. after the fact: a request
admitted while under budget may overshoot it; the agent's next one waits (EBUSY) until the
sliding 60 s window has room again. That bounds what one agent takes from the others
without the kernel having to predict how many tokens a request will produce.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from aiosd.errors import AiosError

LLM_CALLS = frozenset({"llm_chat", "gen_restore"})
WINDOW_S = 60.0


class LlmLimits:
    def __init__(self, max_queued: int = 64, tokens_per_min: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_queued = max_queued
        self.tokens_per_min = tokens_per_min
        self.clock = clock
        self.inflight: dict[int, int] = {}
        self.spent: dict[int, deque[tuple[float, int]]] = {}

    def admit(self, aid: int) -> None:
        """Raise EBUSY if aid may not start one more LLM request now; else count it."""
        n = self.inflight.get(aid, 0)
        if self.max_queued > 0 and n >= self.max_queued:
            raise AiosError("EBUSY", f"agent {aid} already has {n} LLM requests queued "
                                     f"(max_queued_llm = {self.max_queued})")
        if self.tokens_per_min > 0:
            used = self.used(aid)
            if used >= self.tokens_per_min:
                raise AiosError("EBUSY", f"agent {aid} used {used} tokens in the last minute "
                                         f"(llm_tokens_per_min = {self.tokens_per_min})")
        self.inflight[aid] = n + 1

    def done(self, aid: int) -> None:
        n = self.inflight.get(aid, 0) - 1
        if n > 0:
            self.inflight[aid] = n
        else:
            self.inflight.pop(aid, None)

    def charge(self, aid: int, tokens: int) -> None:
        """Record usage even with no budget set, so that a budget set at run time (sys_set)
        counts the last minute; used() drops what left the window, so this stays small."""
        if tokens > 0:
            self.spent.setdefault(aid, deque()).append((self.clock(), int(tokens)))
            self.used(aid)

    def used(self, aid: int) -> int:
        q = self.spent.get(aid)
        if not q:
            return 0
        cutoff = self.clock() - WINDOW_S
        while q and q[0][0] <= cutoff:
            q.popleft()
        return sum(n for _, n in q)

    def forget(self, aid: int) -> None:
        """The agent exited: its counters go (an aid is never reused)."""
        self.inflight.pop(aid, None)
        self.spent.pop(aid, None)


def check_alloc(call: str, size: int, memory_quota: int, storage_quota: int) -> None:
    """mem_alloc / sto_alloc by an agent: within the quota it was given, never above it.

    The ceiling is the agent's spawn-time quota (or the config default); without it an
    agent could lift its own limit and take the memory or the disk from the others."""
    if call == "mem_alloc" and size > memory_quota:
        raise AiosError("ENOMEM", f"mem_alloc of {size} bytes is over this agent's memory quota of {memory_quota}")
    if call == "sto_alloc" and size > storage_quota:
        raise AiosError("ENOSPC", f"sto_alloc of {size} bytes is over this agent's storage quota of {storage_quota}")


def check_child(parent_name: str, parent_tools: list | None, parent_quotas: tuple[int, int],
                name: str, tools: list | None, memory_quota: int | None,
                storage_quota: int | None) -> tuple[str, list | None, int, int]:
    """What an agent may give a child it spawns: no more than it has itself.

    The child's name is put under the parent's ("parent.child"): names own storage, audit
    and keys, so an agent naming a child after another agent would get that agent's files.
    Returns the child's (name, tools, memory_quota, storage_quota), inherited where not given."""
    if name != parent_name and not name.startswith(parent_name + "."):
        name = f"{parent_name}.{name}"
    if parent_tools is not None:
        if tools is None:
            tools = list(parent_tools)
        extra = sorted(set(map(str, tools)) - set(map(str, parent_tools)))
        if extra:
            raise AiosError("EPERM", f"a child cannot have tools its parent lacks: {', '.join(extra)}")
    mem, sto = parent_quotas
    if memory_quota is not None and memory_quota > mem:
        raise AiosError("EPERM", f"a child's memory_quota ({memory_quota}) cannot exceed its parent's ({mem})")
    if storage_quota is not None and storage_quota > sto:
        raise AiosError("EPERM", f"a child's storage_quota ({storage_quota}) cannot exceed its parent's ({sto})")
    return name, tools, mem if memory_quota is None else memory_quota, sto if storage_quota is None else storage_quota
