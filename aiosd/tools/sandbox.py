"""What happens inside one sandboxed tool call: the forked child's confinement and run.

The child of a warm worker puts itself in its own process group, closes every inherited
descriptor but its result pipe (so no kernel or manager socket leaks), sets its rlimits
(CPU seconds, address space, open files, no core dumps), replaces its environment by a
short allowlist plus the API keys its tool declared, works in its scratch directory, and
writes one framed msgpack answer before `_exit`.
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


def confine(job: dict, keep_fd: int, err_path: Path, base_vm: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(err, 1)
    os.dup2(err, 2)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 1 << 16)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the child
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    scratch = err_path.parent
    env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
    env.update({k: os.environ[k] for k in job.get("env_names", ()) if k in os.environ})
    env.update(HOME=str(scratch), TMPDIR=str(scratch))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(scratch)
    os.umask(0o077)
    _limit(resource.RLIMIT_CORE, 0)
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


def spare_main(reg: Registry, job_fd: int, w: int, base_vm: int) -> None:
    """A pre-forked child: waits for its one job, confines itself, runs it, answers, _exits.
    Forking ahead of time keeps the fork (tens of ms for a worker with sympy, OpenCV and
    scikit-image loaded) off the call's path. Never returns."""
    code = 0
    try:
        os.setpgid(0, 0)
        keep = sorted((job_fd, w))
        # drop the worker's other pipes at once: a spare must not keep them open
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 16)
        job = read_frame(job_fd)
        if job is None:
            os._exit(0)
        os.close(job_fd)
        scratch = Path(job["scratch"])
        confine(job, w, scratch / ".stderr", base_vm)
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
