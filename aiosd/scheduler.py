"""Scheduling policies of the llm worker: pure, I/O-free, no torch (nano-vllm style).

The worker tells the scheduler what arrived (`add`), what ran (`advance`), what ended
(`remove`) and which agents are suspended (`park`/`unpark`); `schedule(now)` answers what to
run in the next engine step: a list of (request id, tokens to feed), within `max_batch`
running requests and `max_batch_tokens` tokens.

- Every running request that decodes costs one token a step; prefill runs in whole chunks of
  `prefill_chunk` tokens (the last one shorter) after the decodes, so a long prompt never
  stalls the decoding ones for more than one chunk. Chunks always start at multiples of the
  chunk size, so a request's numerics do not depend on the load.
- `fifo`: admitted in arrival order, runs to the end.
- `rr`: a running request whose quantum (decode steps) is used up while others wait is
  preempted (the worker keeps its KV cache) and goes to the back of the queue.
- `priority`: higher priority first; waiting time adds one priority level per `aging_s`
  seconds so nothing starves; a waiting request that outranks a running one that has used
  its quantum takes its place.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("fifo", "rr", "priority")


@dataclass
class Item:
    rid: int
    aid: int
    priority: int
    seq: int                 # arrival order
    since: float             # when it last started waiting
    prefill_left: int        # prompt tokens not fed yet
    chunk: int
    ran: int = 0             # decode steps in the current quantum
    running: bool = False
    preemptions: int = 0


class Scheduler:
    def __init__(self, policy: str = "fifo", max_batch: int = 32, max_batch_tokens: int = 512,
                 prefill_chunk: int = 256, quantum: int = 8, aging_s: float = 2.0):
        self.items: dict[int, Item] = {}
        self.waiting: list[int] = []     # rids in queue order
        self.running: list[int] = []     # rids in admission order
        self.parked: set[int] = set()    # suspended agents
        self._seq = 0
        self.max_batch, self.max_batch_tokens = max_batch, max_batch_tokens
        self.prefill_chunk, self.aging_s = prefill_chunk, aging_s
        self.set_policy(policy, quantum)

    def set_policy(self, policy: str, quantum: int | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; one of {', '.join(POLICIES)}")
        self.policy = policy
        if quantum is not None:
            if quantum < 1:
                raise ValueError("quantum must be at least 1 decode step")
            self.quantum = quantum

    # what the worker reports
    def add(self, rid: int, aid: int, prompt_len: int, now: float, priority: int = 0) -> None:
        self._seq += 1
        chunk = max(1, min(self.prefill_chunk, self.max_batch_tokens))
        self.items[rid] = Item(rid, aid, priority, self._seq, now, prompt_len, chunk)
        self.waiting.append(rid)

    def advance(self, rid: int, fed: int) -> None:
        """`fed` tokens of rid ran in the last step."""
        it = self.items.get(rid)
        if it is None:
            return
        if it.prefill_left:
            it.prefill_left = max(0, it.prefill_left - fed)
        else:
            it.ran += 1

    def remove(self, rid: int) -> None:
        if self.items.pop(rid, None) is None:
            return
        for q in (self.waiting, self.running):
            if rid in q:
                q.remove(rid)

    def park(self, aid: int) -> None:
        self.parked.add(aid)
        for rid in [r for r in self.running if self.items[r].aid == aid]:
            self._preempt(rid, now=None)

    def unpark(self, aid: int) -> None:
        self.parked.discard(aid)

    def set_priority(self, aid: int, priority: int) -> None:
        for it in self.items.values():
            if it.aid == aid:
                it.priority = priority

    # the decision
    def _preempt(self, rid: int, now: float | None) -> None:
        it = self.items[rid]
        self.running.remove(rid)
        it.running, it.ran = False, 0
        it.preemptions += 1
        if now is not None:
            it.since = now
        self.waiting.append(rid)

    def _rank(self, rid: int, now: float) -> tuple:
        it = self.items[rid]
        if self.policy == "priority":
            waited = 0.0 if it.running else max(0.0, now - it.since)
            return (-(it.priority + waited / self.aging_s), it.seq)
        if self.policy == "rr":
            return (0, 0)  # queue order (sort is stable)
        return (it.seq,)

    def _ready(self, now: float) -> list[int]:
        ready = [r for r in self.waiting if self.items[r].aid not in self.parked]
        return sorted(ready, key=lambda r: self._rank(r, now))

    def schedule(self, now: float) -> list[tuple[int, int]]:
        ready = self._ready(now)
        if self.policy == "rr" and ready:
            for rid in list(self.running):
                if self.items[rid].ran >= self.quantum:
                    self._preempt(rid, now)
            ready = self._ready(now)
        elif self.policy == "priority" and ready:
            self._priority_swaps(ready, now)
            ready = self._ready(now)
        for rid in ready:
            if len(self.running) >= self.max_batch:
                break
            self.waiting.remove(rid)
            self.running.append(rid)
            self.items[rid].running = True
        return self._plan()

    def _priority_swaps(self, ready: list[int], now: float) -> None:
        for rid in ready:
            if len(self.running) < self.max_batch:
                return
            worst = max(self.running, key=lambda r: self._rank(r, now))
            w = self.items[worst]
            if w.ran < self.quantum or self._rank(rid, now) >= self._rank(worst, now):
                return
            self._preempt(worst, now)

    def _plan(self) -> list[tuple[int, int]]:
        budget = self.max_batch_tokens
        plan = []
        for rid in self.running:           # decodes first: one token each
            if not self.items[rid].prefill_left and budget > 0:
                plan.append((rid, 1))
                budget -= 1
        for rid in self.running:           # then whole prefill chunks while they fit
            it = self.items[rid]
            if it.prefill_left:
                n = min(it.chunk, it.prefill_left)
                if n > budget and plan:
                    continue
                plan.append((rid, n))
                budget -= n
        return plan

    # introspection for metrics and tests
    def queued(self) -> int:
        return len(self.waiting)

    def __len__(self) -> int:
        return len(self.items)
