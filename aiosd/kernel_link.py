"""The kernel's side of the managers: forwarding, replies, internal calls between managers,
usage events, requests held while a manager restarts, and the audit flush to storage.

A mixin of Kernel (aiosd/kernel.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import zmq

from aiosd import protocol
from aiosd.access import Principal
from aiosd.errors import AiosError
from aiosd.supervisor import MgrState
from aiosd.syscalls import SYSCALLS

log = logging.getLogger("aiosd")
SNDMORE = int(zmq.SNDMORE)


@dataclass
class Pending:
    origin: bytes           # front-end routing id, or a manager's back-end id
    client_id: Any          # the id the origin used
    aid: int
    name: str
    call: str
    args_digest: str
    t0: float
    manager: str
    from_manager: bool = False


class ManagerLink:
    def send_manager(self, name: str, msg: dict) -> None:
        m = self.sup.procs.get(name)
        if m is None:
            return self.fail_pending(msg, "EUNAVAIL", f"no manager '{name}' is configured")
        if m.state != MgrState.RUNNING or m.ident is None:
            if m.state == MgrState.FATAL:
                return self.fail_pending(msg, "EIO", f"manager {name} is FATAL: {self.log_tail(name)}")
            self.held.append((time.time() + self.cfg.start_timeout_s, name.encode(), msg))
            return
        if isinstance(msg.get("id"), int):
            m.inflight.add(msg["id"])
        self.post(m.ident, protocol.pack(msg))

    def post(self, ident: bytes, body: bytes) -> None:
        """Queue a body for a manager. Everything for one manager from one pass of the loop
        leaves as one frame (flush_posts): 16 agents' writes reach storage in one message,
        and its batch of answers comes back in one. Order per manager is kept."""
        q = self.outbox.get(ident)
        if q is None:
            self.outbox[ident] = [body]
        else:
            q.append(body)

    def flush_posts(self) -> None:
        out, self.outbox = self.outbox, {}
        for ident, bodies in out.items():
            try:
                self.back.send(ident, SNDMORE)
                self.back.send(protocol.join_bodies(bodies))
            except zmq.ZMQError:
                pass

    def fail_pending(self, msg: dict, code: str, message: str) -> None:
        kid = msg.get("id")
        if isinstance(kid, int) and kid in self.pending:
            self.finish(kid, {"ok": False, "error": {"code": code, "message": message}})

    def on_backend(self, frames: list) -> None:
        ident = frames[0].bytes
        try:
            msgs, _ = protocol.unpack_frame(frames[-1].bytes, 1 << 30)
        except AiosError:
            return
        for msg in msgs:
            if isinstance(msg, dict):
                self.on_manager_msg(ident, msg)

    def on_manager_msg(self, ident: bytes, msg: dict) -> None:
        m = self.manager_by_ident(ident)
        if "hello" in msg:
            m = self.sup.procs.get(str(msg["hello"]))
            if m is not None and m.proc is not None and m.pid == msg.get("pid"):
                self.sup.hello(m, ident)
                log.info("manager %s RUNNING pid %d", m.name, m.pid)
                self.release_held(m.name)
            return
        if m is None:
            return
        m.last_seen = time.time()
        if "call" in msg:  # an internal call from a manager to another
            return self.internal_call(m, ident, msg)
        if "event" in msg:
            return self.on_manager_event(m, msg)
        kid = msg.get("id")
        if not isinstance(kid, int) or kid not in self.pending:
            return
        if "partial" in msg:
            p = self.pending[kid]
            self.send_to(p, {"id": p.client_id, "partial": msg["partial"]})
            return
        m.inflight.discard(kid)
        self.finish(kid, msg)

    def manager_by_ident(self, ident: bytes):
        for m in self.sup.procs.values():
            if m.ident == ident:
                return m
        return None

    def internal_call(self, m, ident: bytes, msg: dict) -> None:
        t0 = time.perf_counter()
        aid = int(msg.get("aid", 0) or 0)
        row = self.table.get(aid)
        caller = Principal(aid, row.name if row else "root")
        try:
            sc = SYSCALLS.lookup(msg["call"])
            if sc.manager == "kernel":
                raise AiosError("EINVAL", "managers make no kernel calls")
            args = sc.check(msg.get("args"))
        except AiosError as exc:
            self.post(ident, protocol.pack(protocol.err(msg.get("id"), exc.code, exc.message)))
            return
        self.forward(ident, msg.get("id"), caller, sc, args, None, t0, from_manager=True)

    def on_manager_event(self, m, msg: dict) -> None:
        if msg.get("event") == "usage":
            row = self.table.get(int(msg.get("aid", -1)))
            if row is not None:
                row.tokens_in += int(msg.get("tokens_in", 0))
                row.tokens_out += int(msg.get("tokens_out", 0))
                self.llm_limits.charge(row.aid, int(msg.get("tokens_in", 0)) + int(msg.get("tokens_out", 0)))
                row.queue_wait_s += float(msg.get("queue_wait_s", 0.0))
                row.llm_requests += 1

    def release_held(self, name: str) -> None:
        keep = []
        for deadline, mgr, msg in self.held:
            if mgr.decode() == name:
                self.send_manager(name, msg)
            else:
                keep.append((deadline, mgr, msg))
        self.held = keep

    def manager_died(self, m, code: int) -> None:
        log.warning("manager %s exited with %s; now %s", m.name, code, m.state.value)
        for kid in sorted(m.inflight):
            if kid in self.pending:
                self.finish(kid, {"ok": False, "error": {
                    "code": "EIO", "message": f"manager {m.name} died (exit {code}) while serving this call"}})
        m.inflight.clear()
        if m.state == MgrState.BACKOFF and m.retry_at <= time.time():
            self.sup.restart(m)

    def flush_audit(self) -> None:
        records = self.audit.take()
        m = self.sup.procs.get("storage")
        if not records or m is None or m.ident is None:
            if records and m is not None and m.state != MgrState.FATAL:
                self.audit.records[:0] = records  # keep them until storage is back
            return
        kid = next(self.ids)
        self.pending[kid] = Pending(b"kernel", None, 0, "root", "_audit", "", time.perf_counter(),
                                    "storage", from_manager=True)
        self.send_manager("storage", {"id": kid, "call": "_audit", "args": {"records": records}, "aid": 0,
                                      "ctx": {"name": "root", "is_root": True}})

    def log_tail(self, name: str, lines: int = 3) -> str:
        try:
            text = (self.cfg.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(text[-lines:])[-400:]

