"""Reading a process's CPU time and RSS from /proc: cheap, and no psutil on the hot path."""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes of a live process; (0.0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[21]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0.0, 0
