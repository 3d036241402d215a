"""The kernel's own Python per request, warm and alone, beside a bare ZeroMQ round trip.

No daemon: one Kernel object in this process, an agent row in its table, a storage.lmdb
with one file, and requests handed to `Kernel.on_frontend` as the drain would hand them
(replies go out on an inproc ROUTER that nobody reads). This is the part of a call's
kernel CPU that our code decides; perf/storage.py and perf/syscall_latency.py measure the
whole path under load, where ZeroMQ's threads, the poll and a cold cache add the rest.
Baseline in the same run: an inproc DEALER -> ROUTER -> DEALER round trip of the same
bytes in this process (ZeroMQ's own per-message work without any I/O thread).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import zmq  # noqa: E402

from aiosd import config, protocol  # noqa: E402
from aiosd.kernel import Kernel  # noqa: E402
from aiosd.storage_db import StorageDB  # noqa: E402
from aiosd.supervisor import MgrState  # noqa: E402
from perf._harness import markdown_table, parse_args, plot_bars, write_json  # noqa: E402


class FakeFrame:
    """What the drain hands on_frontend: bytes, and the connection's User-Id."""
    __slots__ = ("bytes", "user")

    def __init__(self, data: bytes, user: str = ""):
        self.bytes, self.user = data, user

    def get(self, _key: str) -> str:
        return self.user


def kernel_with_a_file(tmp: str) -> tuple[Kernel, StorageDB, str]:
    cfg = config.load({"managers": ["storage"]}, home=tmp)
    for d in (cfg.run_dir, cfg.data_dir, cfg.log_dir):
        os.makedirs(d, exist_ok=True)
    k = Kernel(cfg)  # first: it reads saved agents from storage.lmdb, which LMDB opens once per process
    db = StorageDB(cfg.data_dir / "storage.lmdb", map_size=1 << 26)
    row = k.table.create("reader", ["perf"])
    k.table.started(row, os.getpid())
    db.write_now(db.write_op("reader", "r/1", os.urandom(1024)))
    k.sup.procs["storage"].state = MgrState.RUNNING
    k.reader = db  # LMDB opens an environment once per process: the writer's handle reads too
    ctx = zmq.Context.instance()
    k.front = ctx.socket(zmq.ROUTER)
    k.front.bind("inproc://perf-front")
    return k, db, f"aid:{row.aid}"


def per_request_us(k: Kernel, user: str, call: str, args: dict, n: int) -> float:
    frames = [FakeFrame(b"\0\x80\0\0\1"), FakeFrame(protocol.pack({"id": 7, "call": call, "args": args}), user)]
    for _ in range(200):
        k.on_frontend(frames)
    t0 = time.perf_counter()
    for _ in range(n):
        k.on_frontend(frames)
    dt = (time.perf_counter() - t0) / n
    k.audit.take()
    k.pending.clear()
    k.outbox.clear()
    return dt * 1e6


def bare_round_trip_us(n: int) -> float:
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("inproc://perf-bare")
    dealer.connect("inproc://perf-bare")
    body = protocol.pack({"id": 7, "call": "sto_read", "args": {"path": "r/1"}})
    nb, more = int(zmq.NOBLOCK), int(zmq.SNDMORE)
    t0 = time.perf_counter()
    for _ in range(n):
        dealer.send(body)
        ident = router.recv(copy=False)
        req = router.recv(nb, copy=False)
        router.send(ident, more)
        router.send(req)
        dealer.recv()
    dt = (time.perf_counter() - t0) / n
    router.close(0)
    dealer.close(0)
    return dt * 1e6


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n, reps = (2000, 3) if args.quick else (20000, 7)
    with tempfile.TemporaryDirectory(prefix="aios-perf-") as tmp:
        k, db, user = kernel_with_a_file(tmp)
        calls = {"sto_read (served by the kernel)": ("sto_read", {"path": "r/1"}),
                 "get_status (served by the kernel)": ("get_status", {}),
                 "sto_write (checked, forwarded)": ("sto_write", {"path": "w/1", "data": os.urandom(1024)})}
        runs: dict[str, list[float]] = {name: [] for name in calls}
        runs["bare ZeroMQ round trip (baseline)"] = []
        for _ in range(reps):  # interleaved, so a slow minute hits every figure alike
            for name, (call, cargs) in calls.items():
                runs[name].append(per_request_us(k, user, call, cargs, n))
            runs["bare ZeroMQ round trip (baseline)"].append(bare_round_trip_us(n))
        db.close()
    med = {name: statistics.median(v) for name, v in runs.items()}
    bare = med["bare ZeroMQ round trip (baseline)"]
    write_json("kernel_path", {"us_per_request": med, "runs": runs, "requests_per_run": n, "quick": args.quick})
    print(markdown_table(["request, warm, in process", "us per request (median)", "x bare round trip"],
                         [[name, f"{us:.1f}", f"{us / bare:.2f}"] for name, us in med.items()]))
    plot_bars("kernel_path", list(med), {"us per request": list(med.values())},
              ylabel="microseconds", title="the kernel's own Python per request (warm)")


if __name__ == "__main__":
    main()
