"""Every benchmark in perf/ starts as the README says (`.venv/bin/python perf/x.py`), from any cwd.

Runs `--help` only: the benchmarks themselves are too slow and noisy for the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for p in (REPO / "perf").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_perf_script_starts_as_a_script(script: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower()
