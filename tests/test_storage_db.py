"""The LMDB layer directly, in a temporary directory: paths, versions, quotas, group commit."""

from __future__ import annotations

import time

import pytest

from aiosd import protocol
from aiosd.audit import AuditBuffer
from aiosd.errors import AiosError
from aiosd.group_commit import GroupCommitWriter
from aiosd.storage_db import StorageDB
from aiosd.storage_raw import prefix_end
from aiosd.storage_paths import MAX_PATH, check_path


@pytest.fixture
def db(tmp_path):
    d = StorageDB(tmp_path / "s.lmdb", map_size=1 << 20, versions_kept=3, default_quota=1 << 20)
    yield d
    d.close()


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../b", "a/..", "a\0b", "x" * 1025,
                                 "a//b", "./a", "\\abs", "a\\..\\b"])
def test_bad_paths_are_einval(bad):
    with pytest.raises(AiosError) as e:
        check_path(bad)
    assert e.value.code == "EINVAL"


def test_good_paths():
    for ok in ("a", "notes/today.txt", "a.b/c..d", "x" * MAX_PATH):
        assert check_path(ok) == ok
    with pytest.raises(AiosError):  # past what an LMDB key can hold with a version's suffix
        check_path("x" * (MAX_PATH + 1))
    assert check_path("", prefix=True) == ""
    assert check_path("notes/", prefix=True) == "notes/"


def test_versions_kept_and_read(db):
    for i in range(1, 6):
        assert db.write_now(db.write_op("alice", "f.txt", f"v{i}"))["version"] == i
    assert db.read("alice", "f.txt") == {"data": b"v5", "version": 5}
    assert db.read("alice", "f.txt", 3)["data"] == b"v3"
    assert [v["version"] for v in db.versions("alice", "f.txt")] == [3, 4, 5]
    with pytest.raises(AiosError) as e:
        db.read("alice", "f.txt", 1)
    assert e.value.code == "ENOENT"
    assert db.usage("alice")["used"] == 6  # three kept versions of two bytes


def test_namespaces_are_separate_and_list(db):
    db.write_now(db.write_op("alice", "notes/a", b"1"))
    db.write_now(db.write_op("alice", "notes/b", b"2"))
    db.write_now(db.write_op("alice", "other", b"3"))
    db.write_now(db.write_op("bob", "notes/a", b"bob"))
    assert db.list("alice", "notes/") == ["notes/a", "notes/b"]
    assert db.list("alice") == ["notes/a", "notes/b", "other"]
    assert db.read("bob", "notes/a")["data"] == b"bob"
    with pytest.raises(AiosError):
        db.read("carol", "notes/a")


def test_delete_frees_quota(db):
    db.write_now(db.write_op("a", "f", b"x" * 100))
    db.write_now(db.write_op("a", "f", b"x" * 50))
    assert db.usage("a")["used"] == 150
    db.write_now(db.delete_op("a", "f"))
    assert db.usage("a")["used"] == 0 and db.list("a") == []
    with pytest.raises(AiosError) as e:
        db.write_now(db.delete_op("a", "f"))
    assert e.value.code == "ENOENT"


def test_quota_enospc_changes_nothing(db):
    db.write_now(db.set_quota_op("a", 100))
    db.write_now(db.write_op("a", "f", b"x" * 80))
    with pytest.raises(AiosError) as e:
        db.write_now(db.write_op("a", "g", b"x" * 30))
    assert e.value.code == "ENOSPC"
    assert db.list("a") == ["f"] and db.usage("a")["used"] == 80
    with pytest.raises(AiosError):
        db.write_now(db.set_quota_op("a", 10))


def test_map_grows_when_full(db):
    big = b"z" * (300 << 10)
    db.write_now(db.set_quota_op("a", 1 << 30))
    for i in range(8):  # 2.4 MiB through a 1 MiB map
        db.write_now(db.write_op("a", f"f{i}", big))
    assert db.env.info()["map_size"] > 1 << 20
    assert db.read("a", "f7")["data"] == big


