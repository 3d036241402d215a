"""Prefix reuse: 16 agents with a shared ~500-token system prompt, time to first token with the
torch engine's prefix cache on vs off.

    python perf/prefix_reuse.py [--quick] [--agents 16] [--chunks 256,128,64]

In-process, through aiosd.runner.Runner (the step loop the llm worker runs) and the real
scheduler: all agents submit at once; TTFT is submission to each request's first token.
Two cases with reuse on: `cold` (the system prompt is new: the first requests compute it, the
others reuse it as soon as it exists) and `warm` (an earlier request already carried it).
Reuse works in blocks of 32 tokens (aiosd.engine.BLOCK) whatever the prefill chunk (a chunk
that is a multiple of the block), so all but the last partial block of the shared prompt is
skipped; several chunk sizes are shown because the chunk still sets how the cold case's first
request and the others interleave. Target (issue 5): >= 2x sooner.
Writes perf/results/prefix_reuse.json and prints a markdown table.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from aiosd.config import Config  # noqa: E402
from aiosd.engine import Engine  # noqa: E402
from aiosd.model import resolve  # noqa: E402
from aiosd.runner import Runner  # noqa: E402
from aiosd.scheduler import Scheduler  # noqa: E402
from perf._harness import markdown_table, parse_args, write_json  # noqa: E402

SENTENCE = ("You are a careful assistant for a team of engineers who run an operating system for "
            "language-model agents; answer briefly, cite the rule you follow, and never invent facts. ")


def system_prompt(eng: Engine, tokens: int) -> str:
    text = ""
    while len(eng.tokenizer.encode(text)) < tokens:
        text += SENTENCE
    ids = eng.tokenizer.encode(text)[:tokens]
    return eng.tokenizer.decode(ids)


def ttft(eng: Engine, prompts: list[list[int]], chunk: int, max_batch_tokens: int) -> list[float]:
    r = Runner(eng, Scheduler("fifo", max_batch=32, max_batch_tokens=max_batch_tokens, prefill_chunk=chunk))
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        r.submit(eng.add(i, p, 2), aid=i)
    first: dict[int, float] = {}
    while len(first) < len(prompts):
        for seq, new, _ in r.step():
            if new and seq.rid not in first:
                first[seq.rid] = time.perf_counter() - t0
                r.remove(seq.rid)
    return [first[i] for i in range(len(prompts))]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=[
        (("--agents",), {"type": int, "default": 16}),
        (("--system-tokens",), {"type": int, "default": 500}),
        (("--chunks",), {"default": "256,128,64"}),
        (("--max-batch-tokens",), {"type": int, "default": Config().max_batch_tokens}),
        (("--threads",), {"type": int, "default": 0, "help": "torch threads (0: torch's default)"})])
    torch.set_num_threads(args.threads or torch.get_num_threads())
    eng = Engine(resolve(Config()), device="cpu")
    n = 4 if args.quick else args.agents
    chunks = [int(c) for c in args.chunks.split(",")][:1 if args.quick else None]
    system = system_prompt(eng, args.system_tokens)
    prompts = [eng.encode_chat([{"role": "system", "content": system},
                                {"role": "user", "content": f"Agent {i}: what should I check first today?"}])
               for i in range(n)]
    ttft(eng, prompts[:1], chunks[0], args.max_batch_tokens)  # warm the engine up
    rows, out = [], {"agents": n, "prompt_tokens": len(prompts[0]), "system_tokens": args.system_tokens,
                     "max_batch_tokens": args.max_batch_tokens, "threads": torch.get_num_threads(),
                     "by_chunk": {}}
    for chunk in chunks:
        eng.prefix_bytes = 0
        off = ttft(eng, prompts, chunk, args.max_batch_tokens)
        eng.prefix_bytes, eng.prefixes, eng.prefix_used = 1 << 30, type(eng.prefixes)(), 0
        before = eng.reused_tokens
        cold = ttft(eng, prompts, chunk, args.max_batch_tokens)
        reused_cold = eng.reused_tokens - before
        # warm: an earlier agent's request carried the same system prompt (another user message)
        warm_prompts = [p[:] for p in prompts]
        warm = ttft(eng, warm_prompts, chunk, args.max_batch_tokens)
        eng.prefix_bytes = 0
        res = {"off_mean_s": statistics.mean(off), "off_p50_s": statistics.median(off), "off_max_s": max(off),
               "cold_mean_s": statistics.mean(cold), "cold_max_s": max(cold),
               "warm_mean_s": statistics.mean(warm), "warm_max_s": max(warm),
               "reused_tokens_cold": reused_cold,
               "speedup_cold": statistics.mean(off) / statistics.mean(cold),
               "speedup_warm": statistics.mean(off) / statistics.mean(warm)}
        out["by_chunk"][chunk] = res
        rows.append((chunk, res["off_mean_s"], res["cold_mean_s"], res["warm_mean_s"], res["speedup_cold"],
                     res["speedup_warm"]))
        print(rows[-1], flush=True)
        path = write_json("prefix_reuse" + ("_quick" if args.quick else ""), out)  # each chunk size as it ends
    print(f"{n} agents, prompt {len(prompts[0])} tokens (shared system prompt {args.system_tokens})")
    print(markdown_table(("prefill chunk", "TTFT off (mean s)", "on, cold", "on, warm", "speedup cold",
                          "speedup warm"), rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
