"""The kernel's life around its request path: reaping children, the housekeeping done
between messages (manager restarts and pings, hung managers, expired waits, the audit and
memory-touch flushes), and the orderly stop (agents first, then the managers).

A mixin of Kernel (aiosd/kernel.py).
"""

from __future__ import annotations

import logging
import os
import signal
import time

from aiosd import protocol
from aiosd.config import load
from aiosd.errors import AiosError
from aiosd.kernel_sys import RUNTIME_SETTINGS
from aiosd.supervisor import MgrState

log = logging.getLogger("aiosd")


class Lifecycle:
    # ---- SIGHUP -------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP, as nginx and supervisord take it: the settings that can change at run time
        are read again from config.toml, under the AIOS_* variables and flags the daemon started
        with (which still win), and applied as `aiosd set` applies them. A config.toml that
        does not load changes nothing; the log says why."""
        try:
            new = load(self.flags, home=self.cfg.home)
        except AiosError as exc:
            log.warning("SIGHUP: settings kept, config.toml not reloaded: %s", exc)
            return
        changed = {k: getattr(new, k) for k in RUNTIME_SETTINGS if getattr(new, k) != getattr(self.cfg, k)}
        if changed:
            self.apply_settings(changed)
        log.info("SIGHUP: config.toml reloaded; %s", ", ".join(f"{k} = {v}" for k, v in changed.items())
                 or "no run-time setting changed")

    # ---- children -----------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            m = self.sup.died(pid, code)
            if m is not None:
                self.carrier_died(pid, code)
                self.manager_died(m, code)
                continue
            self.agent_died(pid, code, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)

    def housekeeping(self) -> None:
        if self.sup.stopping:
            return
        for m in self.sup.due():
            self.sup.restart(m)
        now = time.time()
        for m in self.sup.procs.values():
            # ping on a clock of our own: a manager that talks a lot must still hear from us
            if m.state == MgrState.RUNNING and m.ident is not None and now - m.last_ping >= self.cfg.heartbeat_s:
                m.last_ping = now
                self.post(m.ident, protocol.pack({"hb": 1}))
        for m in self.sup.hung(max(10.0, self.cfg.heartbeat_s * self.cfg.heartbeat_liveness * 10)):
            log.error("manager %s stopped answering; killing it", m.name)
            os.kill(m.pid, signal.SIGKILL)
        if self.held:
            expired = [h for h in self.held if h[0] <= now]
            self.held = [h for h in self.held if h[0] > now]
            for _, mgr, msg in expired:
                self.fail_pending(msg, "EIO", f"manager {mgr.decode()} did not come back in time")
        self.expire_waiters(now)
        if self.mem_touches:
            self.flush_mem_touches()
        if self.audit.due():
            self.flush_audit()

    # ---- stop ---------------------------------------------------------------------------
    def begin_stop(self) -> None:
        self.running = False

    def shutdown(self) -> None:
        log.info("stopping: agents first")
        self.stop_agents()
        self.flush_audit()
        self.flush_posts()
        deadline = time.time() + 2.0
        while any(p.call == "_audit" for p in self.pending.values()) and time.time() < deadline:
            if self.back.poll(50):
                self.drain(self.back, self.on_backend)
            self.flush_posts()
        log.info("stopping: managers")
        self.sup.stopping = True
        self.sup.signal_all(signal.SIGTERM)
        self.wait_children(lambda: bool(self.sup.alive()), self.cfg.stop_timeout_s)
        for m in self.sup.alive():
            os.kill(m.pid, signal.SIGKILL)
        self.wait_children(lambda: bool(self.sup.alive()), 2.0)
        for name in ("kernel.sock", "backend.sock", "root.token", "aiosd.pid"):
            try:
                (self.cfg.run_dir / name).unlink()
            except FileNotFoundError:
                pass
        self.front.close(0)
        self.back.close(0)
        self.zap.close(0)
        self.ctx.term()
        log.info("stopped")

    def wait_children(self, pending, timeout: float) -> None:
        deadline = time.time() + timeout
        while pending() and time.time() < deadline:
            time.sleep(0.02)
            self.reap()
