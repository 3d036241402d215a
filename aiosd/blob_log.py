"""The bytes of file versions, kept as an append-only log inside storage.lmdb.

Why a log: a sync costs in proportion to the pages a commit dirtied. Keyed by path, 16
agents' writes land on 16 scattered leaf pages, and dropping each file's oldest version
dirties as many more; the commit of a batch of 7 writes then syncs ~30 pages. Keyed by a
sequence number, every new version lands on the log's last page, and dropped versions
are only noted in `dead`; the pages they sit on are freed later, oldest first, many to a
page. On this machine that halves the time and the CPU of a synced batch (perf/README).

  blobs  seq(8, big-endian)  -> the bytes of one version (appended in key order)
  dead   seq(8)              -> b"" for a version no file keeps any more, until collected

A file's record in `files` lists the seq of each version it keeps, so a read is one more
lookup. Collection runs when the writer is idle, and inside write batches once the backlog
passes GC_BACKLOG, so dead bytes stay bounded under a writer that never pauses.
"""

from __future__ import annotations

import struct

import lmdb

GC_BACKLOG = 8192      # dead versions tolerated before write batches collect them too
GC_IDLE_BATCH = 512    # collected per transaction when the writer has nothing else to do
_SEQ = struct.Struct(">Q")


def bkey(seq: int) -> bytes:
    return _SEQ.pack(seq)


class BlobLog:
    """Appends, marks dead and collects version bytes; used only inside write transactions
    of the one writer (the storage manager), so its counters need no lock."""

    def __init__(self, env: lmdb.Environment, blobs, dead):
        self.blobs, self.dead = blobs, dead
        with env.begin() as txn:
            cur = txn.cursor(blobs)
            self.next_seq = _SEQ.unpack(cur.key())[0] + 1 if cur.last() else 1
            self.backlog = txn.stat(dead)["entries"]

    def append(self, txn, data: bytes) -> int:
        seq = self.next_seq
        # a transaction that aborts (map full, then retried) leaves a gap, never a reused key
        self.next_seq += 1
        if not txn.put(_SEQ.pack(seq), data, db=self.blobs, append=True):
            # LMDB refuses an appended key that is not past the last one, quietly: never
            # acknowledge a version whose bytes were not written
            raise RuntimeError(f"blob log out of order at {seq}")
        return seq

    def drop(self, txn, seqs: list[int]) -> None:
        for seq in seqs:
            txn.put(_SEQ.pack(seq), b"", db=self.dead)
        self.backlog += len(seqs)

    def collect(self, txn, limit: int) -> int:
        """Free the `limit` oldest dead versions; returns how many were freed."""
        cur = txn.cursor(self.dead)
        n = 0
        positioned = cur.first()
        while positioned and n < limit:
            txn.delete(cur.key(), db=self.blobs)
            cur.delete()  # and moves to the next key, or off the end (an empty key)
            n += 1
            positioned = bool(cur.key())
        self.backlog = txn.stat(self.dead)["entries"]
        return n

    def collect_op(self, limit: int = GC_IDLE_BATCH):
        """An op for the group-commit writer (see StorageDB.run_batch)."""
        def op(txn) -> dict:
            return {"collected": self.collect(txn, limit)}
        op.fails_before_writing = True
        return op


def migrate_versions(env: lmdb.Environment, files, log: BlobLog, unpack, pack, version_key) -> int:
    """Move a database of the earlier layout (bytes under `versions`, keyed by path and
    version) into the log, in one transaction; returns the number of files moved."""
    try:
        old = env.open_db(b"versions", create=False)
    except lmdb.NotFoundError:
        return 0
    moved = 0
    with env.begin(write=True) as txn:
        rows = [(bytes(k), unpack(v)) for k, v in txn.cursor(files)]
        for key, meta in rows:
            if "seqs" in meta:
                continue
            meta["seqs"] = [log.append(txn, txn.get(version_key(key, v), db=old) or b"") for v in meta["kept"]]
            txn.put(key, pack(meta), db=files)
            moved += 1
        txn.drop(old, delete=True)
    return moved
