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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf._harness import Daemon, markdown_table, parse_args, plot_bars, write_json  # noqa: E402
from perf.throughput_llamacpp import messages  # noqa: E402

SCRIPT = "solo_vs_batched"


def chat(client, i: int, tokens: int) -> str:
    return client.syscall("llm_chat", {"messages": messages(i), "max_tokens": tokens, "temperature": 0.0},
                          timeout=600)["text"]


def one_policy(policy: str, n: int, tokens: int, device: str) -> dict:
    import libaios
    with Daemon(engine="transformers", device=device, managers=["storage", "llm"], scheduler=policy,
                quantum=4, max_batch=n) as d:
        clients = [libaios.connect(home=str(d.home)) for _ in range(n)]
        chat(clients[0], 0, 4)  # warm-up
        t0 = time.perf_counter()
        solo = [chat(clients[0], i, tokens) for i in range(n)]
        solo_s = time.perf_counter() - t0
        batched: list = [None] * n
        threads = [threading.Thread(target=lambda i=i: batched.__setitem__(i, chat(clients[i], i, tokens)))
                   for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batched_s = time.perf_counter() - t0
        for c in clients:
            c.close()
    return {"identical": sum(a == b for a, b in zip(solo, batched, strict=True)), "of": n, "solo_s": round(solo_s, 3),
            "concurrent_s": round(batched_s, 3),
            "diff": [(i, solo[i], batched[i]) for i in range(n) if solo[i] != batched[i]][:3]}


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
