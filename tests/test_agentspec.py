"""What `aios-run AGENT` starts: pure resolution, no daemon."""

from __future__ import annotations

import os
import sys

import pytest

from aiosd.agentspec import resolve


def test_py_file_runs_under_this_python(tmp_path):
    f = tmp_path / "hello.py"
    f.write_text("print('hi')\n")
    os.chmod(f, 0o755)  # executable or not, a .py file is Python's
    argv, name = resolve(str(f), ["x"])
    assert argv == [sys.executable, str(f), "x"] and name == "hello"


def test_executable_path_runs_as_itself(tmp_path):
    f = tmp_path / "tool"
    f.write_text("#!/bin/sh\necho hi\n")
    os.chmod(f, 0o755)
    argv, name = resolve(str(f), ["-v"])
    assert argv == [str(f), "-v"] and name == "tool"
    argv, _ = resolve(sys.executable, ["-c", "pass"])  # a binary given by its path
    assert argv[0] == os.path.abspath(sys.executable)


def test_plain_path_without_x_bit_is_a_python_script(tmp_path):
    f = tmp_path / "script"
    f.write_text("print('hi')\n")
    os.chmod(f, 0o644)
    assert resolve(str(f), [])[0] == [sys.executable, str(f)]


def test_module_and_program_after_double_dash():
    assert resolve("json.tool", [])[0] == [sys.executable, "-m", "json.tool"]
    argv, name = resolve("sh", ["-c", "true"], executable=True)
    assert argv[1:] == ["-c", "true"] and name == "sh" and os.path.isabs(argv[0])


@pytest.mark.parametrize("agent", ["/no/such/file.py", "no_such_module_xyz", "not a module!"])
def test_unknown_agents_are_refused(agent):
    with pytest.raises(FileNotFoundError):
        resolve(agent, [])
