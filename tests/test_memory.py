"""The memory manager through the real daemon: isolation, quotas, eviction and
transparent reload, search, release on exit."""

from __future__ import annotations

import os
import signal
import sys
import time

import lmdb

from aiosd import protocol

from errutil import code_of


def test_write_read_by_key_range_last(daemon):
    _, c = daemon.agent("mem-basic")
    ids = [c.syscall("mem_write", {"content": f"turn {i}", "role": "user"})["id"] for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert [r["content"] for r in c.syscall("mem_read", {"last": 2})["records"]] == ["turn 3", "turn 4"]
    assert [r["id"] for r in c.syscall("mem_read", {"start": 2, "end": 4})["records"]] == [2, 3]
    c.syscall("mem_write", {"content": "blue", "key": "colour", "metadata": {"src": "chat"}})
    rec = c.syscall("mem_read", {"key": "colour"})["records"][0]
    assert rec["content"] == "blue" and rec["metadata"] == {"src": "chat"} and {"id", "role", "time"} <= set(rec)
    c.syscall("mem_clear", {"record": 1})
    c.syscall("mem_clear", {"key": "colour"})
    assert code_of(c.syscall, "mem_read", {"key": "colour"}) == "ENOENT"
    assert [r["id"] for r in c.syscall("mem_read", {})["records"]] == [2, 3, 4, 5]
    c.syscall("mem_clear", {"all": True})
    assert c.syscall("mem_read", {})["records"] == []


def test_isolation_eacces_until_granted(daemon):
    a_aid, alice = daemon.agent("mem-alice")
    b_aid, bob = daemon.agent("mem-bob")
    alice.syscall("mem_write", {"content": "alice's diary"})
    assert bob.syscall("mem_read", {})["records"] == []
    assert code_of(bob.syscall, "mem_read", {"aid": a_aid}) == "EACCES"
    assert code_of(bob.syscall, "mem_search", {"query": "diary", "aid": a_aid}) == "EACCES"
    assert code_of(bob.syscall, "mem_clear", {"all": True, "aid": a_aid}) == "EACCES"
    alice.syscall("grant", {"grantee": b_aid, "resource": "memory", "rights": "r"})
    assert [r["content"] for r in bob.syscall("mem_read", {"aid": a_aid})["records"]] == ["alice's diary"]
    assert code_of(bob.syscall, "mem_clear", {"all": True, "aid": a_aid}) == "EACCES"


def test_quota_fail_policy_enomem(make_daemon):
    d = make_daemon(managers=["storage", "memory"], memory_policy="fail")
    _, c = d.agent("mem-fail", memory_quota=10000)  # the ceiling mem_alloc may raise to
    c.syscall("mem_alloc", {"size": 2000})
    c.syscall("mem_write", {"content": "x" * 900})
    c.syscall("mem_write", {"content": "x" * 900})
    assert code_of(c.syscall, "mem_write", {"content": "x" * 900}) == "ENOMEM"
    assert len(c.syscall("mem_read", {})["records"]) == 2
    c.syscall("mem_alloc", {"size": 10000})
    c.syscall("mem_write", {"content": "x" * 900})


def test_eviction_and_transparent_reload(daemon):
    _, c = daemon.agent("mem-evict", memory_quota=4096)
    payloads = [f"{i:04d}".encode() * 256 for i in range(12)]  # 1 KiB each: 12 KiB through 4 KiB
    for p in payloads:
        c.syscall("mem_write", {"content": p})
    recs = c.syscall("mem_read", {})["records"]
    assert [r["content"] for r in recs] == payloads  # the swapped-out ones came back from storage
    assert c.syscall("mem_read", {"start": 1, "end": 2})["records"][0]["content"] == payloads[0]
    c.syscall("mem_clear", {"all": True})
    assert c.syscall("mem_read", {})["records"] == []
    assert code_of(c.syscall, "mem_write", {"content": b"y" * 8192}) == "ENOMEM"  # alone over quota


def test_search_finds_relevant_record(daemon):
    _, c = daemon.agent("mem-search")
    for text in ("My favourite colour is green.", "I am allergic to peanuts.", "The meeting moved to Friday.",
                 "Our cat is called Miso."):
        c.syscall("mem_write", {"content": text})
    out = c.syscall("mem_search", {"query": "what food must I avoid?", "k": 2}, timeout=120)["records"]
    assert out[0]["content"] == "I am allergic to peanuts." and len(out) == 2
    assert out[0]["score"] >= out[1]["score"]


def test_memory_released_on_exit_and_persisted(daemon):
    aid, c = daemon.agent("mem-exit", argv=[sys.executable, "-c", "import time; time.sleep(3)"])
    c.syscall("mem_persist", {"on_exit": True})
    c.syscall("mem_write", {"content": "keep me"})
    daemon.root.syscall("wait_agent", {"aid": aid, "timeout": 30})
    key = b"persist:mem-exit\0" + f"{aid:012d}".encode()
    env = lmdb.open(str(daemon.home / "data" / "storage.lmdb"), readonly=True, lock=True, max_dbs=16)
    try:
        deadline, raw = time.time() + 30, None
        while raw is None and time.time() < deadline:
            with env.begin() as txn:
                raw = txn.get(key, db=env.open_db(b"history", txn=txn, create=False))
            time.sleep(0.05)
    finally:
        env.close()
    assert raw is not None
    assert [r["content"] for r in protocol.unpack(raw, 1 << 24)] == ["keep me"]
    _, again = daemon.agent("mem-exit")  # memory belongs to a run: a new one starts empty
    assert again.syscall("mem_read", {})["records"] == []
    again.syscall("mem_write", {"content": "replaced by the restore"})
    assert again.syscall("mem_restore", {}) == {"records": 1, "from_aid": aid}
    assert [r["content"] for r in again.syscall("mem_read", {})["records"]] == ["keep me"]
    # no agent of this name persisted anything
    assert code_of(daemon.agent("never-persisted")[1].syscall, "mem_restore", {}) == "ENOENT"


def test_restore_takes_the_latest_persisted_run_of_the_name_only(daemon):
    for content in ("first run", "second run"):
        aid, c = daemon.agent("mem-runs", argv=[sys.executable, "-c", "import time; time.sleep(60)"])
        c.syscall("mem_persist", {"on_exit": True})
        c.syscall("mem_write", {"content": content, "key": "note"})
        daemon.root.syscall("kill_agent", {"aid": aid, "signal": "TERM"})
        daemon.root.syscall("wait_agent", {"aid": aid, "timeout": 30})
    # no waiting: the kernel sends memory the exit before it answers wait_agent, and memory
    # serves the next call only once the exited agent's records are committed
    _, c = daemon.agent("mem-runs")
    assert c.syscall("mem_restore", {}) == {"records": 1, "from_aid": aid}
    # a name that begins with the first one's has nothing of it
    assert code_of(daemon.agent("mem-runs-other")[1].syscall, "mem_restore", {}) == "ENOENT"
    assert c.syscall("mem_read", {"key": "note"})["records"][0]["content"] == "second run"


def test_only_the_last_persist_kept_runs_of_a_name_are_kept(make_daemon):
    d = make_daemon(managers="storage,memory", persist_kept=2)
    aids = []
    for run in range(4):
        aid, c = d.agent("mem-kept", argv=[sys.executable, "-c", "import time; time.sleep(60)"])
        c.syscall("mem_persist", {"on_exit": True})
        c.syscall("mem_write", {"content": f"run {run}"})
        d.root.syscall("kill_agent", {"aid": aid, "signal": "TERM"})
        d.root.syscall("wait_agent", {"aid": aid, "timeout": 30})
        aids.append(aid)
    _, c = d.agent("mem-kept")  # served after the last exit's records are committed (see above)
    assert c.syscall("mem_restore", {})["from_aid"] == aids[-1]
    assert persisted_aids(d.home, "mem-kept") == aids[-2:]


def persisted_aids(home, name: str) -> list[int]:
    env = lmdb.open(str(home / "data" / "storage.lmdb"), readonly=True, max_dbs=16, lock=True)
    try:
        with env.begin(db=env.open_db(b"history", create=False)) as txn:
            prefix = f"persist:{name}\0".encode()
            cur = txn.cursor()
            keys = cur.iternext(values=False) if cur.set_range(prefix) else ()
            return [int(k[len(prefix):]) for k in keys if k.startswith(prefix)]
    finally:
        env.close()


def swapped_records(home) -> int:
    env = lmdb.open(str(home / "data" / "storage.lmdb"), readonly=True, max_dbs=16, lock=True)
    try:
        with env.begin(db=env.open_db(b"history", create=False)) as txn:
            cur = txn.cursor()
            return sum(1 for k in (cur.iternext(values=False) if cur.set_range(b"mem:") else ())
                       if k.startswith(b"mem:"))
    finally:
        env.close()


def test_records_swapped_out_by_a_killed_memory_manager_do_not_stay_on_disk(make_daemon):
    d = make_daemon(managers="storage,memory")
    _, c = d.agent("mem-orphans", memory_quota=4096)
    for i in range(12):
        c.syscall("mem_write", {"content": f"{i:04d}".encode() * 256})  # 12 KiB through 4 KiB
    assert swapped_records(d.home) >= 8
    old = d.manager_pid("memory")
    os.kill(old, signal.SIGKILL)
    d.wait_manager("memory", old)
    deadline = time.time() + 10  # the new manager drops them before it serves anything
    while swapped_records(d.home) and time.time() < deadline:
        time.sleep(0.1)
    assert swapped_records(d.home) == 0
    assert c.syscall("mem_write", {"content": "after"})["id"] == 1  # and starts empty, as before
