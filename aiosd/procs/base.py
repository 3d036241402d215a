"""The skeleton every manager process shares: connect to the kernel's backend, announce,
heartbeat, dispatch requests to `handle_<call>` methods, and make internal syscalls.

A handler returns its result, raises AiosError, or returns DEFERRED and answers later
with `reply`/`fail` (streaming chunks go out with `partial`). `tick()` runs between polls
and says how long the loop may sleep, so the llm worker can run its step loop here.
"""

from __future__ import annotations

import itertools
import json
import gc
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import zmq

from aiosd import protocol
from aiosd.config import Config
from aiosd.errors import AiosError

DEFERRED = object()
log = logging.getLogger("aiosd")
NOBLOCK, EVENTS, POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)  # ints: pyzmq's enums are slow


@dataclass
class Request:
    id: Any
    call: str
    args: dict
    aid: int                       # caller; 0 is root
    ctx: dict = field(default_factory=dict)  # name, priority, is_root, target aid/owner, grants

    @property
    def name(self) -> str:
        """The caller's name: its storage namespace (root is 'root')."""
        return self.ctx.get("name") or ("root" if self.aid == 0 else f"aid{self.aid}")


class Manager:
    name = "manager"
    # Answers of one pass of the loop leave as one frame (protocol.join_bodies). Only for
    # managers whose handlers never run long between passes: a buffered partial (streamed
    # tokens) would otherwise wait for the pass to end.
    batch_replies = False

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None
        self._ids = itertools.count(1)
        self._stash: list[dict] = []  # messages that arrived while waiting in call()
        self._running = True
        self._last_rx = time.monotonic()
        self._last_hb = 0.0
        self._out: list[bytes] | None = [] if self.batch_replies else None

    # hooks for subclasses
    def setup(self) -> None:
        """Heavy start-up work, after the process is up and before announcing."""

    def setup_background(self) -> None:
        """Work done after announcing (e.g. loading an embedding model lazily)."""

    def tick(self) -> float | None:
        """Runs between polls; returns the longest sleep allowed (None: the heartbeat)."""
        return None

    def on_event(self, event: dict) -> None:
        """Kernel notifications: agent_exit, agent_suspend, agent_resume, config."""

    def shutdown(self) -> None:
        """Graceful stop: flush what must be flushed."""

    # replies
    def send(self, msg: dict) -> None:
        self._send_body(protocol.pack(msg))

    def reply(self, req_id: Any, result: Any) -> None:
        self._send_body(protocol.pack_msg(protocol.ok(req_id, result), self.cfg.shm_threshold))

    def _send_body(self, body: bytes) -> None:
        if self._out is not None:
            self._out.append(body)
            return
        assert self.sock is not None
        self.sock.send(body)

    def flush_out(self) -> None:
        """Send what this pass of the loop buffered (batch_replies), as one frame."""
        if self._out:
            body, self._out = protocol.join_bodies(self._out), []
            assert self.sock is not None
            self.sock.send(body)

    def recv_msgs(self, raw: bytes) -> list[Any]:
        """The messages of one frame from the kernel (one, or a batch)."""
        msgs, refs = protocol.unpack_frame(raw, 1 << 30)
        if refs:
            for msg in msgs:
                if isinstance(msg, dict):
                    msg["_refs"] = True
        return msgs

    def fail(self, req_id: Any, code: str, message: str) -> None:
        self.send(protocol.err(req_id, code, message))

    def partial(self, req_id: Any, chunk: Any) -> None:
        self.send({"id": req_id, "partial": chunk})

    def emit(self, event: str, **data: Any) -> None:
        """Tell the kernel something (usage counters and the like)."""
        self.send({"event": event, **data})

    # internal syscalls to other managers, through the kernel
    def call(self, call: str, args: dict, aid: int = 0, timeout: float = 30.0) -> Any:
        rid = f"m{next(self._ids)}"
        assert self.sock is not None
        self.flush_out()  # answers already given must not wait for this call
        self.sock.send(protocol.pack_msg({"id": rid, "call": call, "args": args, "aid": aid},
                                         self.cfg.shm_threshold), copy=False)
        deadline = time.monotonic() + timeout
        assert self.sock is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AiosError("ETIMEDOUT", f"internal call {call} timed out")
            if not self.sock.poll(int(left * 1000)):
                continue
            msgs = self.recv_msgs(self.sock.recv())
            for i, msg in enumerate(msgs):
                if isinstance(msg, dict) and msg.get("id") == rid and "ok" in msg:
                    self._stash.extend(msgs[i + 1:])
                    if msg["ok"]:
                        return protocol.resolve(msg.get("result"))
                    raise AiosError.from_wire(msg.get("error"))
                self._stash.append(msg)

    def drop_left_over(self, db: str, prefix: bytes, what: str) -> None:
        """Delete what an earlier process of this manager kept in storage's `db` under `prefix`:
        a restarted manager starts empty, so it is out of everyone's reach, and after a crash it
        would stay on disk for good. Called before serving, so nothing of ours is dropped."""
        try:
            n = self.call("_sto_drop", {"db": db, "prefix": prefix}, timeout=5.0)["deleted"]
        except AiosError as exc:
            log.warning("%s: %s left before this start not dropped: %s", self.name, what, exc)
            return
        if n:
            log.info("%s: dropped %d %s left before this start", self.name, n, what)

    # the loop
    def dispatch(self, msg: dict) -> None:
        req = Request(msg.get("id"), msg.get("call", ""), msg.get("args") or {}, int(msg.get("aid", 0)),
                      msg.get("ctx") or {})
        handler = getattr(self, "handle_" + req.call.lstrip("_"), None)
        if handler is None:
            self.fail(req.id, "ENOSYS", f"{self.name} does not serve {req.call}")
            return
        try:
            if msg.get("_refs"):
                req.args = protocol.resolve(req.args)
            result = handler(req)
        except AiosError as exc:
            self.fail(req.id, exc.code, exc.message)
            return
        except MemoryError:
            self.fail(req.id, "ENOMEM", f"{self.name} ran out of memory serving {req.call}")
            return
        except Exception as exc:
            log.error("%s failed on %s: %s", self.name, req.call, traceback.format_exc())
            self.fail(req.id, "EIO", f"{self.name} failed on {req.call}: {type(exc).__name__}: {exc}")
            return
        if result is not DEFERRED:
            self.reply(req.id, result)

    def _handle(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        if "call" in msg:
            self.dispatch(msg)
        elif "event" in msg:
            try:
                self.on_event(msg)
            except Exception:
                log.error("%s event %s failed: %s", self.name, msg.get("event"), traceback.format_exc())
        elif msg.get("hb"):
            pass

    def serve(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.cfg.endpoint("backend"))
        poller = zmq.Poller()  # one for the life of the loop: Socket.poll builds one per call
        poller.register(self.sock, zmq.POLLIN)
        self.setup()
        self.send({"hello": self.name, "pid": os.getpid()})
        self.flush_out()
        self.setup_background()
        # what start-up allocated (modules, the model's objects) lives as long as the process:
        # out of the collector's sight, each collection walks only what calls allocate
        gc.freeze()
        dead_after = self.cfg.heartbeat_s * self.cfg.heartbeat_liveness * 4
        self._last_rx = time.monotonic()
        while self._running:
            while self._stash:
                self._handle(self._stash.pop(0))
            timeout = self.tick()
            self.flush_out()  # answers tick() gave (a committed batch) must not wait for the poll
            hb = self.cfg.heartbeat_s
            timeout = hb if timeout is None else min(timeout, hb)
            if poller.poll(int(timeout * 1000)):
                # drain everything pending before the next tick (storage commits what one drain
                # received as one batch); EVENTS is asked before each frame because ending on
                # zmq.Again costs more than serving a request
                while self.sock.get(EVENTS) & POLLIN:
                    try:
                        raw = self.sock.recv(NOBLOCK)
                    except zmq.Again:
                        break
                    self._last_rx = time.monotonic()
                    try:
                        msgs = self.recv_msgs(raw)
                    except AiosError as exc:
                        log.error("%s dropped a bad message from the kernel: %s", self.name, exc)
                        continue
                    for msg in msgs:
                        self._handle(msg)
            now = time.monotonic()
            if now - self._last_hb >= hb:
                self.send({"hb": 1})
                self._last_hb = now
            self.flush_out()
            if now - self._last_rx > dead_after:
                log.error("%s lost the kernel; exiting", self.name)
                break
        self.shutdown()
        self.flush_out()
        self.sock.close(0)
        self.ctx.term()

    def stop(self, *_: Any) -> None:
        self._running = False


def config_from_env() -> Config:
    raw = os.environ.get("AIOS_CONFIG")
    if not raw:
        from aiosd.config import load
        return load()
    return Config.from_dict(json.loads(raw))


def run_manager(cls: type[Manager]) -> None:
    """Entry point of a manager process (python -m aiosd.procs.NAME)."""
    cfg = config_from_env()
    try:
        from setproctitle import setproctitle
        setproctitle(f"aiosd: {cls.name}")
    except ImportError:
        pass
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s {cls.name}[%(process)d] %(levelname)s %(message)s")
    mgr = cls(cfg)
    signal.signal(signal.SIGTERM, mgr.stop)
    signal.signal(signal.SIGINT, mgr.stop)
    mgr.serve()
