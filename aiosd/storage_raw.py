"""The raw sub-databases of storage.lmdb (history, snapshots, procs, index):
msgpack values under keys the calling manager chooses, reachable only through the internal
calls _sto_put, _sto_get, _sto_drop and _sto_last; and the process-table rows a starting
kernel reads back before storage opens the environment for writing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from aiosd import protocol
from aiosd.errors import AiosError

DBS = ("files", "blobs", "dead", "history", "audit", "procs", "snapshots", "agent_snaps", "index", "quotas")
RAW_DBS = ("history", "snapshots", "procs", "index")  # agent_snaps: counted in quotas (storage_snaps.py)


def raw_db(db: str) -> str:
    """A sub-database the internal raw calls (_sto_put, _sto_get, _sto_drop) may touch."""
    if db not in RAW_DBS:
        raise AiosError("EINVAL", f"no sub-database '{db}' (one of {', '.join(RAW_DBS)})")
    return db


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with `prefix` (b"" for none)."""
    head = prefix.rstrip(b"\xff")
    return head[:-1] + bytes([head[-1] + 1]) if head else b""


def saved_agents(path: str | Path, limit: int = 1000) -> tuple[list[dict], int]:
    """The newest `limit` process-table rows that kernels saved in this environment (`procs`),
    oldest first, and the highest aid saved (0: none). The kernel reads them as it starts,
    before the storage manager opens the environment for writing."""
    if not (Path(path) / "data.mdb").exists():
        return [], 0
    env = lmdb.open(str(path), readonly=True, create=False, max_dbs=len(DBS) + 2, subdir=True)
    try:
        try:
            db = env.open_db(b"procs", create=False)
        except lmdb.NotFoundError:
            return [], 0
        rows: list[dict] = []
        last = 0
        with env.begin(db=db) as txn:
            cur = txn.cursor()
            if cur.last():
                last = int.from_bytes(cur.key(), "big")
                for _, raw in cur.iterprev():
                    try:
                        row = protocol.unpack(raw, 1 << 20)
                    except AiosError:
                        continue
                    if isinstance(row, dict):
                        rows.append(row)
                    if len(rows) >= limit:
                        break
        return rows[::-1], last
    finally:
        env.close()


class RawTables:
    """A mixin of StorageDB: its `env` and `db` handles hold these sub-databases."""

    env: lmdb.Environment
    db: dict

    def raw_put_op(self, db: str, key: bytes, value: Any) -> Callable:
        raw_db(db)

        def op(txn):
            if value is None:
                return {"deleted": txn.delete(key, db=self.db[db])}
            txn.put(key, protocol.pack(value), db=self.db[db])
            return {"stored": True}
        return op

    def raw_drop_op(self, db: str, prefix: bytes, keep: int = 0) -> Callable:
        """Delete every key under `prefix` but the `keep` greatest."""
        raw_db(db)
        if not prefix:
            raise AiosError("EINVAL", "a prefix to drop must not be empty")

        def op(txn):
            cur = txn.cursor(self.db[db])
            limit = None  # delete all
            if keep:
                limit, found = -keep, cur.set_range(prefix)
                while found and cur.key().startswith(prefix):
                    limit += 1
                    found = cur.next()
            n, found = 0, cur.set_range(prefix)
            while found and cur.key().startswith(prefix) and (limit is None or n < limit):
                found = cur.delete()  # moves to the next key
                n += 1
            return {"deleted": n}
        return op

    def raw_count(self, db: str) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.db[db])["entries"]

    def raw_trim_op(self, db: str, keep: int, limit: int) -> Callable:
        """Delete the oldest (smallest) keys of `db` past its newest `keep`, at most `limit`.
        The newest always stays: in `procs` it tells a starting kernel where aids go on."""
        def op(txn) -> dict:
            excess = min(limit, txn.stat(self.db[db])["entries"] - max(1, keep))
            cur, n = txn.cursor(self.db[db]), 0
            cur.first()
            while n < excess and cur.key():
                cur.delete()  # and moves to the next key
                n += 1
            return {"pruned": n}
        op.fails_before_writing = True
        return op

    def raw_get(self, db: str, key: bytes) -> Any:
        raw_db(db)
        with self.env.begin(buffers=False) as txn:
            raw = txn.get(key, db=self.db[db])
        if raw is None:
            raise AiosError("ENOENT", f"no key {key[:64]!r} in {db}")
        return protocol.unpack(raw, 1 << 31)

    def raw_last(self, db: str, prefix: bytes) -> tuple[bytes, Any]:
        """The greatest key under `prefix` and its value (ENOENT: none)."""
        raw_db(db)
        if not prefix:
            raise AiosError("EINVAL", "a prefix must not be empty")
        with self.env.begin(buffers=False) as txn:
            cur = txn.cursor(self.db[db])
            # the first key past the prefix's range, then one back
            end = prefix_end(prefix)
            found = cur.prev() if end and cur.set_range(end) else cur.last()
            if found and cur.key().startswith(prefix):
                return cur.key(), protocol.unpack(cur.value(), 1 << 31)
        raise AiosError("ENOENT", f"no key under {prefix[:64]!r} in {db}")

    def raw_scan(self, db: str, prefix: bytes) -> list[tuple[bytes, Any]]:
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(self.db[db])
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out.append((k, protocol.unpack(v, 1 << 31)))
        return out
