"""`make run`'s script in its short configuration: exits 0, prints Table 5, leaves nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_quick_runs_and_cleans_up() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("AIOS_AID", "AIOS_TOKEN", "AIOS_HOME")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), COLUMNS="160")
    proc = subprocess.Popen([sys.executable, "-m", "aiosd.demo", "--quick"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, _ = proc.communicate(timeout=420)
    assert proc.returncode == 0, out
    assert "Table 5" in out and "makespan" in out
    for name in ("math", "narrative", "rec"):
        assert name in out
    assert "nothing left running" in out
    # the daemon may leave our session when it daemonizes: check its pid as printed, and our session
    m = re.search(r"aiosd pid (\d+)", out)
    assert m, out
    assert not _alive(int(m.group(1))), "the daemon is still running"
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _session(int(p.name)) == proc.pid]
    assert not left, f"processes left running: {[p.name for p in left]}"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _session(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return -1
