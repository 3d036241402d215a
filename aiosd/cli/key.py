"""aios-key create --name NAME [--priority P] [--tools a,b] | list [--json] [-a] | revoke NAME|PREFIX.

Keys of the HTTP gateway; each is an agent name with a priority and a tool allowlist.
They live hashed in AIOS_HOME/data/keys.json and work whether or not the daemon runs: a
running gateway sees a new or revoked key on its next request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from aiosd.cli.common import add_home, home_of, run_command
from aiosd.gateway.keys import KeyStore


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aios-key", description="API keys of the OpenAI-compatible gateway")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="issue a key (printed once)")
    add_home(c)
    c.add_argument("--name", required=True, help="the agent name (storage namespace) the key acts as")
    c.add_argument("--priority", type=int, default=0, help="scheduling priority, -20..20 (default 0)")
    c.add_argument("--tools", help="comma-separated tool allowlist (default: every tool)")
    ls = sub.add_parser("list", help="list keys (never the keys themselves)")
    add_home(ls)
    ls.add_argument("-a", "--all", action="store_true", help="include revoked keys")
    ls.add_argument("--json", action="store_true")
    r = sub.add_parser("revoke", help="revoke by name or by the prefix `list` shows")
    add_home(r)
    r.add_argument("which", metavar="NAME|PREFIX")
    return p


def execute(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    store = KeyStore.for_home(home_of(args))
    if args.cmd == "create":
        tools = None if args.tools is None else [t.strip() for t in args.tools.split(",") if t.strip()]
        key, rec = store.create(args.name, args.priority, tools)
        print(key)
        print(f"aios-key: created '{rec.name}' ({rec.prefix}...); the key is shown only this once",
              file=sys.stderr)
        return 0
    if args.cmd == "revoke":
        for rec in store.revoke(args.which):
            print(f"revoked {rec.name} ({rec.prefix}...)")
        return 0
    rows = [r for r in store.load() if args.all or r.active]
    if args.json:
        print(json.dumps([r.public() for r in rows], indent=1))
        return 0
    table = [["NAME", "PREFIX", "PRIO", "TOOLS", "CREATED", "STATUS"]]
    for r in rows:
        table.append([r.name, r.prefix + "...", str(r.priority), "*" if r.tools is None else ",".join(r.tools) or "-",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
                      "active" if r.active else "revoked"])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def main() -> int:
    return run_command("aios-key", execute)


if __name__ == "__main__":
    sys.exit(main())
