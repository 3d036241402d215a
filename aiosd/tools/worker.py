"""A warm sandbox worker (`python -m aiosd.tools.worker FD`): imports every tool module once
(and runs their `warm()`, unless it is a light worker), keeps pre-forked spare children,
and watches over the calls they run: deadlines, kills, exit statuses, scratch directories.

A call does not pass through this process. Each spare's job pipe (write end) and answer
pipe (read end) go to the tools manager over the control socket FD (SCM_RIGHTS); the
manager writes the job and reads the answer itself, so the worker's wakeups and its
forks' copy-on-write faults stay off the call's path. The manager then tells the worker
which spare got which call, so that the worker can time it and report how it ended.

In, on stdin (4-byte length + msgpack frames): {"init": {...}} once, {"job": id, "pid",
"tool", "timeout", "cpu_s"} when the manager gave spare `pid` a call, {"cancel": id}.
Out, one packet each on FD: {"ready": pid, "errors"}, {"spare": pid} with its two
descriptors, {"done": id, "ok": false, "error", "cpu_s"} for a call that ended without
answering (timeout, cancel, crash) and {"exited": id, "cpu_s"} for one that ended normally.
EOF on stdin: kill all, exit.
"""

from __future__ import annotations

import gc
import importlib
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aiosd import protocol
from aiosd.tools import registry, sandbox

READ = 1 << 16
SPARES = 2
GONE_KEPT = 64


@dataclass
class Child:
    pid: int
    pidfd: int
    scratch: Path
    job: dict | None = None   # the manager's notice, once this spare was given a call
    deadline: float = 0.0
    t0: float = 0.0
    killed: str = ""          # why the worker killed it: "timeout" | "cancel"


