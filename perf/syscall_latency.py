"""Syscall latency through the whole path (auth, schema, access, audit) vs a bare ZeroMQ round trip.

Targets (issue 3): p50 <= 250 us, p99 <= 2 ms, <= 3x a bare ipc round trip measured in the
same run; >= 5,000 calls/s from 8 concurrent agents; spawn_agent to the agent's first
syscall p50 <= 150 ms.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time

import msgpack
import zmq

from pathlib import Path  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from perf._harness import Daemon, markdown_table, parse_args, percentile, plot_bars, write_json  # noqa: E402

WORKER = r"""
import sys, time, libaios
n, start_at = int(sys.argv[1]), float(sys.argv[2])
libaios.syscall("get_aid")
while time.time() < start_at:
    time.sleep(0.001)
t0 = time.perf_counter()
for _ in range(n):
    libaios.syscall("get_status")
print("RESULT", n, time.perf_counter() - t0, flush=True)
"""
FIRST_CALL = "import time, libaios; libaios.syscall('get_aid'); print('FIRST', time.time(), flush=True)"


def echo_server(endpoint: str, ready) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoint)
    ready.set()
    while True:
        ident, body = s.recv_multipart()
        msg = msgpack.unpackb(body)
        if msg.get("call") == "quit":
            break
        s.send_multipart([ident, msgpack.packb({"id": msg["id"], "ok": True, "result": 0})])


def bare_zmq(n: int) -> list[float]:
    endpoint = f"ipc://{tempfile.mkdtemp()}/echo.sock"
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    p = spawn.Process(target=echo_server, args=(endpoint, ready), daemon=True)
    p.start()
    ready.wait()
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.connect(endpoint)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        s.send(msgpack.packb({"id": i, "call": "get_status", "args": {}}))
        msgpack.unpackb(s.recv())
        out.append(time.perf_counter() - t0)
    s.send(msgpack.packb({"id": -1, "call": "quit"}))
    p.join(5)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n = 2000 if args.quick else 20000
    with Daemon(managers=os.environ.get("AIOS_PERF_MANAGERS", "storage"), syscall_rate=1e9) as d:
        root = d.client()
        info = root.syscall("spawn_agent", {"argv": [sys.executable, "-c", "import time; time.sleep(600)"],
                                            "name": "lat"})
        from libaios.client import Client
        agent = Client(d.home)
        agent.syscall("set_aid", {"aid": info["aid"]})
        for _ in range(200):
            agent.syscall("get_status")
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            agent.syscall("get_status")
            lat.append(time.perf_counter() - t0)
        # 8 concurrent agents, real processes
        per = n // 2
        start_at = time.time() + 1.5
        aids = [root.syscall("spawn_agent", {"argv": [sys.executable, "-c", WORKER, str(per), str(start_at)],
                                             "name": f"w{i}"})["aid"] for i in range(8)]
        spans = []
        for aid in aids:
            root.syscall("wait_agent", {"aid": aid, "timeout": 600})
            text = (d.home / "logs" / f"agent-{aid}.log").read_text()
            line = [ln for ln in text.splitlines() if ln.startswith("RESULT")][0].split()
            spans.append(float(line[2]))
        calls_per_s = 8 * per / max(spans)
        # spawn to first syscall
        spawn = []
        for _ in range(5 if args.quick else 20):
            t0 = time.time()
            aid = root.syscall("spawn_agent", {"argv": [sys.executable, "-c", FIRST_CALL], "name": "sp"})["aid"]
            root.syscall("wait_agent", {"aid": aid, "timeout": 60})
            text = (d.home / "logs" / f"agent-{aid}.log").read_text()
            spawn.append(float(text.split("FIRST")[1].split()[0]) - t0)
    bare = bare_zmq(n)
    res = {"p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "bare_zmq_p50_s": percentile(bare, 50),
           "bare_zmq_p99_s": percentile(bare, 99), "calls_per_s_8_agents": calls_per_s,
           "spawn_p50_s": percentile(spawn, 50), "calls": n, "cpu_count": os.cpu_count()}
    res["ratio_p50_vs_bare"] = res["p50_s"] / res["bare_zmq_p50_s"]
    write_json("syscall_latency", res)
    print(markdown_table(["figure", "measured", "target"], [
        ["get_status p50", f"{res['p50_s'] * 1e6:.0f} us", "<= 250 us"],
        ["get_status p99", f"{res['p99_s'] * 1e6:.0f} us", "<= 2000 us"],
        ["bare zmq ipc round trip p50", f"{res['bare_zmq_p50_s'] * 1e6:.0f} us", "baseline"],
        ["p50 / bare", f"{res['ratio_p50_vs_bare']:.2f}x", "<= 3x"],
        ["calls/s, 8 agents", f"{calls_per_s:,.0f}", ">= 5,000"],
        ["spawn_agent to first syscall p50", f"{res['spawn_p50_s'] * 1000:.0f} ms", "<= 150 ms"],
    ]))
    plot_bars("syscall_latency", ["p50", "p99"], {
        "aiosd get_status (us)": [res["p50_s"] * 1e6, res["p99_s"] * 1e6],
        "bare zmq (us)": [res["bare_zmq_p50_s"] * 1e6, res["bare_zmq_p99_s"] * 1e6]},
        ylabel="microseconds", title="syscall round trip")


if __name__ == "__main__":
    main()
