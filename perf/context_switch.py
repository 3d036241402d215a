"""Snapshot + restore of a 1,024-token generation vs a numpy copy of its KV bytes vs recompute.

    python perf/context_switch.py [--quick] [--tokens 1024]

In-process with the transformers engine (aiosd.engine): the cost of the context switch itself.
Targets (issue 5): snapshot_restore_s <= 2x numpy_copy_s and >= 5x cheaper than recompute_s.
Writes perf/results/context_switch.json with the pinned keys and prints a markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosd.config import Config  # noqa: E402
from aiosd.engine import Engine  # noqa: E402
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
    holder = {}

    def switch():
        snap = eng.snapshot(seq)
        holder["seq"] = eng.restore(snap, 2)
    snapshot_restore_s = best(switch)
    a = eng.step([(seq, 1)])[0][1]
    b = eng.step([(holder["seq"], 1)])[0][1]
    row = {"tokens": n, "bytes": int(kv.nbytes), "snapshot_restore_s": snapshot_restore_s,
           "numpy_copy_s": numpy_copy_s, "recompute_s": recompute_s, "identical": a == b}
    print(markdown_table(["tokens", "KV bytes", "snapshot+restore s", "numpy copy s", "recompute s",
                          "vs copy", "recompute / switch", "identical"],
                         [(n, row["bytes"], snapshot_restore_s, numpy_copy_s, recompute_s,
                           snapshot_restore_s / numpy_copy_s, recompute_s / snapshot_restore_s, row["identical"])]))
    write_json("context_switch", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