class Worker:
    def __init__(self, proto_in: int, sock: socket.socket):
        self.pin, self.sock = proto_in, sock
        self.sel = selectors.DefaultSelector()
        self.inbuf = bytearray()
        self.procs: dict[int, Child] = {}   # by pid: spares and running calls
        self.gone: dict[int, tuple[Child, int, float]] = {}  # reaped before their notice was read
        self.reg = registry.Registry()
        self.scratch_root = Path(tempfile.gettempdir())
        self.base_vm = 0

    def send(self, obj: dict, fds: tuple[int, ...] = ()) -> None:
        socket.send_fds(self.sock, [protocol.pack(obj)], list(fds))  # one packet: one message

    def spares(self) -> int:
        return sum(c.job is None for c in self.procs.values())

    def init(self, spec: dict) -> None:
        self.scratch_root = Path(spec.get("scratch_root") or tempfile.gettempdir())
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        self.reg = registry.build(spec.get("tools_cfg") or {}, mcp=False)
        # a light worker skips the warm-ups (sympy, OpenCV, ...): its calls fork and exit
        # a process a third the size
        for mod in list(dict.fromkeys(self.reg.modules)) if spec.get("warm", True) else []:
            warm = getattr(importlib.import_module(mod), "warm", None)
            if warm is not None:
                try:
                    warm()
                except Exception as exc:  # a tool that cannot warm up still runs cold
                    print(f"tool worker: warming {mod} failed: {exc}", file=sys.stderr)
        gc.collect()
        gc.freeze()  # children share these pages instead of copying them on their first gc
        self.base_vm = sandbox.vm_bytes()
        while self.spares() < SPARES:
            self.fork_spare()
        self.send({"ready": os.getpid(), "errors": [e[:500] for e in self.reg.errors[:20]]})  # one packet

    def fork_spare(self) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="call-", dir=self.scratch_root))
        jr, jw = os.pipe()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            sandbox.spare_main(self.reg, jr, w, scratch, self.base_vm)
        try:
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins the race
        except OSError:
            pass
        os.close(jr)
        os.close(w)
        pidfd = os.pidfd_open(pid)
        self.procs[pid] = Child(pid, pidfd, scratch)
        self.sel.register(pidfd, selectors.EVENT_READ, pid)
        try:
            self.send({"spare": pid}, (jw, r))
        finally:
            os.close(jw)  # the manager holds them now: the spare sees EOF if the manager goes
            os.close(r)

    def on_notice(self, msg: dict) -> None:
        pid = int(msg.get("pid", 0))
        now = time.monotonic()
        c = self.procs.get(pid)
        if c is not None and c.job is None:
            c.job, c.t0, c.deadline = msg, now, now + float(msg.get("timeout") or 30.0)
            return
        if pid in self.gone:  # it finished before this notice was read
            c, status, cpu = self.gone.pop(pid)
            c.job, c.t0 = msg, now
            self.report(c, status, cpu)
            return
        self.send({"done": msg.get("job"), "ok": False, "error": {
            "code": "EIO", "message": f"{msg.get('tool')}: its sandbox process was gone before the call"}})

    def kill(self, c: Child, why: str) -> None:
        if not c.killed:
            c.killed = why
            try:
                os.killpg(c.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self, pid: int) -> None:
        c = self.procs.pop(pid)
        self.sel.unregister(c.pidfd)
        os.close(c.pidfd)
        try:
            os.killpg(c.pid, signal.SIGKILL)  # anything it started goes with it
        except (ProcessLookupError, PermissionError):
            pass
        _, status, ru = os.wait4(c.pid, 0)
        cpu = ru.ru_utime + ru.ru_stime
        if c.job is not None:
            self.report(c, status, cpu)
            return
        self.gone[pid] = (c, status, cpu)  # a spare that died, or one whose notice is still coming
        while len(self.gone) > GONE_KEPT:
            old, _, _ = self.gone.pop(next(iter(self.gone)))
            shutil.rmtree(old.scratch, ignore_errors=True)

    def report(self, c: Child, status: int, cpu: float) -> None:
        job = c.job or {}
        tool = job.get("tool", "?")
        out: dict = {"done": job.get("job"), "ok": False, "cpu_s": cpu}
        if c.killed == "timeout":
            out["error"] = {"code": "ETIMEDOUT",
                            "message": f"{tool} ran past its {job.get('timeout')} s limit and was killed"}
        elif c.killed == "cancel":
            out["error"] = {"code": "EIO", "message": f"{tool} was cancelled"}
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            out = {"exited": job.get("job"), "cpu_s": cpu}  # it answered the manager itself
        else:
            out["error"] = self.crash(tool, status, c)
        shutil.rmtree(c.scratch, ignore_errors=True)
        self.send(out)

    def crash(self, tool: str, status: int, c: Child) -> dict:
        try:
            tail = (c.scratch / ".stderr").read_bytes()[-2000:].decode(errors="replace").strip()
        except OSError:
            tail = ""
        cpu_s = (c.job or {}).get("cpu_s")
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and tail == "" and cpu_s
                                         and time.monotonic() - c.t0 >= float(cpu_s)):
                return {"code": "ETIMEDOUT", "message": f"{tool} used up its {cpu_s} CPU seconds"}
            how = f"was killed by signal {signal.Signals(sig).name}"
        else:
            code = os.WEXITSTATUS(status)
            if code == 3:
                return {"code": "ENOMEM", "message": f"{tool} ran out of memory"}
            how = f"exited with status {code}"
        return {"code": "EIO", "message": f"{tool} crashed: it {how}" + (f"; stderr: {tail}" if tail else "")}

    def on_input(self) -> bool:
        chunk = os.read(self.pin, READ)
        if not chunk:
            return False
        self.inbuf += chunk
        while len(self.inbuf) >= 4:
            n = sandbox.HDR.unpack_from(self.inbuf)[0]
            if len(self.inbuf) < 4 + n:
                break
            msg = protocol.unpack(bytes(self.inbuf[4:4 + n]), 1 << 31)
            del self.inbuf[:4 + n]
            if "init" in msg:
                self.init(msg["init"])
            elif "job" in msg:
                self.on_notice(msg)
            elif "cancel" in msg:
                for c in self.procs.values():
                    if c.job is not None and c.job.get("job") == msg["cancel"]:
                        self.kill(c, "cancel")
        return True

    def loop(self) -> None:
        self.sel.register(self.pin, selectors.EVENT_READ, None)
        while True:
            now = time.monotonic()
            soonest = min((c.deadline for c in self.procs.values() if c.job is not None and not c.killed),
                          default=now + 1.0)
            wait = max(0.0, soonest - now)
            short = self.base_vm and self.spares() < SPARES
            events = self.sel.select(min(wait, 0.002) if short else wait)
            if short and (not events or self.spares() == 0):
                # a fork costs milliseconds of CPU: do it when nothing is going on, unless
                # the manager has no spare of this worker left
                self.fork_spare()
            # notices before exits: a call can end before its notice is read
            for key, _ in sorted(events, key=lambda e: e[0].data is not None):
                if key.data is None:
                    if not self.on_input():
                        return
                elif key.data in self.procs:
                    self.reap(key.data)
            now = time.monotonic()
            for c in list(self.procs.values()):
                if c.job is not None and not c.killed and now >= c.deadline:
                    self.kill(c, "timeout")

    def shutdown(self) -> None:
        for c in list(self.procs.values()):
            try:
                os.killpg(c.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            shutil.rmtree(c.scratch, ignore_errors=True)
        for c, _, _ in self.gone.values():
            shutil.rmtree(c.scratch, ignore_errors=True)


def main() -> None:
    # the protocol gets private descriptors; fds 0/1 become /dev/null and stderr, so a
    # tool module that prints at import cannot corrupt the frames
    sock = socket.socket(fileno=int(sys.argv[1]))
    pin = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    w = Worker(pin, sock)
    signal.signal(signal.SIGTERM, lambda *_: (w.shutdown(), os._exit(0)))
    try:
        w.loop()
    finally:
        w.shutdown()


if __name__ == "__main__":
    main()
