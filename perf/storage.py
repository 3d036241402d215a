"""Durable storage and memory throughput through the whole system (agents -> kernel -> managers).

Measured in one run: durable 1 KiB sto_write from 16 concurrent agent processes with group
commit, the same workload with one synced transaction per write (group_commit = false,
a second daemon), sto_read/s from the same 16 agents, and the p50 of a 1 KiB mem_read. The
three workloads take turns for --rounds rounds; each figure is the median over the rounds.
Targets (issue 6): >= 5,000 writes/s, >= 3x per-write sync, >= 10,000 reads/s,
mem_read p50 <= 300 us.

Beside them, the ceiling of this machine in the same rounds (perf/_bare_relay.py): 16 bare
ZeroMQ clients doing 1 KiB round trips through a broker to an echo server (the two hops of a
forwarded sto_write, with no logic and no disk), and straight to one (the one hop of a
sto_read the kernel serves).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from pathlib import Path  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from perf._bare_relay import bare_relay  # noqa: E402
from perf._harness import Daemon, markdown_table, parse_args, percentile, plot_bars, write_json  # noqa: E402

WRITERS = 16
WORKER = r"""
import os, sys, time, libaios
mode, n, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
data = os.urandom(1024)
libaios.syscall("get_aid")
if mode == "read":
    for i in range(min(n, 64)):
        libaios.syscall("sto_write", {"path": f"r/{i}", "data": data})
while time.time() < start_at:
    time.sleep(0.001)
c0, t0 = time.process_time(), time.perf_counter()
for i in range(n):
    if mode == "write":
        libaios.syscall("sto_write", {"path": f"w/{i % 256}", "data": data})
    else:
        assert libaios.syscall("sto_read", {"path": f"r/{i % 64}"})["data"] == data
