"""Looking at real processes from tests: their state in /proc, and waiting for a condition."""

from __future__ import annotations

import time


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """Running or stopped; a zombie or a vanished pid is not alive."""
    try:
        return proc_state(pid) != "Z"
    except OSError:
        return False


def wait_for(pred, timeout: float = 10.0, step: float = 0.02):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("condition not met in time")
