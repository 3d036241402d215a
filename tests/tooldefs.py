"""Test-only tools, loaded by a daemon through `tools.plugins = ["tests.tooldefs"]`."""

from __future__ import annotations

import os
import time

from aiosd.tools.registry import Tool, ToolContext

OBJ = {"type": "object", "properties": {}, "additionalProperties": True}


def t_sleep(args: dict, ctx: ToolContext) -> dict:
    time.sleep(float(args.get("seconds", 1.0)))
    return {"slept": float(args.get("seconds", 1.0))}


def t_hang(args: dict, ctx: ToolContext) -> None:
    while True:
        time.sleep(60)


def t_alloc(args: dict, ctx: ToolContext) -> int:
    block = bytearray(int(args.get("bytes", 10 << 30)))
    return len(block)


def t_crash(args: dict, ctx: ToolContext) -> None:
    os.write(2, b"about to crash on purpose\n")
    os.abort()


def t_raise(args: dict, ctx: ToolContext) -> None:
    raise ValueError("a bug in the tool")


def t_echo(args: dict, ctx: ToolContext) -> dict:
    """What the sandbox looks like from inside: env, open fds, cwd, limits."""
    import resource
    fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
    (ctx.scratch / "junk.txt").write_text("scratch is writable")
    return {"args": args, "env": dict(os.environ), "fds": fds, "cwd": os.getcwd(), "pgid": os.getpgid(0),
            "pid": os.getpid(), "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "scratch": str(ctx.scratch)}


_SEEN: list = []  # module state: a call that finds an earlier call's mark here shares a process


def t_state(args: dict, ctx: ToolContext) -> dict:
    """Leaves marks in its process (a global, an environment variable, a file in its
    scratch, a file in /tmp) and reports the marks it found from earlier calls."""
    found = {"global": list(_SEEN), "env": os.environ.get("AIOS_TEST_MARK"),
             "scratch": sorted(p.name for p in ctx.scratch.iterdir() if p.name != ".stderr")}
    mark = str(args.get("mark", ""))
    _SEEN.append(mark)
    os.environ["AIOS_TEST_MARK"] = mark
    (ctx.scratch / f"mark-{mark}").write_text(mark)
    return {"pid": os.getpid(), "ppid": os.getppid(), "found": found, "scratch": str(ctx.scratch)}


def t_forge(args: dict, ctx: ToolContext) -> None:
    """A hostile tool: writes its own answer frame, straight to the answer pipe, and exits."""
    import struct

    from aiosd import protocol
    fd = max(int(f) for f in os.listdir("/proc/self/fd") if int(f) > 2 and os.path.islink(f"/proc/self/fd/{f}")
             and os.readlink(f"/proc/self/fd/{f}").startswith("pipe:"))
    kind = args.get("kind")
    if kind == "huge":
        os.write(fd, struct.pack(">I", 0xFFFFFFF0) + b"x" * 1000)
    else:
        body = b"\xc1" if kind == "garbage" else protocol.pack(
            {"ok": True, "result": protocol.ShmRef("aios-someone-elses", 10)} if kind == "shm"
            else {"ok": False, "error": {"code": "EWHATEVER", "message": "made up"}})
        os.write(fd, struct.pack(">I", len(body)) + body)
    os._exit(0)


def t_burn(args: dict, ctx: ToolContext) -> None:
    while True:
        pass


TOOLS = [
    Tool("test_sleep", "sleeps", {"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0}},
                                  "additionalProperties": False}, t_sleep, category="other", concurrency=0),
    Tool("test_hang", "never returns", OBJ, t_hang),
    Tool("test_alloc", "allocates bytes", OBJ, t_alloc, memory=1 << 30),
    Tool("test_crash", "aborts", OBJ, t_crash),
    Tool("test_raise", "raises", OBJ, t_raise),
    Tool("test_echo", "echoes its sandbox", OBJ, t_echo),
    Tool("test_burn", "burns CPU", OBJ, t_burn, cpu_s=1),
    Tool("test_forge", "writes a forged answer", OBJ, t_forge),
    Tool("test_state", "leaves marks in its process and reports earlier ones", OBJ, t_state),
    Tool("test_one_at_a_time", "sleeps, one call at a time", {"type": "object", "properties": {
        "seconds": {"type": "number"}}}, t_sleep, concurrency=1),
]
