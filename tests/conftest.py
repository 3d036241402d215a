"""Fixtures: a real daemon in a temporary AIOS_HOME, talked to through its real sockets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
CLI = {"aiosd": "daemon", "aios-run": "run", "aios-ps": "ps", "aios-kill": "kill", "aios-logs": "logs",
       "aios-sto": "sto"}
SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(home: Path, overrides: dict) -> None:
    lines, tables = [], []
    for key, value in overrides.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml(value)}")
    for key, table in tables:
        for sub, vals in table.items():
            if isinstance(vals, dict):
                lines.append(f"[{key}.{sub}]")
                lines += [f"{k} = {_toml(v)}" for k, v in vals.items()]
            else:
                lines.insert(0, f"{key}.{sub} = {_toml(vals)}")
    (home / "config.toml").write_text("\n".join(lines) + "\n")


class Daemon:
    """A real aiosd in its own AIOS_HOME, started and stopped through the CLI."""

    def __init__(self, overrides: dict | None = None):
        self.home = Path(tempfile.mkdtemp(prefix="aios-test-"))
        self.overrides = dict(overrides or {})
        write_config(self.home, self.overrides)
        self.env = dict(os.environ, AIOS_HOME=str(self.home), PYTHONPATH=str(REPO))
        for k in ("AIOS_AID", "AIOS_TOKEN"):
            self.env.pop(k, None)
        self.root = None
        self.cfg = None

    def start(self, timeout: float = 300) -> Daemon:
        r = self.run_cli("aiosd", "start", timeout=timeout)
        if r.returncode != 0:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (self.home / "logs").glob("*.log"))
            raise RuntimeError(f"aiosd start failed ({r.returncode}): {r.stderr}\n{logs}")
        from aiosd.config import load
        from libaios.client import Client
        self.cfg = load(home=self.home)
        self.root = Client(self.home)
        return self

    def run_cli(self, prog: str, *argv: str, timeout: float = 120, input: str | None = None,
                env: dict | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", f"aiosd.cli.{CLI[prog]}", *argv]
        return subprocess.run(cmd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, input=input, cwd=str(REPO))

    def agent(self, name: str = "agent", argv: list | None = None, **spawn):
        """Spawn a real (sleeping) agent process; return (aid, a Client acting as that agent)."""
        from libaios.client import Client
        info = self.root.syscall("spawn_agent", {"argv": argv or SLEEPER, "name": name, **spawn})
        client = Client(self.home)
        client.syscall("set_aid", {"aid": info["aid"]})
        return info["aid"], client

    def pid(self) -> int:
        return int((self.home / "run" / "aiosd.pid").read_text())

    def manager_pid(self, name: str) -> int:
        for m in self.root.syscall("sys_status")["managers"]:
            if m["name"] == name:
                return m["pid"]
        raise KeyError(name)

    def wait_manager(self, name: str, old_pid: int = 0, timeout: float = 30) -> float:
        """Wait until manager `name` is RUNNING with a pid other than old_pid; return the wait."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for m in self.root.syscall("sys_status")["managers"]:
                if m["name"] == name and m["state"] == "RUNNING" and m["pid"] != old_pid:
                    return time.monotonic() - t0
            time.sleep(0.02)
        raise TimeoutError(f"manager {name} not back within {timeout} s")

    def stop(self) -> None:
        if self.root is not None:
            self.root.close()
        self.run_cli("aiosd", "stop", timeout=60)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon():
    d = Daemon().start()
    yield d
    d.stop()


@pytest.fixture
def make_daemon():
    made: list[Daemon] = []

    def factory(start: bool = True, **overrides) -> Daemon:
        d = Daemon(overrides)
        made.append(d)
        return d.start() if start else d

    yield factory
    for d in made:
        d.stop()
