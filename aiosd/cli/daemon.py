"""`aiosd start | stop | status | restart | set`: the daemon's life, as supervisorctl would show it."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from aiosd.cli.common import add_home, daemon_pid, fmt_duration, home_of, root_client, run_command
from aiosd.config import CHOICES, Config, load
from aiosd.errors import AiosError

FLAGS = {  # flag -> config field
    "scheduler": str, "quantum": int, "max_batch": int, "max_batch_tokens": int, "engine": str,
    "model": str, "device": str, "dtype": str, "http": str, "llm_backend": str, "llm_url": str,
    "context_window": int, "managers": str,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiosd", description="the aiosd daemon")
    sub = p.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start the daemon (returns once every manager answers)")
    restart = sub.add_parser("restart", help="stop, then start with the given flags")
    for sp in (start, restart):
        add_home(sp)
        sp.add_argument("--foreground", action="store_true", help="stay attached; log to stderr")
        sp.add_argument("--scheduler", choices=CHOICES["scheduler"])
        sp.add_argument("--quantum", type=int, metavar="STEPS")
        sp.add_argument("--max-batch", type=int, metavar="N")
        sp.add_argument("--max-batch-tokens", type=int, metavar="N")
        sp.add_argument("--engine", choices=CHOICES["engine"])
        sp.add_argument("--model", metavar="PATH")
        sp.add_argument("--device", choices=CHOICES["device"])
        sp.add_argument("--dtype")
        sp.add_argument("--http", metavar="HOST:PORT")
        sp.add_argument("--llm-backend", choices=CHOICES["llm_backend"])
        sp.add_argument("--llm-url", metavar="URL")
        sp.add_argument("--context-window", type=int)
        sp.add_argument("--managers", help="comma-separated subset (default: all)")
        sp.add_argument("--timeout", type=float, default=None, help="seconds to wait for readiness")
    for name in ("stop", "status"):
        sp = sub.add_parser(name)
        add_home(sp)
    sset = sub.add_parser("set", help="change tunables at run time: aiosd set scheduler=rr quantum=4")
    add_home(sset)
    sset.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    return p


def overrides(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}


def locked(home: Path) -> bool:
    path = home / "run" / "aiosd.lock"
    if not path.exists():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def start(args: argparse.Namespace) -> int:
    home = home_of(args)
    if locked(home):
        print(f"aiosd: already running on {home} (pid {daemon_pid(home) or '?'})", file=sys.stderr)
        return 1
    cfg = load(overrides(args), home=home)
    sock = cfg.run_dir / "backend.sock"  # the longest of the daemon's socket paths
    size = len(os.fsencode(sock))
    if size > zmq.IPC_PATH_MAX_LEN:
        raise AiosError("EINVAL", f"{cfg.home} is too long a home for the daemon's unix sockets: {sock} "
                                  f"has {size} bytes, at most {zmq.IPC_PATH_MAX_LEN}; "
                                  "choose a shorter AIOS_HOME")
    from aiosd.kernel import prepare_home
    prepare_home(cfg)
    env = dict(os.environ, AIOS_KERNEL_CONFIG=json.dumps(cfg.to_dict()),
               AIOS_KERNEL_FLAGS=json.dumps(overrides(args)), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "aiosd.kernel"]
    if args.foreground:
        os.execve(sys.executable, cmd, env)
    log = open(cfg.log_dir / "aiosd.log", "ab")
    launched = time.time()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, close_fds=True)
    log.close()
    return wait_ready(home, proc, args.timeout or cfg.start_timeout_s, launched)


def fresh_token(home: Path, since: float) -> bool:
    """Whether the new kernel has written its root token: a kernel that was SIGKILLed leaves
    its own behind, which the new kernel refuses. (The file system's clock is coarse, by a
    few milliseconds: hence the margin.)"""
    try:
        return (home / "run" / "root.token").stat().st_mtime >= since - 0.05
    except FileNotFoundError:
        return False


def wait_ready(home: Path, proc: subprocess.Popen, timeout: float, launched: float) -> int:
    deadline = time.time() + timeout
    client = None
    said = set()
    while time.time() < deadline:
        code = proc.poll()
        if code is not None:
            print(f"aiosd: the kernel exited with {code}: {tail(home / 'logs' / 'aiosd.log')}", file=sys.stderr)
            return 1
        if client is None and fresh_token(home, launched):
            client = root_client(home, timeout=5.0)
        if client is not None:
            try:
                st = client.syscall("sys_status")
            except AiosError as exc:
                if exc.code == "EACCES":
                    client = None  # read the token again
                time.sleep(0.1)
                continue
            states = {m["name"]: m["state"] for m in st["managers"]}
            fatal = [n for n, s in states.items() if s == "FATAL"]
            if fatal:
                print(f"aiosd: manager {fatal[0]} failed to start: {tail(home / 'logs' / (fatal[0] + '.log'))}",
                      file=sys.stderr)
                stop_pid(home, proc.pid, 10.0)
                return 1
            if all(s == "RUNNING" for s in states.values()):
                print(f"aiosd: started, pid {proc.pid}, home {home}")
                return 0
            waiting = sorted(n for n, s in states.items() if s != "RUNNING")
            if sys.stderr.isatty() and tuple(waiting) not in said:
                said.add(tuple(waiting))
                print(f"aiosd: waiting for {', '.join(waiting)}", file=sys.stderr)
        time.sleep(0.1)
    print(f"aiosd: not ready after {timeout:g} s; see {home}/logs", file=sys.stderr)
    stop_pid(home, proc.pid, 10.0)
    return 1


def tail(path: Path) -> str:
    """What went wrong, from a log: its last line that is not a traceback's frame or source
    (a manager that fails its start dies with a traceback), and where to read the rest."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    for ln in reversed(lines):
        if not ln.startswith((" ", "\t", "Traceback")):
            return f"{ln.removeprefix('aiosd.errors.AiosError: ')[-400:]} (see {path})"
    return f"see {path}"


