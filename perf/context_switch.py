"""Snapshot + restore of a 1,024-token generation vs a numpy copy of its KV bytes vs recompute.

    python perf/context_switch.py [--quick] [--tokens 1024]

In-process with the transformers engine (aiosd.engine): the cost of the context switch itself,
through the llm worker's path: the snapshot is copied into the snapshot store's shared-memory
arena (aiosd.kv_shm), the restore maps it copy-on-write as the new request's cache. Also shown:
the first switch (the arena's pages are fresh then), and what restore defers to the restored
request's first step (faulting the mapping's pages in on first read).
Targets (issue 5): snapshot_restore_s <= 2x numpy_copy_s and >= 5x cheaper than recompute_s.
Writes perf/results/context_switch.json with the pinned keys and prints a markdown table.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosd import kv_shm  # noqa: E402
from aiosd.config import Config  # noqa: E402
from aiosd.context import SnapshotStore  # noqa: E402
from aiosd.engine import Engine  # noqa: E402
from aiosd.kv_shm import Arena  # noqa: E402
from aiosd.model import resolve  # noqa: E402
from perf._harness import markdown_table, parse_args, write_json  # noqa: E402


def best(fn, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.split("\n")[0], argv, extra=[(("--tokens",), {"type": int, "default": None})])
    n = args.tokens or (256 if args.quick else 1024)
    eng = Engine(resolve(Config()), device="cpu")
    prompt = [(i * 7919) % 40000 + 100 for i in range(n)]

    def prefill():
        seq = eng.add(1, prompt, 8)
        while seq.prefill_left:
            eng.step([(seq, 256)])
        return seq
    seq = prefill()
    recompute_s = best(prefill, 2)
    kv = seq.cache[:, :, :, :seq.n_cached].numpy()
    numpy_copy_s = best(lambda: kv.copy())
    budget = 1 << 30
    store = SnapshotStore(budget, arena=Arena(kv_shm.PREFIX + "perf-", budget))
    holder: dict = {}

    def switch() -> float:
        old = holder.pop("seq", None)
        if old is not None:                      # the previous round's request ends, and its snapshot
            eng.drop(old)
            store.drop_agent(0)
        t0 = time.perf_counter()
        snap = eng.snapshot(seq, region_for=store.reserve)
        sid = store.put(0, snap, {})
        holder["seq"] = eng.restore(store.get(sid, 0).snap, 2)
        return time.perf_counter() - t0
    cold_s = switch()
    snapshot_restore_s = min(switch() for _ in range(5))
    assert holder["seq"].cache is not None and store.arena.pins, "restore did not map the snapshot"

    # what restore defers: the first reads of the copy-on-write mapping fault its pages in.
    # Read every restored K/V byte once (a fresh mapping each time) against the same read of
    # the original cache; the difference is what the restored request's first step pays.
    def first_read(fresh: bool) -> float:
        if fresh:
            switch()
        t0 = time.perf_counter()
        float((holder["seq"] if fresh else seq).cache[:, :, :, :n].sum())
        return time.perf_counter() - t0
    deferred_s = max(0.0, statistics.median(first_read(True) for _ in range(5))
                     - statistics.median(first_read(False) for _ in range(5)))
    a = eng.step([(seq, 1)])[0][1]
    b = eng.step([(holder["seq"], 1)])[0][1]
    row = {"tokens": n, "bytes": int(kv.nbytes), "snapshot_restore_s": snapshot_restore_s,
           "numpy_copy_s": numpy_copy_s, "recompute_s": recompute_s, "identical": a == b,
           "snapshot_restore_cold_s": cold_s, "restore_deferred_s": deferred_s,
           "where": "shared-memory arena, restore copy-on-write"}
    print(markdown_table(["tokens", "KV bytes", "snapshot+restore s", "numpy copy s", "recompute s",
                          "vs copy", "recompute / switch", "identical"],
                         [(n, row["bytes"], snapshot_restore_s, numpy_copy_s, recompute_s,
                           snapshot_restore_s / numpy_copy_s, recompute_s / snapshot_restore_s, row["identical"])]))
    print(markdown_table(["first switch s (fresh arena pages)", "deferred to the first step s",
                          "(switch + deferred) / copy"],
                         [(cold_s, deferred_s, (snapshot_restore_s + deferred_s) / numpy_copy_s)]))
    write_json("context_switch", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
