"""Table 4 of the paper: are the model's answers the same when an agent runs alone and
when the three run at once? Under `fifo` and under `rr` with preemption (a small quantum,
so requests are switched out and resumed mid-generation), temperature 0.

Every llm_chat output of each agent (its steps, in order) from the concurrent run is
compared with the solo run's: BLEU (sacrebleu, 0..1) and exact match. Target: 1.0 and
identical everywhere, as in the paper.

    python perf/table4_consistency.py [--quick] [--quantum 4]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosd.demo import PAPER, run_batch  # noqa: E402
from perf._harness import Daemon, markdown_table, parse_args, plot_bars, write_json  # noqa: E402

SCRIPT = "table4_consistency"


def steps(run) -> list[str]:
    return [r.get("text", "") for r in run.timings.get("requests", [])]


def bleu(hyp: str, ref: str) -> float:
    import sacrebleu
    if hyp == ref:
        return 1.0  # also covers two empty strings, where BLEU is undefined
    return sacrebleu.sentence_bleu(hyp, [ref]).score / 100.0


def main(argv: list[str] | None = None) -> int:
    from agents import TASKS
    args = parse_args(__doc__.split("\n")[0], argv, extra=[(("--quantum",), {"type": int, "default": 4})])
    env = {"AIOS_AGENT_MAX_TOKENS": "24"} if args.quick else {}
    tasks = {n: TASKS[n] for n in PAPER}
    result: dict = {n: {} for n in PAPER}
    failures = 0
    # two slots for three agents: under rr some request is always waiting, so quanta really expire
    # and generations are preempted and resumed (with 32 slots nothing would ever be preempted)
    with Daemon(max_batch=2) as d:
        client = d.client()
        for policy in ("fifo", "rr"):
            client.syscall("sys_set", {"settings": {"scheduler": policy, "quantum": args.quantum}})
            solo, _ = run_batch(client, tasks, False, env)
            together, _ = run_batch(client, tasks, True, env)
            for a, b in zip(solo, together, strict=True):
                failures += (a.exit_code != 0) + (b.exit_code != 0)
                ref, hyp = steps(a), steps(b)
                same = ref == hyp and len(ref) > 0
                score = bleu("\n".join(hyp), "\n".join(ref)) if ref or hyp else 0.0
                result[a.name][policy] = {"bleu": score, "identical": same, "steps": len(ref),
                                          "solo": ref, "concurrent": hyp}
                print(f"{policy} {a.name}: bleu {score:.3f} identical {same}", file=sys.stderr)
    write_json(SCRIPT, {"agents": result, "quantum": args.quantum, "quick": args.quick, "failures": failures})
    rows = [(n, f"{r['fifo']['bleu']:.3f}", r["fifo"]["identical"], f"{r['rr']['bleu']:.3f}", r["rr"]["identical"])
            for n, r in result.items()]
    print(markdown_table(["agent", "fifo BLEU", "fifo identical", f"rr (quantum {args.quantum}) BLEU",
                          "rr identical"], rows))
    plot_bars(SCRIPT, list(result), {p: [result[n][p]["bleu"] for n in result] for p in ("fifo", "rr")},
              "BLEU (concurrent vs solo)", "Table 4: consistency of outputs")
    ok = failures == 0 and all(r[p]["identical"] for r in result.values() for p in ("fifo", "rr"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
