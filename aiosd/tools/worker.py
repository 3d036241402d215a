"""A warm sandbox worker (`python -m aiosd.tools.worker`): imports every tool module once,
keeps a few pre-forked spare children, gives each call to a fresh one (which confines
itself, runs the tool once and exits), and multiplexes their answers.

Protocol on stdin/stdout, 4-byte length + msgpack frames. In: {"init": {...}} once, then
{"job": id, "tool", "args", "timeout", "cpu_s", "memory", "nofile", "env_names", "url",
"caller", "extra", "mcp"} and {"cancel": id}. Out: {"ready": pid}, {"started": id, "pid"},
{"done": id, "ok", "result"|"error", "wall_s", "cpu_s"}. EOF on stdin: kill all, exit.
"""

from __future__ import annotations

import importlib
import os
import selectors
import shutil
import signal
import sys
import gc
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosd import protocol
from aiosd.tools import registry, sandbox

READ = 1 << 16
SPARES = 2


@dataclass
class Spare:
    pid: int
    job_fd: int   # the worker writes the one job here
    fd: int       # the child's answer comes back here
    scratch: Path  # made with the spare, so that it can settle in before its job


@dataclass
class Child:
    job: dict
    pid: int
    fd: int
    scratch: Path
    deadline: float
    t0: float
    buf: bytearray = field(default_factory=bytearray)
    killed: str = ""   # why the worker killed it: "timeout" | "cancel"
    answered: bool = False


class Worker:
    def __init__(self, proto_in: int, proto_out: int):
        self.pin, self.pout = proto_in, proto_out
        self.sel = selectors.DefaultSelector()
        self.inbuf = bytearray()
        self.children: dict[int, Child] = {}   # by result fd
        self.reg = registry.Registry()
        self.scratch_root = Path(tempfile.gettempdir())
        self.base_vm = 0
        self.spares: list[Spare] = []

    def send(self, obj: dict) -> None:
        obj["spares"] = len(self.spares)  # the pool sends the next call where a child is ready
        data = memoryview(sandbox.frame(obj))
        while data:
            data = data[os.write(self.pout, data):]

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
        self.refill()
        self.send({"ready": os.getpid(), "errors": self.reg.errors})

    def fork_spare(self) -> Spare:
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
        return Spare(pid, jw, r, scratch)

    def refill(self) -> None:
        while len(self.spares) < SPARES:
            self.spares.append(self.fork_spare())

    def start(self, job: dict) -> None:
        sp = self.spares.pop(0) if self.spares else self.fork_spare()
        now = time.monotonic()
        c = Child(job, sp.pid, sp.fd, sp.scratch, now + float(job.get("timeout") or 30.0), now)
        try:
            data = memoryview(sandbox.frame(job))
            while data:
                data = data[os.write(sp.job_fd, data):]
        except OSError:
            pass  # the spare died; its EOF reports the call as a crash
        os.close(sp.job_fd)
        os.set_blocking(sp.fd, False)
        self.children[sp.fd] = c
        self.sel.register(sp.fd, selectors.EVENT_READ, c)
        self.send({"started": job["job"], "pid": sp.pid})

    def kill(self, c: Child, why: str) -> None:
        if not c.killed:
            c.killed = why
            try:
                os.killpg(c.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @staticmethod
    def answer_of(c: Child) -> dict | None:
        if len(c.buf) >= 4:
            n = sandbox.HDR.unpack_from(c.buf)[0]
            if len(c.buf) >= 4 + n:
                return protocol.unpack(bytes(c.buf[4:4 + n]), 1 << 31)
        return None

    def early(self, c: Child) -> None:
        """Answer as soon as the whole frame is in; the child's exit is reaped later."""
        answer = self.answer_of(c) if not c.killed else None
        if answer is not None:
            c.answered = True
            self.send({"done": c.job["job"], "wall_s": time.monotonic() - c.t0, **answer})

    def finish(self, c: Child) -> None:
        self.sel.unregister(c.fd)
        os.close(c.fd)
        del self.children[c.fd]
        try:
            os.killpg(c.pid, signal.SIGKILL)  # anything it started goes with it
        except (ProcessLookupError, PermissionError):
            pass
        _, status, ru = os.wait4(c.pid, 0)
        if c.answered:
            shutil.rmtree(c.scratch, ignore_errors=True)
            return
        out = {"done": c.job["job"], "wall_s": time.monotonic() - c.t0, "cpu_s": ru.ru_utime + ru.ru_stime}
        answer = self.answer_of(c)
        tool = c.job.get("tool", "?")
        if c.killed == "timeout":
            out.update(ok=False, error={"code": "ETIMEDOUT", "message":
                                        f"{tool} ran past its {c.job.get('timeout')} s limit and was killed"})
        elif c.killed == "cancel":
            out.update(ok=False, error={"code": "EIO", "message": f"{tool} was cancelled"})
        elif answer is not None:
            out.update(answer)
        else:
            out.update(ok=False, error=self.crash(tool, status, c))
        shutil.rmtree(c.scratch, ignore_errors=True)
        self.send(out)

    def crash(self, tool: str, status: int, c: Child) -> dict:
        try:
            tail = (c.scratch / ".stderr").read_bytes()[-2000:].decode(errors="replace").strip()
        except OSError:
            tail = ""
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and tail == "" and c.job.get("cpu_s")
                                         and time.monotonic() - c.t0 >= float(c.job["cpu_s"])):
                return {"code": "ETIMEDOUT", "message": f"{tool} used up its {c.job.get('cpu_s')} CPU seconds"}
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
                self.start(msg)
            elif "cancel" in msg:
                for c in self.children.values():
                    if c.job["job"] == msg["cancel"]:
                        self.kill(c, "cancel")
        return True

    def loop(self) -> None:
        self.sel.register(self.pin, selectors.EVENT_READ, None)
        while True:
            now = time.monotonic()
            soonest = min((c.deadline for c in self.children.values() if not c.killed and not c.answered),
                          default=now + 1.0)
            wait = max(0.0, soonest - now)
            if len(self.spares) < SPARES:
                wait = min(wait, 0.002)
            events = self.sel.select(wait)
            if not events and len(self.spares) < SPARES:
                # forking takes the worker tens of ms: do it when no answer is due
                self.spares.append(self.fork_spare())
                self.send({"spare": 1})
            for key, _ in events:
                if key.data is None:
                    if not self.on_input():
                        return
                    continue
                c: Child = key.data
                try:
                    chunk = os.read(c.fd, READ)
                except BlockingIOError:
                    continue
                if chunk:
                    c.buf += chunk
                    if not c.answered:
                        self.early(c)
                else:
                    self.finish(c)
            now = time.monotonic()
            for c in list(self.children.values()):
                if not c.killed and not c.answered and now >= c.deadline:
                    self.kill(c, "timeout")

    def shutdown(self) -> None:
        for sp in self.spares:
            os.close(sp.job_fd)  # EOF: the spare removes its scratch and exits
        for c in list(self.children.values()):
            self.kill(c, "cancel")
            shutil.rmtree(c.scratch, ignore_errors=True)


def main() -> None:
    # the protocol gets private descriptors; fds 0/1 become /dev/null and stderr, so a
    # tool module that prints at import cannot corrupt the frames
    pin, pout = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    w = Worker(pin, pout)
    signal.signal(signal.SIGTERM, lambda *_: (w.shutdown(), os._exit(0)))
    try:
        w.loop()
    finally:
        w.shutdown()


if __name__ == "__main__":
    main()
