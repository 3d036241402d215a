"""What every perf/ script shares: a real daemon in a temporary AIOS_HOME, started and
stopped through the CLI the way a user would, plus percentiles, tables, JSON and plots.

    from perf._harness import Daemon, summarize, write_json, markdown_table, plot_bars, parse_args

    args = parse_args("what this measures")          # --quick, --keep
    with Daemon(scheduler="rr", quantum=4) as d:     # any aiosd.config.Config field
        c = d.client()                               # a root libaios.Client
        c.syscall("llm_chat", {"messages": [...], "max_tokens": 8})
        d.cli("aios-run", "agents.math", "what is 2+3?")  # CompletedProcess, env set for this home
    write_json("throughput", {...})                  # perf/results/throughput.json

Config fields go into the home's config.toml (every field is settable there), so a script
needs no knowledge of which of them the CLI also takes as flags; `extra_args` are passed
to `aiosd start` as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "perf" / "results"


CLI = {"aiosd": "daemon", "aios-run": "run", "aios-ps": "ps", "aios-kill": "kill", "aios-logs": "logs"}


def cli_argv(name: str, *args: str) -> list[str]:
    """argv that runs one of our commands (aiosd, aios-run, aios-ps, ...) with this Python,
    exactly what the installed console scripts run."""
    return [sys.executable, "-m", f"aiosd.cli.{CLI[name]}", *args]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


class Daemon:
    """A private daemon: `with Daemon(**config) as d:` starts it, leaving the block stops it."""

    def __init__(self, home: str | Path | None = None, extra_args: Sequence[str] = (),
                 start_timeout: float = 600.0, **config: Any):
        self._tmp = None if home else tempfile.mkdtemp(prefix="aios-perf-")
        self.home = Path(home or self._tmp).resolve()
        self.config = config
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.env = {k: v for k, v in os.environ.items() if k not in ("AIOS_AID", "AIOS_TOKEN")}
        self.env.update(AIOS_HOME=str(self.home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        self._client = None

    # lifecycle
    def start(self) -> Daemon:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.config:
            lines = [f"{k} = {_toml_value(v)}" for k, v in self.config.items()]
            (self.home / "config.toml").write_text("\n".join(lines) + "\n")
        t0 = time.monotonic()
        proc = self.cli("aiosd", "start", *self.extra_args, check=False, timeout=self.start_timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"aiosd start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                               + self.log_tail())
        self.wait_ready(self.start_timeout - (time.monotonic() - t0))
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until every manager answers (the llm worker loads the model last)."""
        deadline = time.monotonic() + max(timeout, 1.0)
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.client().syscall("sys_status", timeout=5.0)
                managers = last.get("managers", []) if isinstance(last, dict) else []
                if all(m.get("state") == "RUNNING" for m in managers):
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet; keep the last reason
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"daemon in {self.home} not ready after {timeout:.0f}s: {last}\n" + self.log_tail())

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of the kernel and each manager, by name."""
        pids = {"kernel": self.kernel_pid()}
        for m in self.client().syscall("sys_status", timeout=10.0).get("managers", []):
            pids[m["name"]] = m.get("pid")
        out = {}
        for name, pid in pids.items():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return out

    def wait_idle(self, busy_below: float = 0.05, window_s: float = 0.5, timeout: float = 120.0) -> None:
        """Until the daemon's processes use under `busy_below` of a core over `window_s`: work
        started in the background (the memory manager loads its embedding model after it
        answers) must not be measured as part of the first figure."""
        deadline = time.monotonic() + timeout
        before = self.cpu_by_process()
        while time.monotonic() < deadline:
            time.sleep(window_s)
            after = self.cpu_by_process()
            busy = sum(max(0.0, after[k] - before.get(k, 0.0)) for k in after)
            if busy < busy_below * window_s:
                return
            before = after

    def stop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None
        self.cli("aiosd", "stop", check=False, timeout=60)
        pid = self.kernel_pid()
        if pid and _alive(pid):  # `aiosd stop` did not get it down: end the kernel we started
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        if self._tmp and not os.environ.get("AIOS_PERF_KEEP"):
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Daemon:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # using it
    def client(self):
        """A root libaios client for this home (one per Daemon, made on first use)."""
        if self._client is None:
            import libaios
            self._client = libaios.connect(home=str(self.home))
        return self._client

    def cli(self, name: str, *args: str, check: bool = True, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run one of our commands against this home; captures text output."""
        return subprocess.run(cli_argv(name, *args), env={**self.env, **(env or {})}, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, check=check)

    def popen(self, name: str, *args: str, **kw: Any) -> subprocess.Popen:
        """Start one of our commands without waiting (for concurrent runs)."""
        return subprocess.Popen(cli_argv(name, *args), env=self.env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)

    def kernel_pid(self) -> int | None:
        try:
            return int((self.home / "run" / "aiosd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for p in sorted((self.home / "logs").glob("*.log")):
            text = p.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {p.name}\n" + "\n".join(text))
        return "\n".join(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


# numbers
def percentile(xs: Iterable[float], p: float) -> float:
    """Linear-interpolated percentile, p in [0, 100]; nan for no data."""
    v = sorted(xs)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(xs: Iterable[float]) -> dict:
    v = list(xs)
    return {"n": len(v), "mean": statistics.fmean(v) if v else float("nan"),
            "std": statistics.pstdev(v) if len(v) > 1 else 0.0,
            "p50": percentile(v, 50), "p99": percentile(v, 99),
            "min": min(v) if v else float("nan"), "max": max(v) if v else float("nan")}


# output
def parse_args(description: str, argv: Sequence[str] | None = None,
               extra: Iterable[tuple[tuple, dict]] = ()) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a short run (used by tests and CI)")
    for a, kw in extra:
        ap.add_argument(*a, **kw)
    # a benchmark stopped with SIGTERM (kill, timeout) unwinds its `with Daemon(...)` blocks
    # instead of leaving an orphaned daemon and its model worker running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return ap.parse_args(argv)


def write_json(script: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{script}.json"
    data = {**data, "machine": machine()}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def machine() -> dict:
    import platform
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S")}


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def fmt(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def plot_bars(script: str, groups: Sequence[str], series: dict[str, Sequence[float]],
              ylabel: str, title: str, errors: dict[str, Sequence[float]] | None = None) -> Path:
    """Grouped bar chart saved as perf/results/<script>.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(series), 1)
    for i, (label, ys) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, ys, width, label=label, yerr=(errors or {}).get(label), capsize=3)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = RESULTS / f"{script}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