def test_group_commit_one_transaction_per_flush(db):
    w = GroupCommitWriter(db, group=True)
    db.write_now(db.set_quota_op("small", 10))
    for i in range(20):
        w.submit(i, db.write_op(f"ns{i % 4}", f"f{i}", b"d%d" % i))
    w.submit("over", db.write_op("small", "f", b"x" * 11))
    before = db.commits
    done = w.flush()
    assert db.commits == before + 1 and len(w) == 0
    assert [t for t, _ in done] == list(range(20)) + ["over"]
    assert all(r["version"] == 1 for _, r in done[:20])
    assert isinstance(done[-1][1], AiosError) and done[-1][1].code == "ENOSPC"
    assert db.read("ns3", "f7")["data"] == b"d7"
    assert db.list("small") == []


def test_collect_commits_what_is_queued_as_one_batch(db):
    """The manager's loop queues what one drain received, then collects: one transaction for
    all of it, answered in arrival order; what is queued afterwards is the next batch."""
    w = GroupCommitWriter(db, group=True, max_batch=4)
    before = db.commits
    assert w.collect() == [] and db.commits == before  # nothing queued: no empty transaction
    for i in range(6):
        w.submit(i, db.write_op("a", f"f{i}", b"x%d" % i))
    assert [t for t, _ in w.collect()] == [0, 1, 2, 3]  # max_batch bounds one transaction
    assert db.commits == before + 1 and len(w) == 2 and not w.idle
    w.submit(6, db.write_op("a", "f6", b"x6"))
    assert [t for t, _ in w.collect()] == [4, 5, 6]
    assert db.commits == before + 2 and w.idle
    assert db.read("a", "f6")["data"] == b"x6"


def test_a_failing_commit_reaches_the_caller(db):
    w = GroupCommitWriter(db, group=True)

    def broken(txn):
        raise OSError("disk on fire")

    w.submit("x", broken)
    with pytest.raises(OSError, match="disk on fire"):
        w.flush()
    w.submit("y", db.write_op("a", "ok", b"1"))  # the writer still works afterwards
    assert [t for t, _ in w.flush()] == ["y"]


def test_per_write_mode_commits_each(db):
    w = GroupCommitWriter(db, group=False)
    for i in range(5):
        w.submit(i, db.write_op("a", f"f{i}", b"x"))
    before = db.commits
    w.flush()
    assert db.commits == before + 5


def test_audit_append_order_and_query(tmp_path):
    db = StorageDB(tmp_path / "a", map_size=1 << 22)
    recs = [{"t": 100.0 + i, "aid": i % 2, "name": f"n{i % 2}", "call": "mem_read" if i % 3 else "sto_write"}
            for i in range(30)]
    db.write_now(db.audit_op(recs[:10]))
    db.write_now(db.audit_op(recs[10:]))
    db.close()
    db = StorageDB(tmp_path / "a", map_size=1 << 22)  # reopened: keys keep growing
    db.write_now(db.audit_op([{"t": 200.0, "aid": 1, "name": "n1", "call": "x"}]))
    allr = db.audit_query(limit=1000)
    assert [r["t"] for r in allr] == [r["t"] for r in recs] + [200.0]
    assert [r["t"] for r in db.audit_query(aid=1, limit=3)] == [127.0, 129.0, 200.0]
    assert all(r["call"] == "sto_write" for r in db.audit_query(call="sto_write"))
    assert [r["t"] for r in db.audit_query(since=125.0, until=128.5)] == [125.0, 126.0, 127.0, 128.0]
    assert db.audit_query(name="n0", limit=1)[0]["t"] == 128.0
    db.close()


def test_audit_is_pruned_oldest_first_past_a_count_or_an_age(tmp_path):
    db = StorageDB(tmp_path / "a", map_size=1 << 22)
    db.write_now(db.audit_op([{"t": float(i), "call": "x"} for i in range(30)]))
    assert db.audit.over(20, 0) and not db.audit.over(30, 0) and not db.audit.over(0, 0)
    assert db.write_now(db.audit.prune_op(20, 0, limit=4)) == {"pruned": 4}  # a chunk at a time
    assert db.write_now(db.audit.prune_op(20, 0, limit=100)) == {"pruned": 6}
    assert not db.audit.over(20, 0)
    assert [r["t"] for r in db.audit_query()] == [float(i) for i in range(10, 30)]
    # by age: the keys' own times, so records that say they are old but arrived now stay
    assert not db.audit.over(0, 60.0)
    time.sleep(1.0)
    db.write_now(db.audit_op([{"t": 99.0, "call": "y"}]))
    assert db.audit.over(0, 0.5)
    assert db.write_now(db.audit.prune_op(0, 0.5, limit=100)) == {"pruned": 20}
    assert [r["t"] for r in db.audit_query()] == [99.0] and not db.audit.over(0, 0.5)
    time.sleep(0.6)  # now every record is past the age: all go, and the cursor runs off the end
    assert db.write_now(db.audit.prune_op(0, 0.5, limit=100)) == {"pruned": 1}
    assert db.audit_query() == [] and not db.audit.over(0, 0.5) and not db.audit.over(5, 0)
    db.write_now(db.audit_op([{"t": 100.0, "call": "z"}]))  # and appending goes on after
    assert [r["t"] for r in db.audit_query()] == [100.0]
    db.close()


