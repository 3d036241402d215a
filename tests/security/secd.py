"""Shared helpers of the red-team suite: a daemon of its own, agents that hold their real
token (not a root connection acting as them), raw ZeroMQ sockets, audit look-ups."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import Daemon  # noqa: E402  (tests/conftest.py: the one daemon launcher)
from procutil import alive, wait_for  # noqa: E402  (re-exported to the security tests)

from libaios.client import Client  # noqa: E402

# no llm worker: these attacks are on the kernel, memory, storage and tools
SEC_CONFIG = {"managers": "storage,memory,tools", "max_children": 3}

TOKEN_AGENT = ("import os, sys, time\n"
               "p = sys.argv[1]\n"
               "open(p + '.tmp', 'w').write(os.environ['AIOS_TOKEN'])\n"
               "os.replace(p + '.tmp', p)\n"
               "time.sleep(3600)\n")


@pytest.fixture(scope="module")
def sec():
    d = Daemon(SEC_CONFIG).start()
    yield d
    d.stop()


def token_agent(d: Daemon, name: str, tmp: Path, argv_extra: list | None = None, **spawn) -> tuple[int, str, Client]:
    """A real agent process; returns (aid, its token, a Client that authenticates with it)."""
    out = tmp / f"token-{name}-{time.monotonic_ns()}"
    info = d.root.syscall("spawn_agent", {"argv": [sys.executable, "-c", TOKEN_AGENT, str(out)], "name": name,
                                          **spawn})
    t0 = time.monotonic()
    while not out.exists():
        if time.monotonic() - t0 > 20:
            raise TimeoutError(f"agent {name} did not start")
        time.sleep(0.01)
    token = out.read_text()
    out.unlink()
    return info["aid"], token, Client(d.home, aid=info["aid"], token=token)


def raw_socket(home: Path, user: str | None, password: str | None) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if user is not None:
        s.setsockopt_string(zmq.PLAIN_USERNAME, user)
        s.setsockopt_string(zmq.PLAIN_PASSWORD, password or "")
    s.connect(f"ipc://{home}/run/kernel.sock")
    return s


def rpc(sock: zmq.Socket, body: bytes | list, timeout_s: float = 10.0) -> dict | None:
    """Send one raw body (or several frames); the decoded reply, or None if none came."""
    if isinstance(body, list):
        sock.send_multipart(body)
    else:
        sock.send(body)
    if not sock.poll(int(timeout_s * 1000)):
        return None
    return msgpack.unpackb(sock.recv(), raw=False, strict_map_key=False)


def pack(msg: object) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def code_of(fn) -> str:
    """The errno name fn() fails with ('OK' if it did not)."""
    from libaios import AiosError
    try:
        fn()
    except AiosError as exc:
        return exc.code
    return "OK"


def audit_of(d: Daemon, aid: int | None, call: str | None = None, wait_s: float = 5.0, want: int = 1,
             until=None, name: str | None = None) -> list[dict]:
    """Audit records of aid (as root); waits (for until(records), or for `want` of them)
    since the kernel hands records to storage in batches."""
    t0 = time.monotonic()
    while True:
        res = d.root.syscall("audit_query", {"aid": aid, "name": name, "call": call, "limit": 10000})
        recs = res["records"] if isinstance(res, dict) else res
        done = until(recs) if until else len(recs) >= want
        if done or time.monotonic() - t0 > wait_s:
            return recs
        time.sleep(0.05)



__all__ = ["SEC_CONFIG", "Client", "Daemon", "alive", "audit_of", "code_of", "os", "pack", "raw_socket", "rpc",
           "sec", "token_agent", "wait_for"]
