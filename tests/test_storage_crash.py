"""SIGKILL of the storage process in the middle of 16 concurrent writers: afterwards every
acknowledged write is present and intact (no loss, no torn record). Really kills a real
process, three times, each on a fresh daemon."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest

from libaios import AiosError, Client

WRITERS = 16
RETRY = ("EIO", "ETIMEDOUT", "EUNAVAIL", "EBUSY")


def payload(writer: int, n: int) -> bytes:
    seed = hashlib.sha256(f"{writer}:{n}".encode()).digest()
    return (seed * 32)[:1000] + b"%08d%08d" % (writer, n)  # self-describing, ~1 KiB


def writer_loop(client, aid: int, w: int, stop: threading.Event, acked: list, errors: list,
                retried: list) -> None:
    try:
        write_until_stopped(client, aid, w, stop, acked, errors, retried)
    except BaseException as exc:  # noqa: BLE001 - a dead writer must fail the test by name, not by silence
        errors.append(exc)


def write_until_stopped(client, aid: int, w: int, stop: threading.Event, acked: list, errors: list,
                        retried: list) -> None:
    # libaios keeps one connection per thread and set_aid is per connection: act as the
    # agent on this thread's connection too
    client.syscall("set_aid", {"aid": aid})
    n = 0
    while not stop.is_set():
        data = payload(w, n)
        while True:  # an EIO means the manager died holding our write: send it again
            try:
                v = client.syscall("sto_write", {"path": f"rec/{n:06d}", "data": data}, timeout=60)
                acked.append((n, data, v["version"]))
                break
            except AiosError as exc:
                if exc.code not in RETRY:
                    errors.append(exc)
                    return
                retried.append((w, n, exc.code))
                time.sleep(0.01)
        n += 1


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_storage_loses_no_acknowledged_write(make_daemon, round_):
    d = make_daemon(managers=["storage", "memory"])
    agents = [d.agent(f"crash-w{w}") for w in range(WRITERS)]
    stop = threading.Event()
    acked: list[list] = [[] for _ in range(WRITERS)]
    errors: list = []
    retried: list = []
    threads = [threading.Thread(target=writer_loop, args=(c, aid, w, stop, acked[w], errors, retried), daemon=True)
               for w, (aid, c) in enumerate(agents)]
    for t in threads:
        t.start()
    time.sleep(0.6 + 0.3 * round_)  # a different moment in the write stream each round
    before = sum(len(a) for a in acked)
    old = d.manager_pid("storage")
    os.kill(old, signal.SIGKILL)
    d.wait_manager("storage", old, timeout=30)
    time.sleep(0.8)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert retried, "the kill should have caught writes in flight"
    assert before > 0 and sum(len(a) for a in acked) > before, "writes went on after the restart"
    for w, (_, c) in enumerate(agents):
        paths = set(c.syscall("sto_list", {"prefix": "rec/"})["paths"])
        for n, data, version in acked[w]:
            path = f"rec/{n:06d}"
            assert path in paths, (w, n)
            got = c.syscall("sto_read", {"path": path})
            assert got["data"] == data, (w, n)  # intact: never torn, never another writer's
            assert got["version"] >= version


def test_sigkill_of_the_whole_daemon_loses_no_acknowledged_write(make_daemon):
    """Kernel and managers SIGKILLed at the same instant (an OOM kill of the whole tree), with
    16 writers mid-stream; after `aiosd start`, agents of the same names find every write
    they were acknowledged, whole."""
    d = make_daemon(managers=["storage"])
    agents = [d.agent(f"whole-w{w}") for w in range(WRITERS)]
    killed = threading.Event()
    acked: list[list] = [[] for _ in range(WRITERS)]
    errors: list = []

    def write(w: int, aid: int, client) -> None:
        try:
            client.syscall("set_aid", {"aid": aid})
            for n in range(1 << 30):
                data = payload(w, n)
                try:
                    v = client.syscall("sto_write", {"path": f"rec/{n:06d}", "data": data}, timeout=3)
                except AiosError:
                    if not killed.is_set():
                        raise
                    return  # the daemon is gone: this write was never acknowledged
                acked[w].append((n, data, v["version"]))
        except BaseException as exc:  # noqa: BLE001 - a dead writer must fail the test by name
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w, aid, c), daemon=True)
               for w, (aid, c) in enumerate(agents)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    pids = [d.pid()] + [m["pid"] for m in d.root.syscall("sys_status")["managers"]]
    killed.set()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sum(len(a) for a in acked) > WRITERS
    for _, c in agents:
        c.close()
    r = d.run_cli("aiosd", "start", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    d.root = Client(d.home)
    for w in range(WRITERS):
        _, c = d.agent(f"whole-w{w}")  # a new run of the same name: the same namespace
        paths = set(c.syscall("sto_list", {"prefix": "rec/"})["paths"])
        for n, data, version in acked[w]:
            got = c.syscall("sto_read", {"path": f"rec/{n:06d}"})
            assert f"rec/{n:06d}" in paths and got["data"] == data and got["version"] == version, (w, n)