print("RESULT", n, time.perf_counter() - t0, time.process_time() - c0, flush=True)
"""


def run_agents(d: Daemon, mode: str, per_agent: int, lead_s: float = 3.0) -> tuple[float, dict]:
    """Spawn WRITERS agent processes that start together; returns operations per second and
    the CPU microseconds per operation of each process (agents: inside their timed loop)."""
    root = d.client()
    start_at = time.time() + lead_s
    aids = [root.syscall("spawn_agent", {"argv": [sys.executable, "-c", WORKER, mode, str(per_agent), str(start_at)],
                                         "name": f"{mode}{i}"})["aid"] for i in range(WRITERS)]
    while time.time() < start_at - 0.2:
        time.sleep(0.05)
    cpu0 = d.cpu_by_process()
    spans, agent_cpu = [], 0.0
    for aid in aids:
        root.syscall("wait_agent", {"aid": aid, "timeout": 600}, timeout=620)
        text = (d.home / "logs" / f"agent-{aid}.log").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith("RESULT")]
        if not lines:
            raise RuntimeError(f"agent {aid} did not finish:\n{text[-2000:]}")
        spans.append(float(lines[0].split()[2]))
        agent_cpu += float(lines[0].split()[3])
    cpu1 = d.cpu_by_process()
    ops = WRITERS * per_agent
    us = {name: (cpu1[name] - cpu0.get(name, 0.0)) / ops * 1e6 for name in cpu1}
    us["agent"] = agent_cpu / ops * 1e6
    return ops / max(spans), {k: round(v, 1) for k, v in us.items() if v >= 1.0}


def mem_read_latency(d: Daemon, n: int) -> list[float]:
    root = d.client()
    info = root.syscall("spawn_agent", {"argv": [sys.executable, "-c", "import time; time.sleep(600)"],
                                        "name": "memlat"})
    from libaios.client import Client
    agent = Client(d.home)
    agent.syscall("set_aid", {"aid": info["aid"]})
    agent.syscall("mem_write", {"content": os.urandom(1024), "key": "k"})
    lat, kernel_only = [], []
    for i in range(n + 200):  # interleaved, so both see the same machine load
        t0 = time.perf_counter()
        agent.syscall("mem_read", {"key": "k"})
        t1 = time.perf_counter()
        agent.syscall("get_status")
        t2 = time.perf_counter()
        if i >= 200:
            lat.append(t1 - t0)
            kernel_only.append(t2 - t1)
    root.syscall("kill_agent", {"aid": info["aid"], "signal": "KILL"})
    return lat, kernel_only


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=[
        (("--rounds",), {"type": int, "default": 3,
                         "help": "interleaved rounds of the three workloads; figures are their medians"})])
    managers = os.environ.get("AIOS_PERF_MANAGERS", "storage,memory")
    writes = 300 if args.quick else 2000
    baseline_writes = 60 if args.quick else 150
    reads = 500 if args.quick else 3000
    rounds = 1 if args.quick else max(1, args.rounds)
    # Both daemons stay up and the workloads take turns, round after round: this machine's
    # speed drifts by a third within minutes, and a ratio is only meaningful between
    # measurements taken under the same conditions.
    per_round = []
    with Daemon(managers=managers, syscall_rate=1e9, group_commit=True) as d, \
            Daemon(managers=managers, syscall_rate=1e9, group_commit=False) as base:
        d.wait_idle()
        base.wait_idle()
        for _ in range(rounds):
            # each phase starts with both daemons idle: storage frees dropped versions once
            # writing pauses, and that work must not land in the next phase's figure
            w, write_cpu = run_agents(d, "write", writes)
            d.wait_idle()
            b, _ = run_agents(base, "write", baseline_writes)
            base.wait_idle()
            r, read_cpu = run_agents(d, "read", reads)
            d.wait_idle()
            two, one = bare_relay(WRITERS, reads, hops=2), bare_relay(WRITERS, reads, hops=1)
            per_round.append({"writes_per_s": w, "per_write_sync_writes_per_s": b, "reads_per_s": r,
                              "group_commit_speedup": w / b, "cpu_us_per_write": write_cpu,
                              "cpu_us_per_read": read_cpu,
                              "bare_two_hops_per_s": two["round_trips_per_s"],
                              "bare_one_hop_per_s": one["round_trips_per_s"],
                              "bare_cpu_us": {"two_hops": two["cpu_us"], "one_hop": one["cpu_us"]}})
            print(f"round {len(per_round)}: {w:,.0f} writes/s, {b:,.0f} per-write sync ({w / b:.1f}x), "
                  f"{r:,.0f} reads/s; bare ZeroMQ {two['round_trips_per_s']:,.0f} two hops, "
                  f"{one['round_trips_per_s']:,.0f} one hop", flush=True)
        lat, kernel_only = mem_read_latency(d, 2000 if args.quick else 20000)
    mid = sorted(per_round, key=lambda x: x["writes_per_s"])[len(per_round) // 2]  # its CPU table
    writes_per_s, per_write_sync, reads_per_s, speedup, bare_two, bare_one = (
        statistics.median(x[k] for x in per_round)
        for k in ("writes_per_s", "per_write_sync_writes_per_s", "reads_per_s", "group_commit_speedup",
                  "bare_two_hops_per_s", "bare_one_hop_per_s"))
    write_cpu, read_cpu = mid["cpu_us_per_write"], mid["cpu_us_per_read"]
    res = {"writers": WRITERS, "writes_per_s": writes_per_s, "per_write_sync_writes_per_s": per_write_sync,
           "reads_per_s": reads_per_s, "mem_read_p50_s": percentile(lat, 50),
           "mem_read_p99_s": percentile(lat, 99),
           "get_status_p50_s": percentile(kernel_only, 50), "group_commit_speedup": speedup,
           "cpu_us_per_write": write_cpu, "cpu_us_per_read": read_cpu,
           "bare_two_hops_per_s": bare_two, "bare_one_hop_per_s": bare_one,
           "writes_vs_bare_two_hops": statistics.median(x["writes_per_s"] / x["bare_two_hops_per_s"]
                                                        for x in per_round),
           "reads_vs_bare_one_hop": statistics.median(x["reads_per_s"] / x["bare_one_hop_per_s"]
                                                      for x in per_round),
           "rounds": per_round,
           "writes_per_agent": writes, "quick": args.quick}
    write_json("storage", res)
    print(markdown_table(["figure", "measured", "target"], [
        ["durable sto_write/s, 16 agents, group commit", f"{writes_per_s:,.0f}", ">= 5,000"],
        ["durable sto_write/s, one synced txn per write", f"{per_write_sync:,.0f}", "baseline"],
        ["group commit / per-write sync (median of the rounds' ratios)", f"{speedup:.1f}x", ">= 3x"],
        ["sto_read/s, 16 agents", f"{reads_per_s:,.0f}", ">= 10,000"],
        ["bare ZeroMQ 1 KiB round trips/s, 16 clients, two hops (broker + echo)", f"{bare_two:,.0f}", "ceiling"],
        ["bare ZeroMQ 1 KiB round trips/s, 16 clients, one hop (echo)", f"{bare_one:,.0f}", "ceiling"],
        ["durable writes / bare two hops", f"{res['writes_vs_bare_two_hops']:.2f}", ""],
        ["reads / bare one hop", f"{res['reads_vs_bare_one_hop']:.2f}", ""],
        ["mem_read 1 KiB p50", f"{res['mem_read_p50_s'] * 1e6:.0f} us", "<= 300 us"],
        ["mem_read 1 KiB p99", f"{res['mem_read_p99_s'] * 1e6:.0f} us", ""],
        ["get_status p50 (kernel only, same run)", f"{res['get_status_p50_s'] * 1e6:.0f} us", "baseline"],
    ]))
    print()
    names = sorted(set(write_cpu) | set(read_cpu), key=lambda n: -write_cpu.get(n, 0.0))
    print(markdown_table(["CPU us per operation", *names], [
        ["sto_write", *[f"{write_cpu.get(n, 0.0):.0f}" for n in names]],
        ["sto_read", *[f"{read_cpu.get(n, 0.0):.0f}" for n in names]]]))
    plot_bars("storage", ["sto_write (durable)", "sto_read"], {
        "group commit": [writes_per_s, reads_per_s],
        "per-write sync": [per_write_sync, 0.0]},
        ylabel="operations per second", title="storage through aiosd, 16 agents")


if __name__ == "__main__":
    main()
