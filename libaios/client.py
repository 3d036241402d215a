"""The agent side of the wire: one ZeroMQ context per process, one DEALER per thread.

The connection authenticates once (PLAIN: the aid and token from the environment, or
root with run/root.token) and every call is a msgpack request matched to its reply by id.
Payloads over the threshold travel through shared memory, both ways, transparently.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from aiosd import protocol
from libaios.errors import AiosError, Unavailable, error_for

SHM_THRESHOLD = 64 * 1024
RCVTIMEO = int(zmq.RCVTIMEO)
DEFAULT_TIMEOUT = 900.0


def _home(home: str | os.PathLike | None) -> Path:
    return Path(home or os.environ.get("AIOS_HOME") or Path.home() / ".aios").expanduser()


class Client:
    """A connection to the kernel, as the agent in the environment or as root."""

    def __init__(self, home: str | os.PathLike | None = None, aid: int | None = None,
                 token: str | None = None, timeout: float | None = DEFAULT_TIMEOUT):
        self.home = _home(home)
        if aid is None and token is None and os.environ.get("AIOS_AID") and os.environ.get("AIOS_TOKEN") \
                and home is None:
            aid, token = int(os.environ["AIOS_AID"]), os.environ["AIOS_TOKEN"]
        if token is None:
            try:
                token = (self.home / "run" / "root.token").read_text().strip()
            except FileNotFoundError:
                raise Unavailable("EUNAVAIL", f"aiosd is not running on {self.home}") from None
            except PermissionError:
                raise error_for("EACCES", f"cannot read {self.home}/run/root.token: not the daemon's user") \
                    from None
            aid = None
        self.aid = aid
        self.user = "root" if aid is None else str(aid)
        self.token = token
        self.endpoint = f"ipc://{self.home / 'run' / 'kernel.sock'}"
        self.timeout = timeout
        self.acting_as: int | None = None  # root acting as an agent (set_aid)
        self._ctx = zmq.Context.instance()
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._socks: list[zmq.Socket] = []
        self._timeouts: dict[zmq.Socket, int] = {}  # each socket's RCVTIMEO as last set
        self._lock = threading.Lock()

    def _sock(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            # checked once per connection, not per call: a stat per call costs more than routing
            if not (self.home / "run" / "kernel.sock").exists():
                raise Unavailable("EUNAVAIL", f"aiosd is not running on {self.home}")
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt_string(zmq.PLAIN_USERNAME, self.user)
            sock.setsockopt_string(zmq.PLAIN_PASSWORD, self.token)
            sock.connect(self.endpoint)
            self._local.sock = sock
            with self._lock:
                self._socks.append(sock)
            if self.acting_as:  # set_aid binds a connection; every thread's connection follows
                self._call_on(sock, "set_aid", {"aid": self.acting_as}, self.timeout)
        return sock

    def _send(self, name: str, args: dict | None, sock: zmq.Socket | None = None) -> tuple[zmq.Socket, int]:
        rid = next(self._ids)
        body = protocol.pack_msg({"id": rid, "call": name, "args": args or {}}, SHM_THRESHOLD)
        sock = sock or getattr(self._local, "sock", None) or self._sock()
        sock.send(body)  # (copy=False is slower below pyzmq's copy threshold, 64 KiB)
        return sock, rid

    def _recv(self, sock: zmq.Socket, rid: int, timeout: float | None) -> tuple[dict, bool]:
        """The next message for request `rid`, and whether it holds shared-memory references."""
        # A blocking receive under RCVTIMEO, not poll-then-receive: Socket.poll builds a
        # Poller per call and costs a second wait; together ~50 us of an agent's ~100 us call.
        ms = -1 if timeout is None else max(int(timeout * 1000), 0)
        if self._timeouts.get(sock) != ms:
            sock.setsockopt(RCVTIMEO, ms)
            self._timeouts[sock] = ms
        while True:
            try:
                raw = sock.recv()
            except zmq.Again:
                if not (self.home / "run" / "kernel.sock").exists():
                    raise Unavailable("EUNAVAIL", f"aiosd is not running on {self.home}") from None
                raise error_for("ETIMEDOUT", f"no answer from aiosd within {timeout:g} s") from None
            msg, refs = protocol.unpack_refs(raw, 1 << 31)
            if type(msg) is dict and msg.get("id") in (rid, None):
                return msg, refs

    def syscall(self, name: str, args: dict | None = None, timeout: float | None = -1.0) -> Any:
        """Make one syscall and return its result, or raise its error."""
        timeout = self.timeout if timeout == -1.0 else timeout
        if name == "set_aid" and self.acting_as and (args or {}).get("aid") == self.acting_as:
            self._sock()  # this thread's connection is bound to that agent when it is made
            return self.acting_as
        result = self._call_on(None, name, args, timeout)
        if name == "set_aid":
            self.acting_as = int(result) or None
        return result

    def _call_on(self, sock: zmq.Socket | None, name: str, args: dict | None, timeout: float | None) -> Any:
        sock, rid = self._send(name, args, sock)
        while True:
            msg, refs = self._recv(sock, rid, timeout)
            if "partial" not in msg:
                return self._result(msg, refs)

    def stream(self, name: str, args: dict | None = None, timeout: float | None = -1.0) -> Stream:
        """A call whose partial results arrive as they come (llm_chat with stream=True)."""
        timeout = self.timeout if timeout == -1.0 else timeout
        sock, rid = self._send(name, args)
        return Stream(self, sock, rid, timeout)

    @staticmethod
    def _result(msg: dict, refs: bool) -> Any:
        if msg.get("ok"):
            return protocol.resolve(msg.get("result")) if refs else msg.get("result")
        err = msg.get("error") or {}
        raise error_for(str(err.get("code", "EIO")), str(err.get("message", "")))

    def close(self) -> None:
        with self._lock:
            for s in self._socks:
                s.close(0)
            self._socks.clear()
            self._timeouts.clear()
        self._local = threading.local()


class Stream:
    """Iterates over the partial chunks; `.result` holds the final result afterwards."""

    def __init__(self, client: Client, sock: zmq.Socket, rid: int, timeout: float | None):
        self.client, self.sock, self.rid, self.timeout = client, sock, rid, timeout
        self.result: Any = None
        self.done = False

    def __iter__(self) -> Iterator[Any]:
        while not self.done:
            msg, refs = self.client._recv(self.sock, self.rid, self.timeout)
            if "partial" in msg:
                yield protocol.resolve(msg["partial"]) if refs else msg["partial"]
                continue
            self.done = True
            self.result = self.client._result(msg, refs)


_default: Client | None = None
_default_pid = 0


def connect(home: str | os.PathLike | None = None) -> Client:
    """The process's connection (aid and token from the environment; root otherwise)."""
    global _default, _default_pid
    if home is not None:
        return Client(home)
    if _default is None or _default_pid != os.getpid():
        _default, _default_pid = Client(), os.getpid()
    return _default


def syscall(name: str, args: dict | None = None, timeout: float | None = -1.0) -> Any:
    """Generic entry: every libaios function calls this."""
    return connect().syscall(name, args, timeout)


__all__ = ["AiosError", "Client", "Stream", "connect", "syscall"]
