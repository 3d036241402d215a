"""The step loop that joins a Scheduler (what runs) and an Engine (how it runs).

Kept apart from the llm manager so that tests and benchmarks drive exactly the loop the
worker runs, in-process, without sockets.
"""

from __future__ import annotations

import time

from aiosd.engine import Engine, Seq
from aiosd.scheduler import Scheduler


class Runner:
    def __init__(self, engine: Engine, scheduler: Scheduler):
        self.engine, self.sched = engine, scheduler
        self.seqs: dict[int, Seq] = {}

    def submit(self, seq: Seq, aid: int = 0, priority: int = 0, now: float | None = None) -> None:
        self.seqs[seq.rid] = seq
        self.sched.add(seq.rid, aid, seq.prefill_left, time.monotonic() if now is None else now, priority)

    def remove(self, rid: int) -> Seq | None:
        self.sched.remove(rid)
        seq = self.seqs.pop(rid, None)
        if seq is not None:
            self.engine.drop(seq)
        return seq

    def busy(self) -> bool:
        return bool(self.sched.running) or any(
            self.sched.items[r].aid not in self.sched.parked for r in self.sched.waiting)

    def step(self, now: float | None = None) -> list[tuple[Seq, list[int], bool]]:
        plan = self.sched.schedule(time.monotonic() if now is None else now)
        if not plan:
            return []
        reuse = getattr(self.engine, "reuse_prefix", None)  # both engines have it; an engine may not
        on = reuse is not None and getattr(self.engine, "prefix_bytes", 0)
        starts: dict[int, int] = {}
        computing: set = set()
        for rid, n in list(plan):
            seq, it = self.seqs[rid], self.sched.items[rid]
            if on and seq.prefill_left:
                skipped = reuse(seq, it.chunk)
                if skipped:
                    self.sched.advance(rid, skipped)
                key = self.engine.chunk_key(seq, it.chunk)
                if key is not None and key in computing:
                    # another request computes this very chunk now: wait a step and reuse it
                    plan.remove((rid, n))
                    continue
                computing.add(key)
            starts[rid] = seq.n_cached
        if not plan:
            return []
        events = self.engine.step([(self.seqs[rid], n) for rid, n in plan])
        for (rid, n), (seq, _, done) in zip(plan, events, strict=True):
            if on and rid in starts and seq.n_cached <= seq.n_prompt:   # a prefill step
                self.engine.remember_prefix(seq, starts[rid], self.sched.items[rid].chunk)
            self.sched.advance(rid, n)
            if done:
                self.sched.remove(rid)
        return events

    def run_all(self) -> dict[int, list[int]]:
        """Run until everything submitted has finished; each request's generated tokens."""
        out: dict[int, list[int]] = {}
        while self.busy():
            for seq, _, done in self.step():
                if done:
                    out[seq.rid] = list(seq.generated)
                    self.remove(seq.rid)
        return out