def test_audit_records_arrive_packed_and_a_bad_one_does_not_break_queries(db):
    """The kernel's AuditBuffer sends records packed; storage appends the bytes as they are."""
    buf = AuditBuffer()
    buf.add({"t": 1.0, "aid": 3, "name": "p", "call": "sto_read", "code": "OK"})
    buf.add({"t": 2.0, "aid": 4, "name": "q", "call": "sto_write", "code": "OK"})
    packed = buf.take()
    assert all(isinstance(r, bytes) for r in packed) and not buf.records
    db.write_now(db.audit_op([*packed, b"\xc1 not msgpack", protocol.pack([1, 2])]))
    recs = db.audit_query(limit=10)
    assert [(r["aid"], r["call"]) for r in recs[:2]] == [(3, "sto_read"), (4, "sto_write")]
    assert [r["code"] for r in recs[2:]] == ["EBADMSG", "EBADMSG"]
    assert [r["aid"] for r in db.audit_query(aid=4)] == [4]

def test_raw_dbs(db):
    db.write_now(db.raw_put_op("snapshots", b"k1", {"a": b"kv"}))
    assert db.raw_get("snapshots", b"k1") == {"a": b"kv"}
    db.write_now(db.raw_put_op("snapshots", b"k1", None))
    with pytest.raises(AiosError) as e:
        db.raw_get("snapshots", b"k1")
    assert e.value.code == "ENOENT"
    with pytest.raises(AiosError) as e:
        db.raw_put_op("files", b"x", 1)
    assert e.value.code == "EINVAL"


def test_raw_drop_deletes_a_prefix_and_nothing_else(tmp_path):
    db = StorageDB(tmp_path / "s.lmdb")
    for k in (b"mem:1:1", b"mem:1:2", b"mem:9:1", b"mek", b"persist:a:1"):
        db.write_now(db.raw_put_op("history", k, {"k": k}))
    assert db.write_now(db.raw_drop_op("history", b"mem:")) == {"deleted": 3}
    assert db.raw_get("history", b"mek") == {"k": b"mek"} and db.raw_get("history", b"persist:a:1")
    assert db.write_now(db.raw_drop_op("history", b"mem:")) == {"deleted": 0}
    with pytest.raises(AiosError):
        db.raw_drop_op("history", b"")
    with pytest.raises(AiosError):
        db.raw_drop_op("files", b"x")


def test_raw_drop_can_keep_the_greatest_keys_under_the_prefix(tmp_path):
    db = StorageDB(tmp_path / "s.lmdb")
    for k in (b"p:a\0001", b"p:a\0002", b"p:a\0003", b"p:a\0004", b"p:ab\0001", b"q"):
        db.write_now(db.raw_put_op("history", k, 1))
    assert db.write_now(db.raw_drop_op("history", b"p:a\0", keep=2)) == {"deleted": 2}
    assert [k for k, _ in db.raw_scan("history", b"")] == [b"p:a\0003", b"p:a\0004", b"p:ab\0001", b"q"]
    assert db.write_now(db.raw_drop_op("history", b"p:a\0", keep=2)) == {"deleted": 0}
    assert db.write_now(db.raw_drop_op("history", b"p:a\0", keep=5)) == {"deleted": 0}
    assert db.write_now(db.raw_drop_op("history", b"p:a\0", keep=1)) == {"deleted": 1}
    assert db.raw_last("history", b"p:a\0")[0] == b"p:a\0004"


