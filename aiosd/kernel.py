"""The kernel process: syscall broker, process table, supervisor of the managers.

One thread, one poll loop. Front end: a ROUTER for agents and the CLI (PLAIN/ZAP
authenticated, so every frame carries a User-Id). Back end: a ROUTER the managers
connect to. Each request goes through the same path: decode, identify the caller, rate
limit, look up the syscall table, check privilege and schema, check access, then serve
it here or forward it to its manager; every answer is audited.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import gc
import logging
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

import lmdb
import zmq

from aiosd import audit, protocol
from aiosd.access import AccessRules, Principal
from aiosd.auth import ANON, ZAP_ENDPOINT, TokenStore, answer_zap
from aiosd.config import Config, load
from aiosd.errors import AiosError
from aiosd.gate import Gate
from aiosd.kernel_attach import AttachCalls
from aiosd.kernel_calls import KernelCalls
from aiosd.kernel_life import Lifecycle
from aiosd.kernel_link import ManagerLink, Pending
from aiosd.kernel_reads import LOCAL_READS, LocalReads
from aiosd.kernel_sys import SystemCalls
from aiosd.limits import LLM_CALLS, LlmLimits
from aiosd.proctable import ProcessTable
from aiosd.storage_raw import saved_agents
from aiosd.ratelimit import TokenBucket
from aiosd.supervisor import Supervisor
from aiosd.syscalls import SYSCALLS, Syscall

log = logging.getLogger("aiosd")
DEFERRED = object()
# ints: OR-ing and comparing pyzmq's flag enums costs microseconds a message
NOBLOCK, SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
# calls that block in a manager: the caller is WAITING meanwhile
WAITING_CALLS = {"llm_chat", "gen_restore", "tool_call", "wait_agent"}


class Kernel(Gate, ManagerLink, KernelCalls, SystemCalls, AttachCalls, LocalReads, Lifecycle):
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.table = ProcessTable()
        try:
            self.table.restore(*saved_agents(cfg.data_dir / "storage.lmdb", self.table.keep_ended))
        except lmdb.Error as exc:  # storage reports a broken environment itself; aids start at 1
            log.warning("the agents of earlier runs could not be read: %s", exc)
        self.rules = AccessRules()
        self.tokens = TokenStore()
        # the HTTP gateway is a supervised manager too, started only when asked for
        gateway = ("gateway",) if cfg.http and "gateway" not in cfg.managers else ()
        self.sup = Supervisor(cfg, tuple(cfg.managers) + gateway)
        self.attached: dict[int, int] = {}  # aid -> carrier pid (kernel_attach.py)
        self.audit = audit.AuditBuffer()
        self.pending: dict[int, Pending] = {}
        self.outbox: dict[bytes, list[bytes]] = {}  # manager ident -> bodies of this loop pass
        self.held: list[tuple[float, bytes, dict]] = []  # requests for a manager that is restarting
        self.waiters: dict[int, list[tuple[bytes, Any, float]]] = {}
        self.impersonating: dict[bytes, int] = {}
        self.buckets: dict[int, TokenBucket] = {}
        self.llm_limits = LlmLimits(cfg.max_queued_llm, cfg.llm_tokens_per_min)
        self.refusal_buckets: dict[int, TokenBucket] = {}
        self.refusals_counted: dict[int, int] = {}
        self.ids = itertools.count(1)
        self.running = True
        self.started_at = time.time()
        self.counters = {"requests": 0, "errors": 0}
        self.next_housekeeping = 0.0
        self.flags: dict = {}  # the settings given as flags to `aiosd start`: a reload keeps them
        self.reload_wanted = False

    # ---- set-up -------------------------------------------------------------------------
    def bind(self) -> None:
        self.ctx = zmq.Context()
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.bind(ZAP_ENDPOINT)
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.PLAIN_SERVER, 1)
        self.front.setsockopt(zmq.ZAP_DOMAIN, b"aiosd")
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.setsockopt(zmq.MAXMSGSIZE, 64 << 20)  # beyond this a peer is cut off, not buffered
        self.front.bind(self.cfg.endpoint("kernel"))
        self.back = self.ctx.socket(zmq.ROUTER)
        self.back.setsockopt(zmq.LINGER, 0)
        self.back.bind(self.cfg.endpoint("backend"))
        os.chmod(self.cfg.run_dir / "kernel.sock", 0o600)
        os.chmod(self.cfg.run_dir / "backend.sock", 0o600)
        self.open_front_to_agents()
        self.tokens.write_root_file(self.cfg.run_dir)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self.begin_stop())
        signal.signal(signal.SIGINT, lambda *_: self.begin_stop())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_wanted", True))
        self.poller = zmq.Poller()
        for s in (self.front, self.back, self.zap):
            self.poller.register(s, zmq.POLLIN)
        self.poller.register(self.wake_r.fileno(), zmq.POLLIN)

    def open_front_to_agents(self) -> None:
        """With agent_uid, agents run as another user: they may reach kernel.sock (the group's
        0710 on run/, 0660 on the socket; tokens still decide who they are), nothing else in run/."""
        spawn_as = self.agent_user()
        if not spawn_as:
            return
        os.chown(self.cfg.run_dir, -1, spawn_as["group"])
        os.chmod(self.cfg.run_dir, 0o710)
        os.chown(self.cfg.run_dir / "kernel.sock", -1, spawn_as["group"])
        os.chmod(self.cfg.run_dir / "kernel.sock", 0o660)

    # ---- the loop -----------------------------------------------------------------------
    def serve(self) -> None:
        self.sup.start_all()
        gc.freeze()  # start-up objects live as long as the kernel: collections skip them
        while self.running:
            timeout = 50 if (self.audit.records or self.held) else int(self.cfg.heartbeat_s * 1000)
            events = dict(self.poller.poll(timeout))
            if self.zap in events:
                answer_zap(self.zap, self.tokens)
            if self.back in events:
                self.drain(self.back, self.on_backend)
            if self.front in events:
                self.drain(self.front, self.on_frontend)
            if self.wake_r.fileno() in events:  # a signal arrived (SIGCHLD, mostly)
                try:
                    self.wake_r.recv(4096)
                except BlockingIOError:
                    pass
                self.reap()
                if self.reload_wanted:
                    self.reload_wanted = False
                    self.reload()
            now = time.monotonic()
            if now >= self.next_housekeeping:  # not on every message: the hot path stays short
                self.next_housekeeping = now + 0.01
                self.housekeeping()
            if self.outbox:
                self.flush_posts()
        self.shutdown()

    @staticmethod
    def drain(sock: zmq.Socket, handler) -> None:
        # Frame by frame with plain int flags (recv_multipart's flag enums and its RCVMORE
        # getsockopt cost more than the rest of receiving a request), until zmq.Again. Asking
        # EVENTS before each message instead costs ~2 us a message (pyzmq builds an enum for
        # every getsockopt) against ~5 us for the one exception per drain, and under 16
        # readers a drain holds ~30 messages (~3 under 16 writers, where the two are even).
        recv = sock.recv
        for _ in range(1000):  # bounded, so one side cannot starve the other
            try:
                frame = recv(NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [frame]
            while frame.more:  # the rest of a multipart message arrives with its first part
                frame = recv(NOBLOCK, copy=False)
                frames.append(frame)
            try:  # (free in the loop when nothing is raised)
                handler(frames)
            except Exception:  # one message's bug is logged; the kernel goes on serving everyone
                log.error("kernel failed on a message: %s", traceback.format_exc())

    # ---- front end ----------------------------------------------------------------------
    def on_frontend(self, frames: list) -> None:
        ident = frames[0].bytes
        t0 = time.perf_counter()
        self.counters["requests"] += 1
        user = frames[-1].get("User-Id").encode() if len(frames) >= 2 else ANON
        if len(frames) != 2:
            return self.refuse_malformed(ident, user, t0, AiosError("EPROTO", "a request is exactly one frame"))
        body = frames[1].bytes
        try:
            msg, refs = protocol.unpack_refs(body, self.cfg.max_frame)
        except AiosError as exc:
            return self.refuse_malformed(ident, user, t0, exc)
        req_id = msg.get("id") if isinstance(msg, dict) else None
        if isinstance(req_id, (dict, list)) or (isinstance(req_id, (str, bytes)) and len(req_id) > 128):
            req_id = None
        row = None
        try:
            if not isinstance(msg, dict) or "call" not in msg:
                raise AiosError("EPROTO", "a request is a map with 'id', 'call' and 'args'")
            caller, row = self.identify(ident, user)
            if refs and user.startswith(b"aid:") and self.agent_user():
                self.check_refs(msg)
            sc = SYSCALLS.lookup(msg["call"])
            self.admit(caller, row, sc)
            args = sc.check(msg.get("args"))
            target = self.check_access(caller, sc, args)
            if row is not None:
                self.check_limits(row, sc.name, args)
        except AiosError as exc:
            if row is not None:
                row.syscalls += 1  # a refused call is still a call the agent made, as in Linux
            protocol.discard(msg.get("args") if isinstance(msg, dict) else None)
            name = msg.get("call") if isinstance(msg, dict) and isinstance(msg.get("call"), str) else "?"
            self.audit_refused(self.aid_of(ident, user), name[:64], exc.code, t0)
            return self.reply_front(ident, req_id, error=(exc.code, exc.message))
        if row is not None:
            self.table.syscall_begin(row, sc.name in WAITING_CALLS)
        if sc.manager == "kernel":
            self.serve_kernel_call(ident, req_id, caller, row, sc, args, target, t0, refs)
        elif sc.name in LOCAL_READS and self.serve_local_read(ident, req_id, caller, sc, args, target, t0):
            pass
        else:
            self.forward(ident, req_id, caller, sc, args, target, t0)

    def forward(self, ident, req_id, caller: Principal, sc: Syscall, args, target, t0,
                from_manager: bool = False) -> None:
        kid = next(self.ids)
        row = self.table.get(caller.aid) if not caller.is_root else None
        ctx = {"name": caller.name, "is_root": caller.is_root, "target": target,
               "priority": row.priority if row else 0,
               "tools": row.tools if row else None,
               "memory_quota": row.memory_quota if row else None,
               "storage_quota": row.storage_quota if row else None,
               "context_strategy": row.context_strategy if row else None}
        self.pending[kid] = Pending(ident, req_id, caller.aid, caller.name, sc.name,
                                    audit.digest(args), t0, sc.manager, from_manager)
        if sc.name == "audit_query":
            # the records still batched here go first, on the same socket: a query sees every
            # call answered before it (read-your-writes), not only those of the last flush
            self.flush_audit()
        self.send_manager(sc.manager, {"id": kid, "call": sc.name, "args": args, "aid": caller.aid, "ctx": ctx})

    # ---- back end -----------------------------------------------------------------------
    def finish(self, kid: int, msg: dict) -> None:
        p = self.pending.pop(kid)
        ok = bool(msg.get("ok"))
        code = "OK" if ok else str((msg.get("error") or {}).get("code", "EIO"))
        if not ok:
            self.counters["errors"] += 1
        reply = {"id": p.client_id, "ok": ok}
        if ok:
            reply["result"] = msg.get("result")
        else:
            reply["error"] = msg.get("error")
        self.send_to(p, reply)
        if not p.from_manager:
            row = self.table.get(p.aid)
            if row is not None:
                self.table.syscall_end(row, p.call in WAITING_CALLS)
                if p.call in LLM_CALLS:
                    self.llm_limits.done(p.aid)
            if p.call != "_audit":
                self.audit.add({"t": time.time(), "aid": p.aid, "name": p.name, "call": p.call,
                                "digest": p.args_digest, "code": code,
                                "latency_s": round(time.perf_counter() - p.t0, 6)})

    def send_to(self, p: Pending, reply: dict) -> None:
        if p.origin == b"kernel":
            return
        if p.from_manager:
            return self.post(p.origin, protocol.pack(reply))
        try:
            self.front.send(p.origin, SNDMORE)
            self.front.send(protocol.pack(reply))
        except zmq.ZMQError:
            pass

    def reply_front(self, ident: bytes, req_id: Any, result: Any = None, error: tuple | None = None) -> None:
        if error:
            self.counters["errors"] += 1
            body = protocol.err(req_id, *error)
        else:
            body = protocol.ok(req_id, result)
        self.front.send(ident, SNDMORE)
        self.front.send(protocol.pack_msg(body, self.cfg.shm_threshold))


def acquire_lock(cfg: Config):
    """One daemon per AIOS_HOME: an flock held for the kernel's whole life."""
    fh = open(cfg.run_dir / "aiosd.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fh


def prepare_home(cfg: Config) -> None:
    for d in (cfg.home, cfg.log_dir, cfg.data_dir):
        d.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cfg.run_dir, 0o700)


def main(argv: list[str] | None = None) -> int:
    """Run the kernel in this process (the CLI starts it as `python -m aiosd.kernel`)."""
    import json
    raw = os.environ.pop("AIOS_KERNEL_CONFIG", None)
    cfg = Config.from_dict(json.loads(raw)) if raw else load()
    prepare_home(cfg)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s kernel[%(process)d] %(levelname)s %(message)s")
    lock = acquire_lock(cfg)
    if lock is None:
        pid = (cfg.run_dir / "aiosd.pid").read_text().strip() if (cfg.run_dir / "aiosd.pid").exists() else "?"
        print(f"aiosd: already running on {cfg.home} (pid {pid})", file=sys.stderr)
        return 2
    try:
        from setproctitle import setproctitle
        setproctitle("aiosd: kernel")
    except ImportError:
        pass
    (cfg.run_dir / "aiosd.pid").write_text(f"{os.getpid()}\n")
    kernel = Kernel(cfg)
    kernel.flags = json.loads(os.environ.pop("AIOS_KERNEL_FLAGS", "") or "{}")
    kernel.bind()
    log.info("aiosd kernel pid %d on %s", os.getpid(), cfg.home)
    kernel.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
