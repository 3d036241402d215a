"""What every command shares: AIOS_HOME, the root client, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from aiosd.errors import AiosError


def add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="AIOS_HOME (default: $AIOS_HOME or ~/.aios)")


def home_of(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("AIOS_HOME") or Path.home() / ".aios").expanduser().resolve()


def root_client(home: Path, timeout: float | None = 30.0):
    from libaios.client import Client
    return Client(home, timeout=timeout)


def daemon_pid(home: Path) -> int | None:
    try:
        pid = int((home / "run" / "aiosd.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def run_command(prog: str, fn: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a command body: errors become one line on stderr and a non-zero exit."""
    try:
        return fn(sys.argv[1:] if argv is None else argv)
    except AiosError as exc:
        print(f"{prog}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a CLI never shows a traceback unless asked to
        if os.environ.get("AIOS_DEBUG"):
            raise
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)
