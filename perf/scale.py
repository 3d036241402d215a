"""Many agents at once: 8, 32 and 64 agents, each doing 3 llm_chat requests (8 tokens)
plus memory and storage calls. All must finish without errors; prints throughput (llm
requests per second), p50/p99 agent turnaround, and the RSS of the kernel and of each
manager (the llm worker's, which holds the model, shown apart).

    python perf/scale.py [--quick]        # --quick: 8 agents only
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libaios.agent import parse_timings  # noqa: E402
from perf._harness import REPO, Daemon, markdown_table, parse_args, percentile, plot_bars, write_json  # noqa: E402

SCRIPT = "scale"


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def one(client, n: int) -> dict:
    t0 = time.time()
    spawned = []
    for i in range(n):
        info = client.syscall("spawn_agent", {
            "argv": [sys.executable, "-m", "perf._scale_agent", f"Name a colour, agent {i}."],
            "name": f"scale{i}", "env": {"PYTHONPATH": str(REPO)}, "cwd": str(REPO)}, timeout=30)
        spawned.append(info)
    rows = [client.syscall("wait_agent", {"aid": s["aid"], "timeout": 1800}, timeout=1810) for s in spawned]
    span = max(r["ended_at"] for r in rows) - t0
    failed = [r["aid"] for r in rows if r["exit_code"] != 0]
    reqs = []
    for s in spawned:
        found = parse_timings(Path(s["log"]).read_text(errors="replace"))
        reqs += found[-1]["requests"] if found else []
    turn = [r["ended_at"] - r["started_at"] for r in rows]
    return {"n": n, "makespan_s": span, "failed": len(failed), "llm_requests": len(reqs),
            "llm_req_per_s": len(reqs) / span, "agents_per_s": n / span,
            "turnaround_p50_s": percentile(turn, 50), "turnaround_p99_s": percentile(turn, 99),
            "llm_total_p99_s": percentile([r["total_s"] or 0.0 for r in reqs], 99),
            "llm_queued_p99_s": percentile([r["queued_s"] or 0.0 for r in reqs], 99)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.split("\n")[0], argv)
    sizes = [8] if args.quick else [8, 32, 64]
    out = []
    with Daemon() as d:
        client = d.client()
        for n in sizes:
            out.append(one(client, n))
            print(f"{n} agents: {out[-1]['makespan_s']:.1f} s, {out[-1]['failed']} failed", file=sys.stderr)
        status = client.syscall("sys_status")
        mem = {"kernel": rss(status["pid"])}
        mem.update({m["name"]: rss(m["pid"]) for m in status["managers"] if m.get("pid")})
    without_model = sum(v for k, v in mem.items() if k != "llm")
    write_json(SCRIPT, {"rows": out, "rss_bytes": mem, "rss_without_llm_bytes": without_model})
    print(markdown_table(["agents", "makespan (s)", "failed", "llm req/s", "turnaround p50 (s)",
                          "turnaround p99 (s)", "llm queued p99 (s)"],
                         [(r["n"], r["makespan_s"], r["failed"], r["llm_req_per_s"], r["turnaround_p50_s"],
                           r["turnaround_p99_s"], r["llm_queued_p99_s"]) for r in out]))
    print("\nRSS: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in mem.items())
          + f"; kernel + managers without the llm worker: {without_model / 2**20:.0f} MiB")
    plot_bars(SCRIPT, [str(r["n"]) for r in out], {"llm requests/s": [r["llm_req_per_s"] for r in out],
                                                   "turnaround p99 (s)": [r["turnaround_p99_s"] for r in out]},
              "value", "Scale: agents at once")
    return 0 if all(r["failed"] == 0 for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
