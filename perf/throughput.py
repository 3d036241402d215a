"""LLM throughput of the transformers engine through the whole system vs raw HF generate, one run.

    python perf/throughput.py [--quick] [--tokens 48] [--ns 1,4,8,16,32] [--threads T] [--device D]

Rows (greedy, `--tokens` new tokens per request, same model weights and prompts):
- tok_s: N agents' concurrent llm_chat through the daemon (`--engine transformers`);
- raw_tok_s: transformers `model.generate` on the same safetensors, the N prompts batched
  (left padding), in this process, on the daemon's device (`--device`: auto, cpu or cuda);
- one_at_a_time_tok_s: the same `generate`, the N prompts one after another.
Targets (issue 4): N=32 tok_s >= 0.8x raw and >= 5x one-at-a-time; N=1 within 10% of raw;
p99 queue wait at N=32 <= 2 s. Writes perf/results/throughput.{json,png} and a markdown table.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosd.config import Config  # noqa: E402
from aiosd.model import resolve  # noqa: E402
from perf._harness import Daemon, markdown_table, parse_args, plot_bars, write_json  # noqa: E402
from perf.throughput_llamacpp import messages, through_daemon  # noqa: E402

SCRIPT = "throughput"


def hf_generate(model, tok, prompts: list[str], tokens: int) -> dict:
    import torch
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    if out.is_cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    n = (out.shape[1] - enc["input_ids"].shape[1]) * len(prompts)
    return {"tokens": n, "wall_s": wall, "tok_s": n / wall}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.split("\n")[0], argv, extra=[
        (("--tokens",), {"type": int, "default": None}),
        (("--threads",), {"type": int, "default": 0}),
        (("--ns",), {"default": None}),
        (("--device",), {"default": "auto", "choices": ["auto", "cpu", "cuda"]}),
    ])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokens = args.tokens or (16 if args.quick else 48)
    ns = [int(x) for x in (args.ns or ("1,8" if args.quick else "1,4,8,16,32")).split(",")]
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    model_dir = resolve(Config())
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    hardware = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {threads} threads"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval().to(device)
    tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    if tok.pad_token is None:  # some transformers versions convert the GGUF's tokenizer without one
        tok.pad_token = tok.eos_token
    texts = [tok.apply_chat_template(messages(i), add_generation_prompt=True, tokenize=False) for i in range(max(ns))]
    rows = []
    # llm_chat goes kernel -> llm worker; storage takes its spilled snapshots (none here)
    with Daemon(engine="transformers", device=device, managers=["storage", "llm"], max_batch=max(ns),
                torch_threads=threads) as d:
        through_daemon(d, 1, 4)  # warm-up
        hf_generate(model, tok, texts[:1], 4)
        for n in ns:
            row = {"n": n, **through_daemon(d, n, tokens)}
            row["raw_tok_s"] = hf_generate(model, tok, texts[:n], tokens)["tok_s"]
            one = [hf_generate(model, tok, [t], tokens) for t in texts[:n]]
            row["one_at_a_time_tok_s"] = sum(r["tokens"] for r in one) / sum(r["wall_s"] for r in one)
            rows.append(row)
            print(row, flush=True)
    table = [(r["n"], r["tok_s"], r["raw_tok_s"], r["one_at_a_time_tok_s"], r["tok_s"] / r["raw_tok_s"],
              r["tok_s"] / r["one_at_a_time_tok_s"], r["queue_wait_p50_s"], r["queue_wait_p99_s"],
              r["latency_p50_s"], r["latency_p99_s"]) for r in rows]
    print(markdown_table(["N", "aiosd tok/s", "raw batched generate", "generate one at a time", "aiosd/raw",
                          "aiosd/one-at-a-time", "queue p50 s", "queue p99 s", "latency p50 s", "latency p99 s"],
                         table))
    write_json(SCRIPT, {"engine": "transformers", "device": device, "hardware": hardware, "tokens": tokens,
                        "threads": threads, "rows": rows})
    plot_bars(SCRIPT, [f"N={r['n']}" for r in rows],
              {"aiosd": [r["tok_s"] for r in rows], "raw batched generate": [r["raw_tok_s"] for r in rows],
               "generate one at a time": [r["one_at_a_time_tok_s"] for r in rows]},
              "tokens/s", f"transformers engine, {tokens} new tokens, {hardware}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
