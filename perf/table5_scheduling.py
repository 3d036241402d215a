"""Table 5 of the paper: sequential (math → narrative → rec, one after the other) versus
concurrent scheduled execution of the three agents, 5 trials, mean ± std of waiting and
turnaround per agent (each averaged over the agent's llm requests; definitions in
aiosd/demo.py), and the makespans.

    python perf/table5_scheduling.py [--quick] [--scheduler fifo] [--engine auto|llamacpp|transformers]

`--engine` picks the llm worker's engine (default: auto, which is llama.cpp on a CPU); a run
on another engine than auto writes table5_scheduling_<engine>.json/.png, so both stay side by
side. `--max-tokens N` caps every llm_chat of the agents (AIOS_AGENT_MAX_TOKENS) for a slow
engine; the protocol (agents, order, trials, definitions) is unchanged.

Targets: concurrent waiting ≤ 0.05 s for every agent; concurrent makespan ≤ 0.6×
sequential (the paper, Gemma-2b: 5.91 / 7.68 = 0.77).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosd.demo import PAPER, run_batch  # noqa: E402
from perf._harness import Daemon, markdown_table, parse_args, plot_bars, write_json  # noqa: E402

SCRIPT = "table5_scheduling"


def main(argv: list[str] | None = None) -> int:
    from agents import TASKS
    args = parse_args(__doc__.split("\n")[0], argv, extra=[
        (("--trials",), {"type": int, "default": None}),
        (("--scheduler",), {"default": "fifo"}),
        (("--engine",), {"default": "auto", "choices": ("auto", "llamacpp", "transformers")}),
        (("--max-tokens",), {"type": int, "default": 0}),
    ])
    trials = args.trials or (2 if args.quick else 5)
    cap = args.max_tokens or (16 if args.quick else 0)
    env = {"AIOS_AGENT_MAX_TOKENS": str(cap)} if cap else {}
    script = SCRIPT if args.engine == "auto" else f"{SCRIPT}_{args.engine}"
    tasks = {n: TASKS[n] for n in PAPER}
    per: dict = {n: {"sequential": {"w": [], "t": []}, "concurrent": {"w": [], "t": []}} for n in PAPER}
    makespan: dict = {"sequential": [], "concurrent": []}
    failures = 0
    with Daemon(scheduler=args.scheduler, engine=args.engine) as d:
        client = d.client()
        run_batch(client, {"math": tasks["math"]}, False, env)  # warm-up: first-request costs out of the figures
        for trial in range(trials):
            for mode in ("sequential", "concurrent"):
                runs, span = run_batch(client, tasks, mode == "concurrent", env)
                makespan[mode].append(span)
                for r in runs:
                    failures += r.exit_code != 0
                    m = r.metrics()
                    per[r.name][mode]["w"].append(m["waiting_s"])
                    per[r.name][mode]["t"].append(m["turnaround_s"])
                print(f"trial {trial + 1}/{trials} {mode}: makespan {span:.2f} s", file=sys.stderr)

    def sd(xs: list) -> float:
        return statistics.pstdev(xs) if len(xs) > 1 else 0.0

    agents = {n: {mode: {"waiting_s": statistics.fmean(v["w"]), "waiting_std": sd(v["w"]),
                         "turnaround_s": statistics.fmean(v["t"]), "turnaround_std": sd(v["t"])}
                  for mode, v in modes.items()} for n, modes in per.items()}
    ms, mc = statistics.fmean(makespan["sequential"]), statistics.fmean(makespan["concurrent"])
    worst_wait = max(a["concurrent"]["waiting_s"] for a in agents.values())
    data = {"trials": trials, "scheduler": args.scheduler, "engine": args.engine, "max_tokens_cap": cap,
            "quick": args.quick, "agents": agents,
            "makespan_sequential_s": ms, "makespan_concurrent_s": mc, "makespan_ratio": mc / ms,
            "makespans": makespan, "failures": failures,
            "targets": {"concurrent_waiting_le_0.05": worst_wait <= 0.05, "makespan_ratio_le_0.6": mc / ms <= 0.6}}
    write_json(script, data)

    def pm(x: dict, k: str) -> str:
        return f"{x[k + '_s']:.3f} ± {x[k + '_std']:.3f}"
    rows = [(n, pm(a["sequential"], "waiting"), pm(a["sequential"], "turnaround"),
             pm(a["concurrent"], "waiting"), pm(a["concurrent"], "turnaround")) for n, a in agents.items()]
    print(markdown_table(["agent", "seq waiting (s)", "seq turnaround (s)", "conc waiting (s)",
                          "conc turnaround (s)"], rows))
    print(f"\nmakespan: sequential {ms:.2f} s, concurrent {mc:.2f} s, ratio {mc / ms:.2f} "
          f"(target ≤ 0.6); worst concurrent waiting {worst_wait:.3f} s (target ≤ 0.05); "
          f"{trials} trials, scheduler {args.scheduler}, engine {args.engine}, failures {failures}")
    plot_bars(script, list(agents), {
        "sequential turnaround": [a["sequential"]["turnaround_s"] for a in agents.values()],
        "concurrent turnaround": [a["concurrent"]["turnaround_s"] for a in agents.values()],
        "sequential waiting": [a["sequential"]["waiting_s"] for a in agents.values()],
        "concurrent waiting": [a["concurrent"]["waiting_s"] for a in agents.values()],
    }, "seconds", f"Table 5: waiting and turnaround per agent ({args.engine} engine)", errors={
        "sequential turnaround": [a["sequential"]["turnaround_std"] for a in agents.values()],
        "concurrent turnaround": [a["concurrent"]["turnaround_std"] for a in agents.values()],
    })
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
