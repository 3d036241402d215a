"""`make run`: the paper's three agents under aiosd, sequentially and then concurrently.

    python -m aiosd.demo            # the full run (a minute or so on 2 CPU cores)
    python -m aiosd.demo --quick    # short answers (used by tests)

Starts a daemon with the default model in a temporary AIOS_HOME through the CLI, runs
math → narrative → rec one after the other, then all three at once, prints each agent's
answer and the paper's Table 5 with our numbers, stops the daemon and leaves nothing running.

Definitions (the paper's, section 5.2, per agent, averaged over the agent's llm requests):
  waiting    = hold + queued_s       (request submitted → the model starts on it)
  turnaround = hold + total_s        (request submitted → its reply is complete)
where hold is how long the agent was kept from starting after the batch was submitted
(in sequential order: the run time of the agents before it; concurrently: 0).
The functions here are shared with perf/table4_consistency.py and perf/table5_scheduling.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAPER = ("math", "narrative", "rec")


@dataclass
class Run:
    name: str
    task: str
    aid: int = 0
    submitted: float = 0.0     # when the batch was submitted (the same for all agents of a batch)
    spawned: float = 0.0
    ended: float = 0.0
    exit_code: int | None = None
    output: str = ""
    log: str = ""              # the agent's log file (its stdout and stderr)
    timings: dict = field(default_factory=dict)

    @property
    def answer(self) -> str:
        return "\n".join(ln for ln in self.output.splitlines() if not ln.startswith("AIOS_TIMINGS ")).strip()

    def metrics(self) -> dict:
        hold = self.spawned - self.submitted
        reqs = self.timings.get("requests") or []
        waits = [hold + (r.get("queued_s") or 0.0) for r in reqs]
        turns = [hold + (r.get("total_s") or (r["end"] - r["submit"])) for r in reqs]
        return {"requests": len(reqs), "hold_s": hold,
                "waiting_s": statistics.fmean(waits) if waits else float("nan"),
                "turnaround_s": statistics.fmean(turns) if turns else float("nan"),
                "runtime_s": self.ended - self.spawned}


def spawn(client: Any, run: Run, env: dict | None = None) -> None:
    env = {"PYTHONPATH": str(REPO), **(env or {})}
    run.spawned = time.time()
    info = client.syscall("spawn_agent", {"argv": [sys.executable, "-m", f"agents.{run.name}", run.task],
                                          "name": run.name, "env": env, "cwd": str(REPO)}, timeout=30)
    run.aid = info["aid"]
    run.log = info["log"]


def collect(client: Any, run: Run, timeout: float = 600) -> None:
    from libaios.agent import parse_timings
    row = client.syscall("wait_agent", {"aid": run.aid, "timeout": timeout}, timeout=timeout + 10)
    run.ended = row.get("ended_at") or time.time()
    run.exit_code = row.get("exit_code")
    run.output = Path(run.log).read_text(errors="replace")
    found = parse_timings(run.output)
    run.timings = found[-1] if found else {}


def run_batch(client: Any, tasks: dict[str, str], concurrent: bool, env: dict | None = None,
              on_done: Any = None) -> tuple[list[Run], float]:
    """Run the agents in `tasks` (in that order) one after the other or all at once.
    Returns the runs and the makespan (submission of the batch → the last exit)."""
    t0 = time.time()
    runs = [Run(name, task, submitted=t0) for name, task in tasks.items()]
    if concurrent:
        for r in runs:
            spawn(client, r, env)
        for r in runs:
            collect(client, r)
            on_done and on_done(r)
    else:
        for r in runs:
            spawn(client, r, env)
            collect(client, r)
            on_done and on_done(r)
    return runs, max(r.ended for r in runs) - t0


def cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AIOS_AID", "AIOS_TOKEN")}
    env.update(AIOS_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "aiosd.cli.daemon", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.panel import Panel
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from agents import TASKS

    ap = argparse.ArgumentParser(prog="python -m aiosd.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short answers (12 tokens per request)")
    ap.add_argument("--scheduler", default=None, help="fifo | rr | priority (default: the config's)")
    args = ap.parse_args(argv)
    console = Console()
    env = {"AIOS_AGENT_MAX_TOKENS": "12"} if args.quick else {}
    tasks = {name: TASKS[name] for name in PAPER}
    home = Path(tempfile.mkdtemp(prefix="aios-demo-"))
    if args.scheduler:
        (home / "config.toml").write_text(f'scheduler = "{args.scheduler}"\n')
    results: dict[str, tuple[list[Run], float]] = {}
    ok = False
    try:
        with console.status("starting aiosd with the default model (first start converts it) ..."):
            t = time.monotonic()
            r = cli(home, "start")
        if r.returncode != 0:
            console.print(f"[red]aiosd start failed[/red]\n{r.stdout}{r.stderr}")
            return 1
        pid_file = home / "run" / "aiosd.pid"
        kpid = pid_file.read_text().strip() if pid_file.exists() else "?"
        console.print(f"aiosd pid {kpid} started in {time.monotonic() - t:.1f} s (AIOS_HOME={home})")
        from libaios.client import Client
        client = Client(home, timeout=None)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console) as progress:
            for mode in ("sequential", "concurrent"):
                bars = {n: progress.add_task(f"{mode:>10}  {n}: {'queued' if mode == 'sequential' else 'running'}",
                                             total=1) for n in tasks}

                def done(run: Run, mode: str = mode, bars: dict = bars) -> None:
                    m = run.metrics()
                    state = "done" if run.exit_code == 0 else f"[red]exit {run.exit_code}[/red]"
                    progress.update(bars[run.name], completed=1,
                                    description=f"{mode:>10}  {run.name}: {state}, {m['requests']} llm requests, "
                                                f"{m['runtime_s']:.1f} s")
                results[mode] = run_batch(client, tasks, mode == "concurrent", env, done)
        client.close()
        for run in results["concurrent"][0]:
            console.print(Panel(run.answer or "(no output)", title=f"{run.name}: {run.task}", expand=False))
        console.print(table5(results, Table))
        ok = all(r.exit_code == 0 for runs, _ in results.values() for r in runs)
    finally:
        pid_file = home / "run" / "aiosd.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else 0
        cli(home, "stop", timeout=120)
        for _ in range(100):
            if not pid or not _pid_alive(pid):
                break
            time.sleep(0.1)
        shutil.rmtree(home, ignore_errors=True)
        console.print("aiosd stopped; nothing left running" if not pid or not _pid_alive(pid)
                      else f"[red]aiosd pid {pid} still running[/red]")
    return 0 if ok else 1


def table5(results: dict, table_cls: Any) -> Any:
    t = table_cls(title="Table 5, our numbers: sequential vs concurrent (scheduled) execution")
    for col in ("Agent", "Seq. waiting (s)", "Seq. turnaround (s)", "Conc. waiting (s)", "Conc. turnaround (s)"):
        t.add_column(col, justify="right" if col != "Agent" else "left")
    seq = {r.name: r.metrics() for r in results["sequential"][0]}
    con = {r.name: r.metrics() for r in results["concurrent"][0]}
    for name in seq:
        t.add_row(name, f"{seq[name]['waiting_s']:.3f}", f"{seq[name]['turnaround_s']:.3f}",
                  f"{con[name]['waiting_s']:.3f}", f"{con[name]['turnaround_s']:.3f}")
    ms, mc = results["sequential"][1], results["concurrent"][1]
    t.caption = f"makespan: sequential {ms:.2f} s, concurrent {mc:.2f} s ({mc / ms:.2f}x)"
    return t


if __name__ == "__main__":
    sys.exit(main())
