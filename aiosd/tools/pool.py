"""The tools manager's side of the warm pool: worker processes (aiosd.tools.worker),
each started in its own session with a scrubbed environment and no inherited
descriptors, fed jobs over a pipe; answers are polled without blocking from tick().

Two kinds of worker, N of each: warm ones, which have run every tool module's `warm()`
(sympy, OpenCV, scikit-image loaded), and light ones, which have not. A tool whose module
has no `warm()` runs in a light one: forking, and later tearing down, a process a third
the size is milliseconds less of CPU per call on a small machine.

A worker that dies fails its calls with EIO and is restarted; a call whose worker does
not answer by its deadline plus a grace period is killed from here (the backstop).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosd import protocol
from aiosd.tools import sandbox

log = logging.getLogger("aiosd")
GRACE_S = 5.0


@dataclass
class Proc:
    popen: subprocess.Popen
    buf: bytearray = field(default_factory=bytearray)
    jobs: dict = field(default_factory=dict)      # job id -> deadline (monotonic)
    pids: dict = field(default_factory=dict)      # job id -> child pid
    ready: bool = False
    used: float = 0.0                             # last submit: ties go to the least recent
    spares: int = 0                               # pre-forked children it last reported
    warm: bool = True

    @property
    def out_fd(self) -> int:
        assert self.popen.stdout is not None
        return self.popen.stdout.fileno()


class Pool:
    def __init__(self, size: int, tools_cfg: dict, scratch_root: Path, keep_env: set[str]):
        self.size = max(1, size)
        self.tools_cfg = tools_cfg
        self.scratch_root = scratch_root
        self.env = sandbox.scrub_env(dict(os.environ), keep_env)
        self.procs: list[Proc] = [self._spawn(warm) for warm in (True, False) for _ in range(self.size)]

    def _spawn(self, warm: bool) -> Proc:
        popen = subprocess.Popen([sys.executable, "-m", "aiosd.tools.worker"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, close_fds=True, start_new_session=True,
                                 env=self.env, bufsize=0)
        p = Proc(popen, warm=warm)
        os.set_blocking(p.out_fd, False)
        self._write(p, {"init": {"tools_cfg": self.tools_cfg, "scratch_root": str(self.scratch_root),
                                 "warm": warm}})
        return p

    def _write(self, p: Proc, msg: dict) -> bool:
        try:
            assert p.popen.stdin is not None
            p.popen.stdin.write(sandbox.frame(msg))
            return True
        except (BrokenPipeError, OSError):
            return False

    def submit(self, job: dict, warm: bool = True) -> None:
        # least loaded, then least recently used: a worker re-forks its spare child right
        # after a call, so the other one is the quicker to take the next
        p = min((q for q in self.procs if q.warm == warm),
                key=lambda q: (not q.ready, len(q.jobs), -q.spares, q.used))
        p.used = time.monotonic()
        p.spares = max(0, p.spares - 1)
        p.jobs[job["job"]] = time.monotonic() + float(job.get("timeout") or 30.0) + GRACE_S
        if not self._write(p, job):
            p.jobs.pop(job["job"], None)
            raise OSError("the tool worker is gone")

    def cancel(self, job_id: Any) -> None:
        for p in self.procs:
            if job_id in p.jobs:
                self._write(p, {"cancel": job_id})

    def ready(self) -> int:
        return sum(p.ready for p in self.procs)

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Answers that arrived: {"done": id, ok, result|error, ...}; worker deaths and
        backstop kills come back as failed answers too."""
        out: list[dict] = []
        fds = {p.out_fd: p for p in self.procs}
        try:
            readable, _, _ = select.select(list(fds), [], [], timeout)
        except (OSError, ValueError):
            readable = list(fds)
        for fd in readable:
            p = fds[fd]
            dead = False
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    dead = True
                    break
                p.buf += chunk
            out += self._frames(p)
            if dead:
                out += self._restart(p, "the tool worker died")
        now = time.monotonic()
        for p in list(self.procs):
            late = [j for j, dl in p.jobs.items() if now > dl]
            if late:
                log.error("tool worker %s missed deadlines of %s; killing it", p.popen.pid, late)
                out += self._restart(p, "the tool worker stopped answering")
        return out

    def _frames(self, p: Proc) -> list[dict]:
        out = []
        while len(p.buf) >= 4:
            n = sandbox.HDR.unpack_from(p.buf)[0]
            if len(p.buf) < 4 + n:
                break
            msg = protocol.unpack(bytes(p.buf[4:4 + n]), 1 << 31)
            del p.buf[:4 + n]
            p.spares = msg.get("spares", p.spares)
            if "ready" in msg:
                p.ready = True
                for err in msg.get("errors") or []:
                    log.error("tool worker: %s", err)
            elif "started" in msg:
                p.pids[msg["started"]] = msg["pid"]
            elif "done" in msg:
                p.jobs.pop(msg["done"], None)
                p.pids.pop(msg["done"], None)
                out.append(msg)
        return out

    def _restart(self, p: Proc, why: str) -> list[dict]:
        failed = [{"done": j, "ok": False, "error": {"code": "EIO", "message": f"{why}; the call was lost"}}
                  for j in p.jobs]
        self._kill(p)
        self.procs[self.procs.index(p)] = self._spawn(p.warm)
        return failed

    def _kill(self, p: Proc) -> None:
        for pid in p.pids.values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.killpg(p.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.popen.wait()
        for f in (p.popen.stdin, p.popen.stdout):
            try:
                f.close() if f else None
            except OSError:
                pass

    def close(self) -> None:
        for p in self.procs:
            try:
                if p.popen.stdin:
                    p.popen.stdin.close()  # EOF: the worker kills its calls and exits
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for p in self.procs:
            try:
                p.popen.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(p)
