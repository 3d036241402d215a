"""Every agent syscall, with each argument at the edges its schema allows: the longest
strings (in ASCII and in 4-byte characters), the extreme numbers, empty and large
containers. Each call must be answered (a result or an errno-named error) and no manager
may die: a schema-valid value that some layer below cannot hold (an LMDB key over 511
bytes did) must be refused by that caller's error alone, not by a manager's restart.
"""

from __future__ import annotations

from secd import sec

from aiosd.schema import Arg
from aiosd.syscalls import TABLE
from libaios import AiosError

__all__ = ["sec"]

# calls that would stop, block or replace the caller itself, which the rest need alive
SKIP = {"spawn_agent", "set_status", "suspend_agent", "resume_agent", "kill_agent", "wait_agent"}
# a manager's failure, or no answer: never an acceptable answer to a schema-valid request
BROKEN = {"EIO", "ETIMEDOUT", "EUNAVAIL"}
EMOJI = "\U0001F600"


def least(a: Arg):
    """The plainest valid value: what the other arguments hold while one is at an edge."""
    if a.choices:
        return a.choices[0]
    return {"str": "x", "data": "x", "bytes": b"x", "int": int(a.min or 1), "float": float(a.min or 0.0),
            "bool": False, "list": [], "dict": {}, "strlist": "x", "any": "x"}[a.type]


def edges(a: Arg) -> list:
    n = a.max_len
    if a.choices:
        return list(a.choices)
    if a.type == "str":
        n = n or 4096
        return ["", "a" * n, EMOJI * n, "../" * (n // 3), "\0x", "a/" * (n // 2)]
    if a.type in ("int", "float"):
        lo = a.min if a.min is not None else -(2 ** 63)
        hi = a.max if a.max is not None else 2 ** 63 - 1
        return [int(lo), int(hi)] if a.type == "int" else [float(lo), float(hi) if a.max is not None else 1e308]
    if a.type in ("data", "bytes"):
        big = min(n or 1 << 20, 1 << 20)  # over the shared-memory threshold
        return [b"", b"\xff" * big] + (["", EMOJI * (big // 4)] if a.type == "data" else [])
    if a.type == "list":
        return [[], [None] * min(n or 1024, 1024), [{"k" * 600: "v" * 600}] * min(n or 8, 8)]
    if a.type == "dict":
        return [{}, {"k" * 1000: "v"}, {"a": {"b": [1, {"c": None, "d": b"\0"}]}}]
    if a.type == "strlist":
        return ["", ["x" * 1024] * (n or 16)]
    if a.type == "bool":
        return [True, False]
    return [None, 2 ** 63 - 1, {"a": [b"x"]}, "x" * 600]


def cases():
    # (this daemon has no llm worker: its calls are EUNAVAIL at the kernel)
    calls = [s for s in TABLE if s.privilege == "agent" and s.name not in SKIP and s.manager != "llm"]
    # quotas last: a quota of 0 first would answer every later write ENOSPC before its keys are looked at
    calls.sort(key=lambda s: s.name.endswith("_alloc"))
    for s in calls:
        base = {a.name: least(a) for a in s.args if a.required}
        for a in s.args:
            for v in edges(a):
                yield s.name, {**base, a.name: v}


def test_every_syscall_at_its_schemas_edges_is_answered_and_no_manager_dies(sec):
    before = {m["name"]: (m["pid"], m["restarts"]) for m in sec.root.syscall("sys_status")["managers"]}
    _, c = sec.agent("edges-" + "x" * 58)  # the longest name: namespaces and keys are made of it
    c.timeout = 60.0
    c.syscall("sto_write", {"path": "f", "data": b"some text to retrieve"})
    c.syscall("mem_write", {"content": "a record", "key": "k"})
    broken, n = [], 0
    for name, args in cases():
        n += 1
        try:
            c.syscall(name, args)
        except AiosError as exc:
            if exc.code in BROKEN:
                broken.append(f"{name}({_short(args)}): {exc.code} {exc}")
    after = {m["name"]: (m["pid"], m["restarts"]) for m in sec.root.syscall("sys_status")["managers"]}
    assert not broken, f"{len(broken)} of {n} calls broke:\n" + "\n".join(broken[:20])
    assert after == before
    assert c.syscall("sto_read", {"path": "f"})["data"] == b"some text to retrieve"


def _short(args: dict) -> str:
    return ", ".join(f"{k}={v!r:.40}" for k, v in args.items())
