"""What `aios-run AGENT` and `spawn_agent` start: a module, a .py file, or an executable."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def resolve(agent: str, args: list[str], executable: bool = False) -> tuple[list[str], str]:
    """Return (argv, default name). `executable` forces AGENT to be a program (after `--`)."""
    if executable:
        path = shutil.which(agent) or agent
        return [path, *args], os.path.basename(agent)
    if agent.endswith(".py") or os.path.sep in agent:
        if not os.path.exists(agent):
            raise FileNotFoundError(f"no such agent file: {agent}")
        stem = os.path.splitext(os.path.basename(agent.rstrip("/")))[0]
        if not agent.endswith(".py") and os.path.isfile(agent) and os.access(agent, os.X_OK):
            # an executable named by its path runs as itself, as in a shell: a binary or a
            # script with its own #! line (handing a binary to Python fails on its bytes)
            return [os.path.abspath(agent), *args], stem
        return [sys.executable, os.path.abspath(agent), *args], stem
    if _MODULE.match(agent):
        try:
            found = importlib.util.find_spec(agent)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise FileNotFoundError(f"no agent module named {agent} (a program goes after --)")
        return [sys.executable, "-m", agent, *args], agent.rsplit(".", 1)[-1]
    raise FileNotFoundError(f"'{agent}' is neither a module nor a .py file (a program goes after --)")
