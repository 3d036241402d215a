"""The ceiling a call through aiosd is measured against: bare ZeroMQ with no logic and no disk.

`bare_relay(clients, n, hops=1)`: `clients` processes each make `n` round trips of a 1 KiB
message, one at a time, to an echo server (hops=1: the shape of a call the kernel serves
itself) or through a ROUTER/DEALER broker to one (hops=2: the shape of a call the kernel
forwards to a manager), over ipc in a temporary directory. Returns round trips per second
and the CPU microseconds per round trip of the clients, the broker and the server.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time

import zmq

NOBLOCK, SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


def _drain(sock: zmq.Socket, handle) -> None:
    for _ in range(1000):
        try:
            frame = sock.recv(NOBLOCK, copy=False)
        except zmq.Again:
            return
        frames = [frame]
        while frame.more:
            frame = sock.recv(NOBLOCK, copy=False)
            frames.append(frame)
        handle(frames)


def _relay(out: zmq.Socket):
    def handle(frames: list) -> None:
        for f in frames[:-1]:
            out.send(f, SNDMORE)
        out.send(frames[-1])
    return handle


def _broker(front_ep: str, back_ep: str, stop) -> None:
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    front.bind(front_ep)
    back.bind(back_ep)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    to_back, to_front = _relay(back), _relay(front)
    while not stop.is_set():
        events = dict(poller.poll(100))
        if back in events:
            _drain(back, to_front)
        if front in events:
            _drain(front, to_back)


def _echo(endpoint: str, bind: bool, stop) -> None:
    sock = zmq.Context().socket(zmq.ROUTER if bind else zmq.DEALER)
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    poller = zmq.Poller()  # made once: Socket.poll makes one per call
    poller.register(sock, zmq.POLLIN)
    echo = _relay(sock)
    while not stop.is_set():
        if poller.poll(100):
            _drain(sock, echo)


def _client(endpoint: str, n: int, start_at: float, results) -> None:
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(endpoint)
    msg = os.urandom(1024)
    sock.send(msg)
    sock.recv()
    while time.time() < start_at:
        time.sleep(0.001)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        sock.send(msg)
        sock.recv()
    results.put((time.perf_counter() - t0, time.process_time() - c0))


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_relay(clients: int, n: int, hops: int = 1) -> dict:
    ctx = mp.get_context("spawn")  # never fork a process that holds a ZeroMQ context
    stop, results = ctx.Event(), ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="aios-bare-") as tmp:
        front, back = f"ipc://{tmp}/front.sock", f"ipc://{tmp}/back.sock"
        if hops == 1:
            servers = {"server": ctx.Process(target=_echo, args=(front, True, stop))}
        else:
            servers = {"broker": ctx.Process(target=_broker, args=(front, back, stop)),
                       "server": ctx.Process(target=_echo, args=(back, False, stop))}
        for p in servers.values():
            p.start()
        start_at = time.time() + 2.0 + 0.05 * clients
        procs = [ctx.Process(target=_client, args=(front, n, start_at, results)) for _ in range(clients)]
        for p in procs:
            p.start()
        while time.time() < start_at - 0.1:
            time.sleep(0.01)
        cpu0 = {name: _cpu_s(p.pid) for name, p in servers.items()}
        got = [results.get(timeout=300) for _ in procs]
        cpu1 = {name: _cpu_s(p.pid) for name, p in servers.items()}
        for p in procs:
            p.join()
        stop.set()
        for p in servers.values():
            p.join(5)
    ops = clients * n
    cpu = {"client": sum(c for _, c in got) / ops * 1e6,
           **{name: (cpu1[name] - cpu0[name]) / ops * 1e6 for name in servers}}
    return {"round_trips_per_s": ops / max(s for s, _ in got), "cpu_us": {k: round(v, 1) for k, v in cpu.items()}}


if __name__ == "__main__":
    for hops in (1, 2):
        print(hops, bare_relay(16, 3000, hops))
