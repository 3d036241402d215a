"""aios-logs [-f] [-n N] [AID | MANAGER] | --audit [--aid N] [--name NAME] [--since T] [--call C]

Without an argument: the daemon's log. With an aid: that agent's output (-f follows it until
the agent ends). With a manager name (llm, memory, storage, tools): its log. --audit reads
the audit log from LMDB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiosd.cli.common import add_home, home_of, root_client, run_command
from aiosd.errors import AiosError
from aiosd.proctable import AgentState


def parse_since(value: str) -> float:
    """Seconds since the epoch, an ISO time, or a span back from now: 30s, 10m, 2h, 1d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise AiosError("EINVAL", f"--since takes 10m, 2h, an ISO time or epoch seconds, not '{value}'") from None


def follow(path: Path, lines: int, forever: bool, running: Callable[[], bool] | None = None) -> None:
    """Print the log (its last `lines`), then with `forever` what is appended to it: until
    `running()` says no (an agent's log ends with the agent, as `docker logs -f` does),
    or until interrupted (the daemon's and managers' logs, as `tail -f`)."""
    if not path.exists():
        raise AiosError("ENOENT", f"no log at {path}")
    with open(path, "rb") as fh:
        data = fh.read()
        tail = data.splitlines(keepends=True)[-lines:] if lines else data.splitlines(keepends=True)
        sys.stdout.buffer.write(b"".join(tail))
        sys.stdout.flush()
        checked = time.monotonic()
        while forever:
            chunk = fh.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if running is not None and time.monotonic() - checked >= 0.5:
                checked = time.monotonic()
                if not running():
                    sys.stdout.buffer.write(fh.read())  # what it wrote as it ended
                    sys.stdout.flush()
                    return
            time.sleep(0.1)


def agent_running(home: Path, aid: int) -> Callable[[], bool]:
    client = None

    def running() -> bool:
        nonlocal client
        try:
            client = client or root_client(home, timeout=5)
            return AgentState(client.syscall("get_status", {"aid": aid})["status"]).alive
        except AiosError:  # the daemon is gone (its agents with it), or the aid is unknown
            return False
    return running


def show_audit(args: argparse.Namespace) -> None:
    query = {"aid": args.aid, "name": args.name, "call": args.call, "limit": args.n or 1000,
             "since": parse_since(args.since) if args.since else None}
    records = root_client(home_of(args), timeout=30).syscall("audit_query", query)
    if isinstance(records, dict):  # audit_query answers {"records": [...]}
        records = records.get("records") or []
    for r in records:
        if args.json:
            print(json.dumps(r))
            continue
        when = dt.datetime.fromtimestamp(r["t"]).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        note = f" {r['note']}" if r.get("note") else ""
        print(f"{when} aid={r['aid']} {r.get('name', '')} {r['call']} {r['code']} "
              f"{r['latency_s'] * 1000:.2f}ms {r['digest']}{note}")


def execute(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aios-logs", description="daemon, manager, agent and audit logs")
    add_home(p)
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", type=int, default=0, metavar="N", help="last N lines (records with --audit)")
    p.add_argument("target", nargs="?", help="an aid, or a manager name")
    p.add_argument("--audit", action="store_true")
    p.add_argument("--aid", type=int)
    p.add_argument("--name", help="the agent name (all its runs)")
    p.add_argument("--since")
    p.add_argument("--call")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.audit:
        show_audit(args)
        return 0
    logs = home_of(args) / "logs"
    running = None
    if args.target is None:
        path = logs / "aiosd.log"
    elif args.target.isdigit():
        path = logs / f"agent-{int(args.target)}.log"
        running = agent_running(home_of(args), int(args.target))
    elif args.target.isidentifier():
        path = logs / f"{args.target}.log"
    else:
        raise AiosError("EINVAL", f"'{args.target}' is neither an aid nor a manager name")
    follow(path, args.n, args.follow, running)
    return 0


def main() -> int:
    return run_command("aios-logs", execute)


if __name__ == "__main__":
    sys.exit(main())
