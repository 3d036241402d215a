"""aios-ps [-a] [-q] [--json] [--filter KEY=VALUE] [--sort KEY]: the process table, like docker ps."""

from __future__ import annotations

import argparse
import json
import sys

from aiosd.cli.common import add_home, fmt_bytes, fmt_duration, home_of, root_client, run_command
from aiosd.errors import AiosError

PINNED = ("aid", "pid", "name", "status", "priority", "exit_code", "cpu_s", "rss_bytes", "syscalls",
          "tokens_in", "tokens_out", "uptime_s", "started_at")
COLUMNS = (("AID", lambda r: str(r["aid"])), ("PID", lambda r: str(r["pid"])), ("NAME", lambda r: r["name"]),
           ("STATUS", lambda r: r["status"] + (f"({r['exit_code']})" if r["exit_code"] is not None else "")),
           ("PRIO", lambda r: str(r["priority"])), ("CPU", lambda r: f"{r['cpu_s']:.2f}s"),
           ("RSS", lambda r: fmt_bytes(r["rss_bytes"])), ("SYSCALLS", lambda r: str(r["syscalls"])),
           ("TOKENS", lambda r: f"{r['tokens_in']}/{r['tokens_out']}"),
           ("UPTIME", lambda r: fmt_duration(r["uptime_s"])))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aios-ps", description="list agents")
    add_home(p)
    p.add_argument("-a", "--all", action="store_true", help="include exited agents")
    p.add_argument("-q", "--quiet", action="store_true", help="aids only")
    p.add_argument("--json", action="store_true")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sort", metavar="KEY", default="aid")
    return p


def select(rows: list[dict], filters: list[str], sort: str) -> list[dict]:
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in PINNED:
            raise AiosError("EINVAL", f"--filter wants KEY=VALUE with KEY one of {', '.join(PINNED)}")
        rows = [r for r in rows if str(r.get(key)).lower() == value.lower()]
    if sort not in PINNED:
        raise AiosError("EINVAL", f"--sort takes one of {', '.join(PINNED)}")
    return sorted(rows, key=lambda r: (r.get(sort) is None, r.get(sort)))


def execute(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    rows = root_client(home_of(args), timeout=10).syscall("list_agents", {"all": args.all})
    rows = select(rows, args.filter, args.sort)
    if args.json:
        print(json.dumps([{k: r.get(k) for k in PINNED} for r in rows], indent=1))
    elif args.quiet:
        for r in rows:
            print(r["aid"])
    else:
        table = [[h for h, _ in COLUMNS]] + [[fn(r) for _, fn in COLUMNS] for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def main() -> int:
    return run_command("aios-ps", execute)


if __name__ == "__main__":
    sys.exit(main())
