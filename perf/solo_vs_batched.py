"""Solo vs batched greedy texts through the daemon, on the model worker's device, one run.

    python perf/solo_vs_batched.py [--quick] [--n 16] [--tokens 48] [--device auto|cpu|cuda]

The same N prompts (agent-style chats, temperature 0) are sent one at a time, then all at once
from N connections, under `fifo` and under `rr` with quantum 4 (requests preempted and resumed
mid-generation). Every concurrent text must equal its solo text: batching, preemption and the
K/V snapshots must not change a token. Unlike table4_consistency.py it needs no agents or tools
(storage and the llm worker only), so it runs on a bare GPU machine. Writes
perf/results/solo_vs_batched.{json,png} and a markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf._harness import Daemon, markdown_table, parse_args, plot_bars, write_json  # noqa: E402
from perf.throughput_llamacpp import through_daemon  # noqa: E402

SCRIPT = "solo_vs_batched"


def one_policy(policy: str, n: int, tokens: int, device: str) -> dict:
    with Daemon(engine="transformers", device=device, managers=["storage", "llm"], scheduler=policy,
                quantum=4, max_batch=n) as d:
        through_daemon(d, 1, 4)  # warm-up
        solo = [through_daemon(d, 1, tokens, first=i, texts=True) for i in range(n)]
        batched = through_daemon(d, n, tokens, texts=True)
    solo_texts = [r["texts"][0] for r in solo]
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(solo_texts, batched["texts"], strict=True)) if a != b]
    return {"identical": n - len(diff), "of": n, "solo_s": round(sum(r["wall_s"] for r in solo), 3),
            "concurrent_s": round(batched["wall_s"], 3), "diff": diff[:3]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.split("\n")[0], argv, extra=[
        (("--n",), {"type": int, "default": None}),
        (("--tokens",), {"type": int, "default": None}),
        (("--device",), {"default": "auto", "choices": ["auto", "cpu", "cuda"]}),
    ])
    n, tokens = args.n or (4 if args.quick else 16), args.tokens or (16 if args.quick else 48)
    out = {}
    for policy in ("fifo", "rr"):
        out[policy] = one_policy(policy, n, tokens, args.device)
        print(policy, out[policy], flush=True)
    print(markdown_table(["policy", "identical", "solo s", "concurrent s", "speed-up"],
                         [(p, f"{r['identical']}/{r['of']}", r["solo_s"], r["concurrent_s"],
                           r["solo_s"] / r["concurrent_s"]) for p, r in out.items()]))
    write_json(SCRIPT, {"device": args.device, "tokens": tokens, **out})
    plot_bars(SCRIPT, list(out), {"solo s": [r["solo_s"] for r in out.values()],
                                  "concurrent s": [r["concurrent_s"] for r in out.values()]},
              "seconds", f"{n} prompts, {tokens} tokens: identical "
              + ", ".join(f"{p} {r['identical']}/{r['of']}" for p, r in out.items()))
    return 0 if all(r["identical"] == r["of"] for r in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
