"""sto_read, sto_list and sto_versions are served by the kernel from a read-only view of the
storage LMDB (aiosd/kernel_reads.py): they see every acknowledged write, keep the access
checks and the audit of every call, follow the writer's map growth, and big values still
go through the storage manager. Batched frames between kernel and managers: unit checks."""

from __future__ import annotations

import os
import signal
import time

import pytest

from aiosd import protocol
from aiosd.errors import AiosError as WireError
from aiosd.kernel_reads import MAX_LOCAL_READ
from errutil import code_of


def test_reads_answered_while_storage_is_stopped(daemon):
    _, alice = daemon.agent("kr-alice")
    bob_aid, bob = daemon.agent("kr-bob")
    for i in range(1, 4):
        assert alice.syscall("sto_write", {"path": "doc", "data": f"v{i}"})["version"] == i
    pid = daemon.manager_pid("storage")
    os.kill(pid, signal.SIGSTOP)  # nothing below may need the storage process
    try:
        assert alice.syscall("sto_read", {"path": "doc"}, timeout=5) == {"data": b"v3", "version": 3}
        assert alice.syscall("sto_read", {"path": "doc", "version": 2}, timeout=5)["data"] == b"v2"
        assert alice.syscall("sto_list", {}, timeout=5)["paths"] == ["doc"]
        versions = alice.syscall("sto_versions", {"path": "doc"}, timeout=5)["versions"]
        assert [v["version"] for v in versions] == [1, 2, 3]
        assert code_of(alice.syscall, "sto_read", {"path": "nope"}, timeout=5) == "ENOENT"
        assert code_of(alice.syscall, "sto_read", {"path": "../x"}, timeout=5) == "EINVAL"
        # isolation is the kernel's own check: no grant, no read of another namespace
        assert code_of(bob.syscall, "sto_read", {"path": "doc", "owner": "kr-alice"}, timeout=5) == "EACCES"
        assert code_of(bob.syscall, "sto_list", {"owner": "kr-alice"}, timeout=5) == "EACCES"
        assert bob.syscall("sto_list", {}, timeout=5)["paths"] == []
    finally:
        os.kill(pid, signal.SIGCONT)
    alice.syscall("grant", {"resource": "storage", "grantee": "name:kr-bob", "rights": "r"})
    assert bob.syscall("sto_read", {"path": "doc", "owner": "kr-alice"})["data"] == b"v3"
    # every one of those reads is in the audit log, refusals included
    deadline = time.time() + 5
    while time.time() < deadline:  # the kernel hands audit records to storage every 50 ms
        recs = daemon.root.syscall("audit_query", {"aid": bob_aid, "call": "sto_read"})["records"]
        if len(recs) >= 2:
            break
        time.sleep(0.1)
    assert [r["code"] for r in recs] == ["EACCES", "OK"]
    assert all(r["digest"] and r["latency_s"] >= 0 for r in recs)


def test_write_then_read_from_many_threads_sees_every_write(daemon):
    """A read begun after the write's answer sees it: no stale kernel-side snapshot."""
    _, c = daemon.agent("kr-fresh")
    for i in range(200):
        c.syscall("sto_write", {"path": "counter", "data": str(i)})
        assert c.syscall("sto_read", {"path": "counter"})["data"] == str(i).encode()


def test_big_value_goes_through_storage(daemon):
    _, c = daemon.agent("kr-big")
    blob = os.urandom(MAX_LOCAL_READ + 1)
    c.syscall("sto_write", {"path": "big", "data": blob})
    pid = daemon.manager_pid("storage")
    os.kill(pid, signal.SIGSTOP)
    try:  # over the limit the kernel forwards it, so a stopped storage cannot answer
        assert code_of(c.syscall, "sto_read", {"path": "big"}, timeout=1.0) == "ETIMEDOUT"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert c.syscall("sto_read", {"path": "big"})["data"] == blob


def test_kernel_reader_follows_map_growth(make_daemon):
    d = make_daemon(storage_map_size=1 << 20)
    _, c = d.agent("kr-grow")
    blobs = {f"f{i}": os.urandom(48 * 1024) for i in range(48)}  # ~2.3 MB: the map doubles twice
    for path, blob in blobs.items():
        c.syscall("sto_write", {"path": path, "data": blob})
        assert c.syscall("sto_read", {"path": path})["data"] == blob
    for path, blob in blobs.items():
        assert c.syscall("sto_read", {"path": path})["data"] == blob


def test_batch_frames_round_trip():
    a, b = protocol.pack({"id": 1, "call": "x"}), protocol.pack({"id": 2, "r": protocol.ShmRef("aios-ab", 3)})
    assert protocol.join_bodies([a]) == a
    assert protocol.unpack_frame(a) == ([{"id": 1, "call": "x"}], False)
    msgs, refs = protocol.unpack_frame(protocol.join_bodies([a, b, a]))
    assert [m["id"] for m in msgs] == [1, 2, 1] and refs


@pytest.mark.parametrize("bad", [protocol.BATCH + b"\xc1", protocol.BATCH + b"\x82\xa1a", protocol.BATCH])
def test_bad_batch_is_eproto(bad):
    if bad == protocol.BATCH:  # an empty batch is no message at all, not an error
        assert protocol.unpack_frame(bad) == ([], False)
        return
    with pytest.raises(WireError) as e:
        protocol.unpack_frame(bad)
    assert e.value.code == "EPROTO"
