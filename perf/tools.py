"""Tool manager performance (issue 7): the pool's overhead on a trivial call, and the
speed-up of independent calls run in parallel over running them one after another.

Targets: trivial tool_call p50 <= 5 ms end to end; >= 4x for 8 independent 1-second
calls. A trivial call is measured paced (one every 50 ms, as an agent makes them) and
back to back (bounded by how fast the workers can fork fresh children). The baselines
are measured in the same run: tool_list (the same route to the tools manager, no
sandbox), paced like the calls and back to back, and get_aid (the kernel alone). The
pool's overhead is the paced tool_call less the paced tool_list: a process woken after
50 ms idle answers slower than one kept busy, on this route as on any other.

    python -m perf.tools [--quick]
"""

from __future__ import annotations

import json
import threading
import time

import sys  # noqa: E402
from pathlib import Path  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from perf._harness import Daemon, markdown_table, parse_args, percentile, plot_bars, write_json  # noqa: E402


def timed(fn, n: int, gap: float = 0.0) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if gap:
            time.sleep(gap)
    return out


def parallel(home, n: int, seconds: float) -> float:
    import libaios
    clients = [libaios.connect(home=str(home)) for _ in range(n)]
    for c in clients:
        c.syscall("get_aid")  # connect before the clock starts
    barrier = threading.Barrier(n + 1)

    def one(c) -> None:
        barrier.wait()
        c.syscall("tool_call", {"name": "perf_sleep", "args": {"seconds": seconds}}, timeout=120)
    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    for c in clients:
        c.close()
    return took


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    n = 60 if args.quick else 300
    seconds = 0.5 if args.quick else 1.0
    calls = 8
    d = Daemon()
    d.home.mkdir(parents=True, exist_ok=True)
    (d.home / "config.toml").write_text('managers = ["storage", "tools"]\n'
                                        f"tool_pool = {calls}\n"
                                        'tools.plugins = ["perf._tooldefs"]\n')
    with d:
        c = d.client()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the sandbox workers have warmed up
            try:
                c.syscall("tool_call", {"name": "perf_noop", "args": {}}, timeout=60)
                break
            except Exception:  # noqa: BLE001 - manager still starting
                time.sleep(0.2)
        for _ in range(20):
            c.syscall("tool_call", {"name": "perf_noop", "args": {}})
        kernel = timed(lambda: c.syscall("get_aid"), n)
        route = timed(lambda: c.syscall("tool_list"), n)
        route_paced = timed(lambda: c.syscall("tool_list"), n, gap=0.05)
        noop = {"name": "perf_noop", "args": {}}
        # paced: one call every 50 ms, as an agent makes them; the worker re-forks its spare
        # child between calls, so each call finds a ready one
        inside: list[float] = []   # the manager's own view: job written to a spare -> answer read
        call = timed(lambda: inside.append(c.syscall("tool_call", noop)["wall_s"]), n, gap=0.05)
        # back to back: every call needs a fresh fork, so this is bounded by the fork rate
        burst = timed(lambda: c.syscall("tool_call", noop), n)
        t0 = time.perf_counter()
        for _ in range(calls):
            c.syscall("tool_call", {"name": "perf_sleep", "args": {"seconds": seconds}}, timeout=120)
        sequential = time.perf_counter() - t0
        par = parallel(d.home, calls, seconds)
    p50 = percentile(call, 50)
    result = {
        "calls": n, "tool_call_p50_s": p50, "tool_call_p99_s": percentile(call, 99),
        "in_worker_p50_s": percentile(inside, 50),
        "back_to_back_p50_s": percentile(burst, 50), "back_to_back_p99_s": percentile(burst, 99),
        "tool_list_p50_s": percentile(route, 50), "get_aid_p50_s": percentile(kernel, 50),
        "tool_list_paced_p50_s": percentile(route_paced, 50),
        "pool_overhead_p50_s": p50 - percentile(route_paced, 50),
        "parallel_calls": calls, "call_seconds": seconds, "sequential_s": sequential, "parallel_s": par,
        "speedup": sequential / par, "targets": {"tool_call_p50_s": 0.005, "speedup": 4.0},
        "met": {"tool_call_p50": p50 <= 0.005, "speedup": sequential / par >= 4.0,
                "pool_overhead_p50": p50 - percentile(route_paced, 50) <= 0.005}, "quick": args.quick,
    }
    print(markdown_table(["measure", "value"], [
        ("get_aid p50 (kernel only) ms", result["get_aid_p50_s"] * 1e3),
        ("tool_list p50 (to the manager) ms, back to back", result["tool_list_p50_s"] * 1e3),
        ("tool_list p50 ms, paced 50 ms apart", result["tool_list_paced_p50_s"] * 1e3),
        ("trivial tool_call p50 ms, paced 50 ms apart (target <= 5)", p50 * 1e3),
        ("trivial tool_call p99 ms, paced", result["tool_call_p99_s"] * 1e3),
        ("of which job written to a spare -> its answer read p50 ms", result["in_worker_p50_s"] * 1e3),
        ("trivial tool_call p50 ms, back to back", result["back_to_back_p50_s"] * 1e3),
        ("pool overhead p50 ms (paced tool_call - paced tool_list)", result["pool_overhead_p50_s"] * 1e3),
        (f"{calls} x {seconds:g} s calls, one after another s", sequential),
        (f"{calls} x {seconds:g} s calls, in parallel s", par),
        ("speed-up (target >= 4)", result["speedup"]),
    ]))
    write_json("tools", result)
    plot_bars("tools", ["p50 latency (ms)", f"{calls} calls (s)"],
              {"baseline (get_aid / sequential)": [result["get_aid_p50_s"] * 1e3, sequential],
               "tools (tool_call / parallel)": [p50 * 1e3, par]},
              "ms | s", "tool manager: trivial call latency and parallel speed-up")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1)[:2000])
