"""aios-run [--name N] [--priority P] [--detach] [--env K=V] AGENT [ARGS...] | -- PROGRAM [ARGS...]

Starts an agent under aiosd, prints its aid, streams its output and exits with its exit
code (128+N when a signal N ended it, as shells do). Ctrl-C is passed on to the agent.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from aiosd import agentspec
from aiosd.cli.common import add_home, home_of, root_client, run_command
from aiosd.errors import AiosError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aios-run", description="run an agent under aiosd")
    add_home(p)
    p.add_argument("--name", help="agent name (its storage namespace); default from AGENT")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("-d", "--detach", action="store_true", help="print the aid and return at once")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("--tools", help="comma-separated tool allowlist")
    p.add_argument("--context-strategy", choices=("truncate", "summarize"))
    p.add_argument("agent", help="a module (agents.math), a .py file, an executable path, or -- PROGRAM")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def execute(argv: list[str]) -> int:
    exe = False
    if "--" in argv:
        i = argv.index("--")
        head, tail = argv[:i], argv[i + 1:]
        if not tail:
            raise AiosError("EINVAL", "nothing to run after --")
        argv, exe = [*head, tail[0], *tail[1:]], True
    args = parser().parse_args(argv)
    env = {}
    for item in args.env:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise AiosError("EINVAL", f"--env wants K=V, got '{item}'")
        env[k] = v
    try:
        cmd, default_name = agentspec.resolve(args.agent, args.args, executable=exe)
    except FileNotFoundError as exc:
        raise AiosError("ENOENT", str(exc)) from None
    client = root_client(home_of(args), timeout=None)
    spawn = {"argv": cmd, "name": args.name or default_name, "priority": args.priority, "env": env,
             "cwd": os.getcwd(), "context_strategy": args.context_strategy,
             "tools": args.tools.split(",") if args.tools else None}
    info = client.syscall("spawn_agent", spawn, timeout=30)
    aid = info["aid"]
    if args.detach:
        print(aid)
        return 0
    print(f"aios-run: agent {aid} ({info['name']}) pid {info['pid']}", file=sys.stderr)
    return attach(client, aid, info["log"])


def attach(client, aid: int, log_path: str) -> int:
    done: dict = {}

    def waiter() -> None:
        try:
            done["row"] = client.syscall("wait_agent", {"aid": aid}, timeout=None)
        except AiosError as exc:
            done["error"] = exc

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    interrupts = 0

    def on_signal(signum, _frame) -> None:
        nonlocal interrupts
        interrupts += 1
        sig = "KILL" if interrupts > 1 else ("INT" if signum == signal.SIGINT else "TERM")
        try:
            client.syscall("kill_agent", {"aid": aid, "signal": sig}, timeout=5)
        except AiosError:
            pass

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    out = sys.stdout.buffer
    with open(log_path, "rb") as fh:
        while True:
            chunk = fh.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not t.is_alive():
                rest = fh.read()
                if rest:
                    out.write(rest)
                    out.flush()
                break
            time.sleep(0.02)
    if "error" in done:
        raise done["error"]
    code = done["row"]["exit_code"]
    return 128 - code if code < 0 else code


def main() -> int:
    return run_command("aios-run", execute)


if __name__ == "__main__":
    sys.exit(main())
