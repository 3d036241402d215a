"""aios-kill [-s SIGNAL] AID...: send a signal to agents (STOP suspends, CONT resumes)."""

from __future__ import annotations

import argparse
import signal as sig
import sys

from aiosd.cli.common import add_home, home_of, root_client, run_command
from aiosd.errors import AiosError
from aiosd.syscalls import SIGNALS


def signal_name(value: str) -> str:
    v = value.upper().removeprefix("SIG")
    if v.isdigit():
        try:
            v = sig.Signals(int(v)).name.removeprefix("SIG")
        except ValueError:
            pass
    if v not in SIGNALS:
        raise AiosError("EINVAL", f"unknown signal '{value}' (one of {', '.join(SIGNALS)})")
    return v


def execute(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aios-kill", description="signal agents")
    add_home(p)
    p.add_argument("-s", "--signal", default="TERM")
    p.add_argument("aids", nargs="+", type=int, metavar="AID")
    args = p.parse_args(argv)
    name = signal_name(args.signal)
    client = root_client(home_of(args), timeout=10)
    failed = 0
    for aid in args.aids:
        try:
            client.syscall("kill_agent", {"aid": aid, "signal": name})
            print(aid)
        except AiosError as exc:
            print(f"aios-kill: {aid}: {exc.code}: {exc.message}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def main() -> int:
    return run_command("aios-kill", execute)


if __name__ == "__main__":
    sys.exit(main())
