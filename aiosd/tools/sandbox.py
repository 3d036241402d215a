"""What happens inside one sandboxed tool call: the forked child's confinement and run.

The child of a warm worker is forked before its call comes (a spare). Waiting, it puts
itself in its own process group, closes every inherited descriptor but its two pipes (so no
kernel or manager socket leaks), replaces its environment by a short allowlist, works in
its own scratch directory and allows no core dumps. Its one job then sets the rest: the
API keys its tool declared and its rlimits (CPU seconds, address space, open files). It
runs that one job, writes one framed msgpack answer and `_exit`s: one process per call.
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import sys
import traceback
from pathlib import Path
from typing import Any

from aiosd import protocol
from aiosd.errors import AiosError
from aiosd.tools.registry import Registry, ToolContext

BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SECRET_MARKS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "_KEY", "APP_ID", "AUTH")
HDR = struct.Struct(">I")


def frame(obj: Any) -> bytes:
    body = protocol.pack(obj)
    return HDR.pack(len(body)) + body


def scrub_env(env: dict, keep: set[str]) -> dict:
    """The worker's environment: no AIOS_* secrets (token, aid, config) and nothing that
    looks like a credential, except variables some tool declared it needs."""
    out = {}
    for k, v in env.items():
        if k in keep or k.startswith("AIOS_TOOL_URL_"):
            out[k] = v
        elif k.startswith("AIOS_") or any(m in k.upper() for m in SECRET_MARKS):
            continue
        else:
            out[k] = v
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        out[k] = "1"  # a single-threaded worker forks safely; each call's CPU is its own
    return out


def vm_bytes() -> int:
    """This process's current address-space size: rlimits are set on top of it, since the
    forked child starts with everything the warm worker imported."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _limit(which: int, value: int) -> None:
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(which)
        resource.setrlimit(which, (min(value, hard) if hard != resource.RLIM_INFINITY else value, hard))


def prepare(keep: tuple[int, ...], err_path: Path) -> dict:
    """The part of the confinement that no job changes, done by a spare before its job
    arrives: default signals, /dev/null for stdin and the scratch's .stderr for stdout and
    stderr, every other descriptor closed, the environment cut to BASE_ENV, the scratch as
    cwd and HOME, no core dumps. Returns the variables taken out of the environment; the
    job's own `env_names` are put back from them and the rest dropped."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(err, 1)
    os.dup2(err, 2)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the child
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    scratch = err_path.parent
    taken = dict(os.environ)
    env = {k: taken[k] for k in BASE_ENV if k in taken}
    env.update(HOME=str(scratch), TMPDIR=str(scratch))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(scratch)
    os.umask(0o077)
    _limit(resource.RLIMIT_CORE, 0)
    return taken


def confine(job: dict, taken: dict, base_vm: int) -> None:
    """The part that depends on the job: its declared variables and its rlimits."""
    os.environ.update({k: taken[k] for k in job.get("env_names", ()) if k in taken})
    taken.clear()
    cpu = int(job.get("cpu_s") or 0)
    if cpu > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = int(job.get("memory") or 0)
    if mem > 0:
        _limit(resource.RLIMIT_AS, base_vm + mem)
    _limit(resource.RLIMIT_NOFILE, int(job.get("nofile") or 256))


def execute(reg: Registry, job: dict, scratch: Path) -> dict:
    """Run the tool; the answer the child sends back (never raises)."""
    name = job["tool"]
    ctx = ToolContext(scratch=scratch, url=job.get("url", ""), timeout=float(job.get("timeout", 30)),
                      caller=job.get("caller", ""), extra=job.get("extra") or {})
    try:
        if job.get("mcp"):
            from aiosd.tools import mcp
            result = mcp.call(job["mcp"], job["args"], ctx.timeout)
        else:
            result = reg.get(name).run(job["args"], ctx)
        return {"ok": True, "result": result}
    except AiosError as exc:
        return {"ok": False, "error": exc.to_wire()}
    except MemoryError:
        return {"ok": False, "error": {"code": "ENOMEM",
                                       "message": f"{name} ran out of memory (limit {job.get('memory', 0)} bytes)"}}
    except RecursionError:
        return {"ok": False, "error": {"code": "EIO", "message": f"{name}: recursion too deep"}}
    except Exception as exc:
        traceback.print_exc()
        tail = traceback.format_exc()[-1500:]
        return {"ok": False, "error": {"code": "EIO", "message": f"{name} failed: {type(exc).__name__}: {exc}\n{tail}"}}


def _read_exact(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(fd: int) -> Any:
    """One framed message from a blocking descriptor; None at EOF."""
    hdr = _read_exact(fd, HDR.size)
    body = _read_exact(fd, HDR.unpack(hdr)[0]) if hdr else None
    return None if body is None else protocol.unpack(body, 1 << 31)


def rehearse(reg: Registry) -> None:
    """Walk the call path once on a dummy job before the real one comes: a forked child
    pays a copy-on-write page fault the first time it writes each page it shares with the
    worker (every refcount it touches), so paying them now keeps them off the call."""
    job = protocol.unpack(protocol.pack({"job": 0, "tool": "", "args": {}, "timeout": 30.0, "cpu_s": 0,
                                          "memory": 0, "nofile": 0, "env_names": [], "url": "", "caller": "",
                                          "extra": {}, "mcp": None, "scratch": ""}), 1 << 20)
    ToolContext(scratch=Path("."), url=job["url"], timeout=float(job["timeout"]), caller=job["caller"],
                extra=job["extra"] or {})
    reg.tools.get(job["tool"])
    frame({"ok": True, "result": {"ok": True, "n": 1, "x": 1.0, "s": "", "l": [None]}})


def spare_main(reg: Registry, job_fd: int, w: int, scratch: Path, base_vm: int) -> None:
    """A pre-forked child: confines itself as far as it can without its job, waits for the
    job, takes on the job's limits, runs it, answers and _exits. Forking ahead of time
    keeps the fork (milliseconds for a worker with sympy, OpenCV and scikit-image loaded)
    and most of the confinement off the call's path. Never returns."""
    code = 0
    try:
        os.setpgid(0, 0)
        taken = prepare((job_fd, w), scratch / ".stderr")
        rehearse(reg)
        job = read_frame(job_fd)
        if job is None:  # the worker closed or died: nothing to run, nothing to leave behind
            import shutil
            os.chdir("/")
            shutil.rmtree(scratch, ignore_errors=True)
            os._exit(0)
        os.close(job_fd)
        confine(job, taken, base_vm)
        answer = execute(reg, job, scratch)
        try:
            data = frame(answer)
        except (TypeError, ValueError, OverflowError) as exc:
            data = frame({"ok": False, "error": {"code": "EIO", "message":
                                                 f"{job['tool']} returned something not serialisable: {exc}"}})
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
    except MemoryError:
        code = 3
    except BaseException:  # noqa: BLE001 - the child must reach _exit whatever happened
        try:
            traceback.print_exc()
        except Exception:  # noqa: BLE001
            pass
        code = 2
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        os._exit(code)
