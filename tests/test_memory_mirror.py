"""mem_read by key answered by the kernel from the memory manager's mirror
(aiosd/memory_mirror.py), through a real daemon: the mirror is consistent with the manager
after writes, clears, eviction and a manager restart, and reads it answers keep LRU order.
Which component answered is shown by stopping the memory manager (SIGSTOP): the kernel's
answers still come, the manager's do not."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

import pytest

import libaios
from errutil import code_of
from aiosd.memory_store import MemoryStore


@contextmanager
def memory_stopped(d):
    pid = d.manager_pid("memory")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_kernel_answers_reads_by_key_while_the_manager_is_stopped(daemon):
    _, c = daemon.agent("mirror-stop")
    c.syscall("mem_write", {"content": b"v" * 1024, "key": "k", "metadata": {"m": 1}})
    direct = c.syscall("mem_read", {"last": 1})["records"]  # the manager's own answer
    with memory_stopped(daemon):
        assert c.syscall("mem_read", {"key": "k"}, timeout=5)["records"] == direct
        with pytest.raises(libaios.TimedOut):  # a range is the manager's: it must wait
            c.syscall("mem_read", {"last": 1}, timeout=0.5)


def test_reads_follow_writes_and_clears_at_once(daemon):
    _, c = daemon.agent("mirror-rw")
    for i in range(40):
        c.syscall("mem_write", {"content": f"value {i}", "key": "k"})
        assert c.syscall("mem_read", {"key": "k"})["records"][0]["content"] == f"value {i}"
    c.syscall("mem_clear", {"key": "k"})
    assert code_of(c.syscall, "mem_read", {"key": "k"}) == "ENOENT"


def test_evicted_records_come_back_and_kernel_reads_count_as_use(daemon):
    _, c = daemon.agent("mirror-lru", memory_quota=3 * 1200)  # three 1 KiB records fit
    for key in ("a", "b", "c"):
        c.syscall("mem_write", {"content": key.encode() * 1024, "key": key})
    c.syscall("mem_read", {"key": "a"})  # answered by the kernel: a is now the most recent
    time.sleep(0.3)  # the kernel passes its touches on within ~10 ms
    c.syscall("mem_write", {"content": b"d" * 1024, "key": "d"})  # evicts the least recent: b
    with memory_stopped(daemon):
        assert c.syscall("mem_read", {"key": "a"}, timeout=5)["records"][0]["content"] == b"a" * 1024
        with pytest.raises(libaios.TimedOut):  # b is in storage now: only the manager has it
            c.syscall("mem_read", {"key": "b"}, timeout=0.5)
    assert c.syscall("mem_read", {"key": "b"}, timeout=10)["records"][0]["content"] == b"b" * 1024


def test_a_restarted_manager_leaves_no_stale_mirror(make_daemon):
    d = make_daemon(managers=["storage", "memory"])
    _, c = d.agent("mirror-restart")
    c.syscall("mem_write", {"content": "before", "key": "k"})
    assert c.syscall("mem_read", {"key": "k"})["records"][0]["content"] == "before"
    old = d.manager_pid("memory")
    os.kill(old, signal.SIGKILL)
    d.wait_manager("memory", old, timeout=30)
    # memory did not survive its manager; nor may the mirror
    assert code_of(c.syscall, "mem_read", {"key": "k"}, timeout=10) == "ENOENT"
    c.syscall("mem_write", {"content": "after", "key": "k"})
    assert c.syscall("mem_read", {"key": "k"})["records"][0]["content"] == "after"


def test_watch_sees_every_change_of_resident_keyed_records():
    seen: list[tuple[int, str, object]] = []
    store = MemoryStore(3 * 1200, watch=lambda aid, key, rec: seen.append((aid, key, rec and rec["content"])))
    m = store.get(7)
    for key in ("a", "b", "c"):
        m.write(key * 1024, key=key)
    m.write("plain " * 100)  # no key: not mirrored itself, but it pushes out the oldest, a
    assert [(k, v is not None) for _, k, v in seen] == [("a", True), ("b", True), ("c", True), ("a", False)]
    seen.clear()
    found, missing = m.fetch([m.keys["a"]])
    assert missing == [m.keys["a"]]
    m.swap_in([{"id": m.keys["a"], "content": "a" * 1024, "key": "a", "role": "user"}])
    assert ("a", True) in [(k, v is not None) for _, k, v in seen]
    seen.clear()
    m.clear(key="c")
    assert seen == [(7, "c", None)]
    seen.clear()
    resident_keys = sorted(r["key"] for r in m.resident.values() if r.get("key"))
    assert resident_keys
    store.release(7)
    assert sorted(k for _, k, v in seen if v is None) == resident_keys and len(seen) == len(resident_keys)
