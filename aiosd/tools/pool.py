"""The tools manager's side of the warm pool: worker processes (aiosd.tools.worker), each
started in its own session with a scrubbed environment and no inherited descriptors but
its control socket, and the pre-forked sandbox children (spares) they hand over.

Two kinds of worker, N of each: warm ones, which have run every tool module's `warm()`
(sympy, OpenCV, scikit-image loaded), and light ones, which have not. A tool whose module
has no `warm()` runs in a light one: forking, and later tearing down, a process a third
the size is milliseconds less of CPU per call on a small machine.

A worker passes each spare's job pipe and answer pipe here (SCM_RIGHTS). A call is one
write to a spare's job pipe and one read of its answer pipe, polled from tick(); the
worker, told which spare got which call, kills it at its deadline and reports how it
ended when it did not answer (timeout, cancel, crash). A worker that dies fails its
calls with EIO and is restarted; a call with no answer and no report by its deadline
plus a grace period is killed from here (the backstop).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosd import protocol
from aiosd.errors import CODES, AiosError
from aiosd.tools import sandbox

log = logging.getLogger("aiosd")
GRACE_S = 5.0


MAX_ANSWER = 256 << 20


def checked(body: bytes) -> dict:
    """A child's answer, read straight from a process that ran untrusted tool code: valid
    msgpack, a dict, no shared-memory references (which would name other callers' data),
    an errno-named error; anything else is the tool's failure, never the manager's."""
    def bad(why: str) -> dict:
        return {"ok": False, "error": {"code": "EIO", "message": f"the tool's answer was {why}"}}
    try:
        answer, refs = protocol.unpack_refs(body, MAX_ANSWER)
    except AiosError:
        return bad("not valid msgpack")
    if refs or not isinstance(answer, dict):
        return bad("not a plain result")
    if answer.get("ok"):
        return {"ok": True, "result": answer.get("result")}
    err = answer.get("error") if isinstance(answer.get("error"), dict) else {}
    code = err.get("code") if err.get("code") in CODES else "EIO"
    return {"ok": False, "error": {"code": code, "message": str(err.get("message") or "the tool failed")[:4000]}}


@dataclass
class Spare:
    pid: int
    jw: int   # its job goes here
    r: int    # its answer comes back here


@dataclass
class Run:
    job: Any
    pid: int
    fd: int            # the answer pipe; -1 once closed
    t0: float
    deadline: float    # the backstop's
    buf: bytearray = field(default_factory=bytearray)


@dataclass
class Proc:
    popen: subprocess.Popen
    sock: socket.socket
    warm: bool = True
    ready: bool = False
    used: float = 0.0                                   # last submit: ties go to the least recent
    spares: list[Spare] = field(default_factory=list)
    runs: dict = field(default_factory=dict)           # job id -> Run


class Pool:
    def __init__(self, size: int, tools_cfg: dict, scratch_root: Path, keep_env: set[str]):
        self.size = max(1, size)
        self.tools_cfg = tools_cfg
        self.scratch_root = scratch_root
        self.env = sandbox.scrub_env(dict(os.environ), keep_env)
        self.by_fd: dict[int, tuple[Proc, Run]] = {}
        self.pending: list[dict] = []   # answers gathered outside poll(), returned by the next
        self.procs: list[Proc] = [self._spawn(warm) for warm in (True, False) for _ in range(self.size)]

    def _spawn(self, warm: bool) -> Proc:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            popen = subprocess.Popen([sys.executable, "-m", "aiosd.tools.worker", str(theirs.fileno())],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True,
                                     pass_fds=(theirs.fileno(),), start_new_session=True, env=self.env, bufsize=0)
        mine.setblocking(False)
        p = Proc(popen, mine, warm=warm)
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

    def submit(self, job: dict, warm: bool = True) -> bool:
        """Give the job to a spare of a worker of that kind; False if none has one yet."""
        while True:
            ps = [q for q in self.procs if q.warm == warm and q.spares]
            if not ps:
                self.pending += self._gather()  # spares may be waiting on the sockets
                ps = [q for q in self.procs if q.warm == warm and q.spares]
            if not ps:
                return False
            p = min(ps, key=lambda q: (len(q.runs), -len(q.spares), q.used))
            sp = p.spares.pop(0)
            try:
                data = memoryview(sandbox.frame(job))
                while data:
                    data = data[os.write(sp.jw, data):]
            except OSError:  # that spare died: its worker reaps it; try the next
                os.close(sp.r)
                continue
            finally:
                os.close(sp.jw)
            now = time.monotonic()
            p.used = now
            os.set_blocking(sp.r, False)
            run = Run(job["job"], sp.pid, sp.r, now, now + float(job.get("timeout") or 30.0) + GRACE_S)
            p.runs[run.job] = run
            self.by_fd[sp.r] = (p, run)
            self._write(p, {"job": run.job, "pid": sp.pid, "tool": job.get("tool"),
                            "timeout": job.get("timeout"), "cpu_s": job.get("cpu_s")})
            return True

    def cancel(self, job_id: Any) -> None:
        for p in self.procs:
            if job_id in p.runs:
                self._write(p, {"cancel": job_id})

    def fds(self) -> list[int]:
        """What poll() reads: running calls' answer pipes and the workers' sockets."""
        return list(self.by_fd) + [p.sock.fileno() for p in self.procs]

    def ready(self) -> int:
        return sum(p.ready for p in self.procs)

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Answers that arrived: {"done": id, ok, result|error, wall_s}; worker deaths and
        backstop kills come back as failed answers too."""
        out, self.pending = self.pending, []
        fds = self.fds()
        try:
            readable = set(select.select(fds, [], [], 0.0 if out else timeout)[0])
        except (OSError, ValueError):
            readable = set(fds)
        # answers first: a worker's report on a call must not overtake the call's answer
        for fd in readable & set(self.by_fd):
            out += self._read(*self.by_fd[fd])
        out += self._gather()
        now = time.monotonic()
        for p in list(self.procs):
            late = [j for j, r in p.runs.items() if now > r.deadline]
            if late:
                log.error("tool worker %s missed deadlines of %s; killing it", p.popen.pid, late)
                out += self._restart(p, "the tool worker stopped answering")
        return out

    def _read(self, p: Proc, run: Run) -> list[dict]:
        while run.fd >= 0:
            try:
                chunk = os.read(run.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:  # ended; what it left is judged when its worker reports
                self.by_fd.pop(run.fd, None)
                os.close(run.fd)
                run.fd = -1
                break
            run.buf += chunk
            n = sandbox.HDR.unpack_from(run.buf)[0] if len(run.buf) >= 4 else -1
            if n > MAX_ANSWER:
                try:
                    os.killpg(run.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self._drop(p, run)
                return [{"done": run.job, "ok": False, "wall_s": time.monotonic() - run.t0, "error": {
                    "code": "E2BIG", "message": f"the tool's answer of {n} bytes is over {MAX_ANSWER}"}}]
            if n >= 0 and len(run.buf) >= 4 + n:
                answer = checked(bytes(run.buf[4:4 + n]))
                self._drop(p, run)
                return [{**answer, "done": run.job, "wall_s": time.monotonic() - run.t0}]
        return []

    def _drop(self, p: Proc, run: Run) -> None:
        p.runs.pop(run.job, None)
        if run.fd >= 0:
            self.by_fd.pop(run.fd, None)
            os.close(run.fd)
            run.fd = -1

    def _gather(self) -> list[dict]:
        """Messages from the workers: spares, readiness, how unanswered calls ended."""
        out: list[dict] = []
        for p in list(self.procs):
            while True:
                try:
                    data, fds, flags, _ = socket.recv_fds(p.sock, 1 << 16, 2)
                except BlockingIOError:
                    break
                except OSError:
                    data, fds, flags = b"", [], 0
                if not data:
                    out += self._restart(p, "the tool worker died")
                    break
                try:
                    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                        raise ValueError("message cut short")
                    msg = protocol.unpack(data, 1 << 31)
                except Exception as exc:  # noqa: BLE001 - a garbled message costs a restart, not the manager
                    for fd in fds:
                        os.close(fd)
                    out += self._restart(p, f"the tool worker sent a bad message ({exc})")
                    break
                if "spare" in msg and len(fds) == 2:
                    p.spares.append(Spare(int(msg["spare"]), fds[0], fds[1]))
                    continue
                for fd in fds:
                    os.close(fd)
                if "ready" in msg:
                    p.ready = True
                    for err in msg.get("errors") or []:
                        log.error("tool worker: %s", err)
                elif ("done" in msg or "exited" in msg) and (run := p.runs.get(msg.get("done", msg.get("exited")))):
                    got = self._read(p, run)  # an answer written before the end wins
                    if not got:
                        self._drop(p, run)
                        err = msg.get("error") or {"code": "EIO", "message": "the tool ended without an answer"}
                        got = [{"done": run.job, "ok": False, "error": err, "wall_s": time.monotonic() - run.t0}]
                    out += got
        return out

    def _restart(self, p: Proc, why: str) -> list[dict]:
        failed: list[dict] = []
        for run in list(p.runs.values()):
            failed += self._read(p, run) or [{"done": run.job, "ok": False, "error": {
                "code": "EIO", "message": f"{why}; the call was lost"}}]
        self._kill(p)
        self.procs[self.procs.index(p)] = self._spawn(p.warm)
        return failed

    def _kill(self, p: Proc) -> None:
        for pid in [r.pid for r in p.runs.values()] + [s.pid for s in p.spares] + [p.popen.pid]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for run in list(p.runs.values()):
            self._drop(p, run)
        self._close_spares(p)
        p.popen.wait()
        for f in (p.popen.stdin, p.sock):
            try:
                f.close() if f else None
            except OSError:
                pass

    @staticmethod
    def _close_spares(p: Proc) -> None:
        for sp in p.spares:  # EOF on its job pipe: a spare removes its scratch and exits
            os.close(sp.jw)
            os.close(sp.r)
        p.spares.clear()

    def close(self) -> None:
        for p in self.procs:
            self._close_spares(p)
            try:
                if p.popen.stdin:
                    p.popen.stdin.close()  # EOF: the worker kills its calls and exits
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for p in self.procs:
            try:
                p.popen.wait(max(0.05, deadline - time.monotonic()))
                p.sock.close()
            except subprocess.TimeoutExpired:
                self._kill(p)
