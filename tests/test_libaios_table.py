"""libaios's wrappers against the kernel's syscall table: pure, no daemon.

The two must not drift: every public syscall has a wrapper whose parameters are exactly
the schema's argument names, and every wrapper names a public syscall.
"""

from __future__ import annotations

import inspect

import pytest

from aiosd.syscalls import SYSCALLS
from libaios import aio, calls

PUBLIC = sorted(s.name for s in SYSCALLS.public())


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_syscall_has_a_matching_wrapper(name: str) -> None:
    fn = getattr(calls, name, None)
    assert fn is not None, f"libaios.calls has no wrapper for {name}"
    params = set(inspect.signature(fn).parameters)
    schema = {a.name for a in SYSCALLS.lookup(name).args}
    assert params == schema, f"{name}: wrapper {sorted(params)} vs schema {sorted(schema)}"


def test_every_wrapper_is_a_public_syscall() -> None:
    internal = {s.name for s in SYSCALLS if s.privilege == "internal"}
    for name in calls.__all__:
        assert name in SYSCALLS, f"calls.{name} names no syscall"
        assert name not in internal, f"calls.{name} exposes an internal syscall"
    assert sorted(calls.__all__) == PUBLIC


def test_required_arguments_are_positional_and_optional_ones_default() -> None:
    for name in PUBLIC:
        sig = inspect.signature(getattr(calls, name))
        for arg in SYSCALLS.lookup(name).args:
            p = sig.parameters[arg.name]
            if arg.required:
                assert p.default is inspect.Parameter.empty, f"{name}({arg.name}) is required"
            else:
                assert p.default is not inspect.Parameter.empty, f"{name}({arg.name}) needs a default"


def test_pinned_signatures() -> None:
    """The keyword names and defaults DESIGN.md fixes."""
    p = inspect.signature(calls.llm_chat).parameters
    assert list(p)[:8] == ["messages", "max_tokens", "temperature", "top_p", "seed", "stop", "tools", "stream"]
    assert (p["max_tokens"].default, p["temperature"].default, p["top_p"].default) == (256, 0.0, 1.0)
    assert p["max_tokens"].kind is inspect.Parameter.KEYWORD_ONLY
    p = inspect.signature(calls.mem_write).parameters
    assert p["role"].default == "user" and p["key"].kind is inspect.Parameter.KEYWORD_ONLY
    p = inspect.signature(calls.mem_read).parameters
    assert list(p)[0] == "key" and p["last"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(calls.sto_list).parameters["prefix"].default == ""
    assert inspect.signature(calls.sto_retrieve).parameters["k"].default == 5
    assert inspect.signature(calls.mem_search).parameters["k"].default == 5
    assert list(inspect.signature(calls.tool_call).parameters)[:2] == ["name", "args"]


def test_async_flavour_covers_the_same_calls() -> None:
    for name in PUBLIC:
        fn = getattr(aio, name)
        assert inspect.iscoroutinefunction(fn), name
        assert inspect.signature(fn).parameters.keys() == inspect.signature(getattr(calls, name)).parameters.keys()

