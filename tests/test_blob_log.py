"""Version bytes as an append-only log (aiosd/blob_log.py): appends, dead versions and their
collection, reopening, and moving a database of the earlier layout into the log."""

from __future__ import annotations

import time

import lmdb
import msgpack
import pytest

from aiosd import storage_db
from aiosd.storage_db import StorageDB


@pytest.fixture
def db(tmp_path):
    d = StorageDB(tmp_path / "s.lmdb", map_size=1 << 22, versions_kept=3)
    yield d
    d.close()


def blob_keys(db: StorageDB) -> list[int]:
    with db.env.begin() as txn:
        return [int.from_bytes(k, "big") for k, _ in txn.cursor(db.db["blobs"])]


def dead_count(db: StorageDB) -> int:
    with db.env.begin() as txn:
        return txn.stat(db.db["dead"])["entries"]


def test_new_versions_append_and_dropped_ones_wait_for_collection(db):
    for i in range(1, 6):
        db.write_now(db.write_op("alice", "f", f"v{i}"))
    assert blob_keys(db) == [1, 2, 3, 4, 5]  # in write order, whatever the path
    assert dead_count(db) == db.blobs.backlog == 2  # versions 1 and 2 are no longer kept
    assert db.write_now(db.blobs.collect_op(1)) == {"collected": 1}
    assert blob_keys(db) == [2, 3, 4, 5]  # the oldest first
    db.write_now(db.blobs.collect_op())
    assert blob_keys(db) == [3, 4, 5] and dead_count(db) == db.blobs.backlog == 0
    assert [db.read("alice", "f", v)["data"] for v in (3, 4, 5)] == [b"v3", b"v4", b"v5"]


def test_delete_marks_every_version_dead(db):
    for i in range(3):
        db.write_now(db.write_op("alice", "a", f"a{i}"))
    db.write_now(db.write_op("alice", "b", "keep"))
    db.write_now(db.delete_op("alice", "a"))
    assert dead_count(db) == 3
    db.write_now(db.blobs.collect_op())
    assert blob_keys(db) == [4]
    assert db.read("alice", "b")["data"] == b"keep"


def test_reopening_continues_the_sequence(tmp_path):
    d = StorageDB(tmp_path / "s.lmdb", versions_kept=3)
    d.write_now(d.write_op("alice", "f", "one"))
    d.close()
    d = StorageDB(tmp_path / "s.lmdb", versions_kept=3)
    d.write_now(d.write_op("alice", "g", "two"))
    assert d.read("alice", "f")["data"] == b"one" and d.read("alice", "g")["data"] == b"two"
    d.close()


def test_write_batches_collect_once_the_backlog_is_large(db, monkeypatch):
    monkeypatch.setattr(storage_db, "GC_BACKLOG", 4)
    for i in range(10):
        db.write_now(db.write_op("alice", "f", f"v{i}"))
    # each batch frees up to 2 per write plus 16 once more than 4 are dead: never more than 4 wait
    assert dead_count(db) <= 4
    assert [db.read("alice", "f", v)["data"] for v in (8, 9, 10)] == [b"v7", b"v8", b"v9"]


def test_a_database_of_the_earlier_layout_is_moved_into_the_log(tmp_path):
    path = tmp_path / "s.lmdb"
    env = lmdb.open(str(path), max_dbs=12, subdir=True)
    files, versions = env.open_db(b"files"), env.open_db(b"versions")
    with env.begin(write=True) as txn:
        meta = {"v": 3, "kept": [2, 3], "sizes": [2, 2], "size": 4, "t": time.time()}
        txn.put(b"alice\0notes", msgpack.packb(meta), db=files)
        for v in (2, 3):
            txn.put(b"alice\0notes\0%010d" % v, b"n%d" % v, db=versions)
    env.close()
    d = StorageDB(path, versions_kept=2)
    assert d.read("alice", "notes") == {"data": b"n3", "version": 3}
    assert d.read("alice", "notes", 2)["data"] == b"n2"
    d.write_now(d.write_op("alice", "notes", "n4"))  # drops version 2, which the log now holds
    assert [v["version"] for v in d.versions("alice", "notes")] == [3, 4]
    with pytest.raises(lmdb.NotFoundError):
        d.env.open_db(b"versions", create=False)
    d.close()


def test_the_kernels_reader_reads_the_log(tmp_path):
    db = StorageDB(tmp_path / "s.lmdb")
    db.write_now(db.write_op("alice", "f", b"x" * 5000))  # over a page: an overflow value
    db.close()  # one process opens an environment once; the kernel is another process
    reader = storage_db.StorageReader.open_readonly(tmp_path / "s.lmdb")
    assert reader.read("alice", "f", max_size=1 << 20) == {"data": b"x" * 5000, "version": 1}
    with pytest.raises(storage_db.TooBig):
        reader.read("alice", "f", max_size=100)


def test_an_append_out_of_order_fails_the_batch_instead_of_losing_the_bytes(db):
    """LMDB answers an appended key that is not past the last one with a quiet False."""
    db.write_now(db.write_op("alice", "f", "one"))
    db.blobs.next_seq = 1  # as if the counter had gone wrong
    with pytest.raises(RuntimeError):
        db.write_now(db.write_op("alice", "f", "two"))
    assert db.read("alice", "f") == {"data": b"one", "version": 1}  # the batch changed nothing
