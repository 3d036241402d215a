"""Manager supervision in supervisord's manner: STARTING RUNNING BACKOFF STOPPING EXITED FATAL.

A manager that dies is restarted after a backoff that doubles on quick deaths; after
`fatal_after` quick deaths in a row it is FATAL and stays down. Starting a child uses
fork+exec of a fresh interpreter (never a bare fork of this ZeroMQ-holding process),
with PR_SET_PDEATHSIG so that nothing outlives a dead kernel.
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from aiosd.config import Config
from aiosd.procfs import proc_stats

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


class MgrState(enum.StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


def child_setup(parent_pid: int, pgroup: bool = False, rlimits: dict | None = None):
    """preexec_fn: die with the kernel, optionally own process group and rlimits."""
    def setup() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the kernel died between fork and prctl
            os._exit(1)
        if pgroup:
            os.setpgid(0, 0)
        for res, value in (rlimits or {}).items():
            try:
                import resource
                resource.setrlimit(res, (value, value))
            except (ValueError, OSError):
                pass
    return setup


@dataclass
class ManagerProc:
    name: str
    state: MgrState = MgrState.EXITED
    proc: subprocess.Popen | None = None
    ident: bytes | None = None
    started_at: float = 0.0
    ready_at: float = 0.0
    last_seen: float = 0.0
    last_ping: float = 0.0
    last_cpu: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    retry_at: float = 0.0
    last_exit: int | None = None
    inflight: set = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def describe(self) -> dict:
        up = time.time() - self.ready_at if self.state == MgrState.RUNNING else 0.0
        return {"name": self.name, "state": self.state.value, "pid": self.pid, "uptime_s": round(up, 1),
                "restarts": self.restarts, "last_exit": self.last_exit}


class Supervisor:
    def __init__(self, cfg: Config, names: tuple[str, ...]):
        self.cfg = cfg
        self.procs = {n: ManagerProc(n) for n in names}
        self.by_pid: dict[int, ManagerProc] = {}
        self.stopping = False

    def start(self, m: ManagerProc) -> None:
        env = dict(os.environ)
        env["AIOS_CONFIG"] = json.dumps(self.cfg.to_dict())
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.cfg.log_dir / f"{m.name}.log", "ab", buffering=0)
        try:
            m.proc = subprocess.Popen(
                [sys.executable, "-m", f"aiosd.procs.{m.name}"], env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, preexec_fn=child_setup(os.getpid()), close_fds=True,
            )
        finally:
            log.close()
        m.state, m.ident = MgrState.STARTING, None
        m.started_at = m.last_seen = time.time()
        self.by_pid[m.proc.pid] = m

    def start_all(self) -> None:
        for m in self.procs.values():
            self.start(m)

    def hello(self, m: ManagerProc, ident: bytes) -> None:
        m.ident, m.state = ident, MgrState.RUNNING
        m.ready_at = m.last_seen = time.time()

    def died(self, pid: int, status: int) -> ManagerProc | None:
        """A manager exited; decide its next state. Returns it (None: not a manager)."""
        m = self.by_pid.pop(pid, None)
        if m is None:
            return None
        m.last_exit, m.ident, m.proc = status, None, None
        if self.stopping:
            m.state = MgrState.EXITED
            return m
        # a manager that dies before its hello failed to start, however long that took
        # (importing torch on a busy machine outlasts quick_death_s)
        quick = m.ready_at < m.started_at or time.time() - m.started_at < self.cfg.quick_death_s
        m.quick_deaths = m.quick_deaths + 1 if quick else 0
        if m.quick_deaths >= self.cfg.fatal_after:
            m.state = MgrState.FATAL
            return m
        delay = min(self.cfg.restart_backoff_s * (2 ** max(m.quick_deaths - 1, 0)),
                    self.cfg.restart_backoff_max_s) if m.quick_deaths else 0.0
        m.state, m.retry_at = MgrState.BACKOFF, time.time() + delay
        return m

    def due(self) -> list[ManagerProc]:
        now = time.time()
        return [m for m in self.procs.values() if m.state == MgrState.BACKOFF and m.retry_at <= now]

    def restart(self, m: ManagerProc) -> None:
        m.restarts += 1
        self.start(m)

    def hung(self, limit_s: float) -> list[ManagerProc]:
        """Managers silent for limit_s that also made no CPU progress meanwhile.

        A long model step on an overloaded machine keeps the llm worker from heartbeating,
        but it is busy, not hung: its CPU time still grows, and killing it would lose work.
        """
        now = time.time()
        out = []
        for m in self.procs.values():
            if m.state != MgrState.RUNNING or now - m.last_seen <= limit_s:
                continue
            cpu = proc_stats(m.pid)[0]
            if cpu > m.last_cpu + 0.05:
                m.last_cpu, m.last_seen = cpu, now - limit_s / 2  # look again in a while
                continue
            out.append(m)
        return out

    # The kernel reaps every child itself (wait4 on -1), so Popen.poll() is never used here.
    def signal_all(self, sig: int) -> None:
        for m in self.alive():
            m.state = MgrState.STOPPING
            try:
                os.kill(m.pid, sig)
            except ProcessLookupError:
                pass

    def alive(self) -> list[ManagerProc]:
        return [m for m in self.procs.values() if m.proc is not None]