def stop_pid(home: Path, pid: int, timeout: float) -> bool:
    try:
        root_client(home, timeout=2.0).syscall("sys_stop")
    except AiosError:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return True
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # its children follow it (PR_SET_PDEATHSIG)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        wpid, _ = os.waitpid(pid, os.WNOHANG)
        return wpid == 0
    except ChildProcessError:
        return os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def stop(args: argparse.Namespace) -> int:
    home = home_of(args)
    pid = daemon_pid(home)
    if pid is None or not locked(home):
        print(f"aiosd: not running on {home}", file=sys.stderr)
        return 0
    try:
        cfg = load(home=home)
    except AiosError:  # a config broken since the start must not keep the daemon from stopping
        cfg = Config(home=home)
    clean = stop_pid(home, pid, cfg.stop_timeout_s * 3 + 5)
    print("aiosd: stopped" if clean else "aiosd: stopped (killed after the timeout)")
    return 0


def status(args: argparse.Namespace) -> int:
    home = home_of(args)
    if daemon_pid(home) is None or not locked(home):
        print(f"aiosd: not running on {home}")
        return 3
    st = root_client(home, timeout=5.0).syscall("sys_status")
    print(f"{'kernel':<8} RUNNING   pid {st['pid']}, uptime {fmt_duration(st['uptime_s'])}")
    down = 0
    for m in st["managers"]:
        if m["state"] == "RUNNING":
            print(f"{m['name']:<8} RUNNING   pid {m['pid']}, uptime {fmt_duration(m['uptime_s'])}")
        else:
            down += 1
            extra = f"restarts {m['restarts']}, last exit {m['last_exit']}"
            print(f"{m['name']:<8} {m['state']:<9} {extra}")
    return 1 if down else 0


def set_settings(args: argparse.Namespace) -> int:
    settings = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise AiosError("EINVAL", f"'{item}' is not KEY=VALUE")
        settings[key.strip()] = value.strip()
    done = root_client(home_of(args)).syscall("sys_set", {"settings": settings})
    print(" ".join(f"{k}={v}" for k, v in done.items()))
    return 0


def execute(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "start":
        return start(args)
    if args.cmd == "stop":
        return stop(args)
    if args.cmd == "status":
        return status(args)
    if args.cmd == "set":
        return set_settings(args)
    if args.cmd == "restart":
        stop(args)
        return start(args)
    return 2


def main() -> int:
    return run_command("aiosd", execute)


if __name__ == "__main__":
    sys.exit(main())