def test_raw_last_is_the_greatest_key_under_a_prefix(tmp_path):
    db = StorageDB(tmp_path / "s.lmdb")
    assert prefix_end(b"ab\xff") == b"ac" and prefix_end(b"\xff") == b""
    keys = [b"p:a\x00" + n for n in (b"001", b"009", b"010")] + [b"p:ab\x00099", b"p:b\x00001"]
    for k in keys:
        db.write_now(db.raw_put_op("history", k, {"k": k}))
    assert db.raw_last("history", b"p:a\x00") == (b"p:a\x00010", {"k": b"p:a\x00010"})
    assert db.raw_last("history", b"p:b\x00")[0] == b"p:b\x00001"  # the database's last key
    db.write_now(db.raw_put_op("history", b"p:\xff\xff", 1))
    assert db.raw_last("history", b"p:\xff")[0] == b"p:\xff\xff"  # nothing sorts past its range
    for prefix in (b"p:c\x00", b"p:a\x00\xff", b"q", b"o"):
        with pytest.raises(AiosError) as e:
            db.raw_last("history", prefix)
        assert e.value.code == "ENOENT"


def test_usage_rows_of_one_namespace_and_of_all(tmp_path):
    db = StorageDB(tmp_path / "s.lmdb", default_quota=1000)
    db.write_now(db.write_op("a", "x/1", b"12345"))
    db.write_now(db.write_op("a", "x/2", b"12"))
    db.write_now(db.write_op("ab", "y", b"1"))  # a name that begins with another's
    assert db.usage_rows("a") == [{"name": "a", "used": 7, "quota": 1000, "files": 2}]
    assert db.usage_rows() == [{"name": "a", "used": 7, "quota": 1000, "files": 2},
                               {"name": "ab", "used": 1, "quota": 1000, "files": 1}]
    assert db.usage_rows("never") == [{"name": "never", "used": 0, "quota": 1000, "files": 0}]


def test_agent_snapshots_charge_the_quota_list_by_header_and_delete(tmp_path):
    db = StorageDB(tmp_path / "s.lmdb", default_quota=10_000)
    snap = {"id": "s1", "label": "l", "time": 5.0, "aid": 3, "n_records": 0, "n_files": 1, "charged": True,
            "memory": [], "context": None, "files": {"f": b"x" * 6000}}
    size = db.write_now(db.snapshot_put_op("a", "s1", snap))["bytes"]
    assert db.usage("a")["used"] == size > 6000
    with pytest.raises(AiosError) as e:
        db.write_now(db.snapshot_put_op("a", "s2", {**snap, "id": "s2"}))
    assert e.value.code == "ENOSPC" and [r["snapshot"] for r in db.snapshot_list("a")] == ["s1"]
    assert db.snapshot_list("a") == [{"snapshot": "s1", "label": "l", "time": 5.0, "aid": 3, "records": 0,
                                      "files": 1, "bytes": size}]
    assert db.snapshot_list("ab") == [] and db.snapshot_get("a", "s1")["files"] == {"f": b"x" * 6000}
    assert db.write_now(db.snapshot_delete_op("a", "s1")) == {"deleted": "s1", "bytes": size}
    assert db.usage("a")["used"] == 0 and db.snapshot_list("a") == []
    with pytest.raises(AiosError) as e:
        db.snapshot_get("a", "s1")
    assert e.value.code == "ENOENT"
    # one taken before snapshots counted gives nothing back when deleted
    db.write_now(db.write_op("a", "f", b"y" * 100))
    old = {"id": "s0", "label": "", "time": 1.0, "aid": 3, "memory": [], "context": None, "files": {}}
    with db.env.begin(write=True) as txn:
        txn.put(b"a\0s0", protocol.pack(old), db=db.db["agent_snaps"])
    assert db.snapshot_list("a")[0]["files"] is None  # no counts in its header
    db.write_now(db.snapshot_delete_op("a", "s0"))
    assert db.usage("a")["used"] == 100



def test_raw_trim_keeps_the_newest_keys(tmp_path):
    db = StorageDB(tmp_path / "s.lmdb")
    for aid in range(1, 11):
        db.write_now(db.raw_put_op("procs", aid.to_bytes(8, "big"), {"aid": aid}))
    assert db.raw_count("procs") == 10
    assert db.write_now(db.raw_trim_op("procs", 4, limit=5)) == {"pruned": 5}  # a chunk at a time
    assert db.write_now(db.raw_trim_op("procs", 4, limit=5)) == {"pruned": 1}
    assert [k for k, _ in db.raw_scan("procs", b"")] == [a.to_bytes(8, "big") for a in range(7, 11)]
    assert db.write_now(db.raw_trim_op("procs", 0, limit=100)) == {"pruned": 3}  # the newest stays
    assert db.raw_count("procs") == 1
