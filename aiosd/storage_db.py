"""The LMDB layer of the storage manager: namespaced files with versions, quotas, raw
sub-databases, the audit log, and group commit. No sockets; tests drive it directly.

Layout (one environment, one writer process):
  files     ns\\0path               -> {"v": latest, "kept": [versions], "sizes", "seqs": [the blob
                                      of each kept version], "size": bytes kept, "t"}
  blobs, dead                      -> the bytes of versions, an append-only log (aiosd/blob_log.py)
  quotas    ns                     -> {"quota": bytes, "used": bytes}
  index     ns\\0path\\0%010d        -> float32 embedding of that version's text
  audit     time_ns(8) seq(8)      -> an audit record, appended in key order (aiosd/audit_log.py)
  procs     aid(8)                 -> an exited agent's process-table row
  history, snapshots               -> raw values for the memory manager and the llm worker
                                      (these and procs, index, agent_snaps: aiosd/storage_raw.py)
  agent_snaps ns\\0id              -> an agent snapshot (memory, context, files; storage_snaps.py)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from aiosd import protocol
from aiosd.audit_log import AuditLog
from aiosd.blob_log import GC_BACKLOG, BlobLog, bkey, migrate_versions
from aiosd.errors import AiosError
from aiosd.storage_paths import check_ns, check_path, fkey, version_key, vkey
from aiosd.storage_raw import DBS, RawTables
from aiosd.storage_snaps import AgentSnapshotTable

# File and quota records are written by this module alone: they are decoded without the
# wire's checks (protocol.unpack), which cost more than the decoding on every write and read


# what fails one op alone, not its batch: our errors, and a key or value too big for LMDB
_OP_ERRORS = (AiosError, lmdb.BadValsizeError)


def _op_error(exc: Exception) -> AiosError:
    if isinstance(exc, AiosError):
        return exc
    return AiosError("EINVAL", f"a key or value is too big for storage ({exc})")


def load_record(raw) -> Any:
    return msgpack.unpackb(raw, raw=False)


def dump_record(obj: Any) -> bytes:
    return protocol.pack(obj)  # its Packer per thread: packb builds one per call


def as_bytes(data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise AiosError("EINVAL", "data must be bytes or a string")


class TooBig(Exception):
    """A value larger than the reader agreed to copy (the kernel forwards such reads)."""


class StorageReader:
    """Files and versions, read-only. The storage manager's StorageDB is one; the kernel
    holds another on the same environment (LMDB serves any number of reader processes
    beside its one writer, and a read transaction begun after a commit sees it)."""

    env: lmdb.Environment
    db: dict

    @classmethod
    def open_readonly(cls, path: str | Path) -> StorageReader:
        """Open an environment the storage manager has created (lmdb.Error if it has not)."""
        self = cls.__new__(cls)
        self.env = lmdb.open(str(path), readonly=True, create=False, max_dbs=len(DBS) + 2, subdir=True,
                             max_readers=256)
        self.env.set_mapsize(0)  # adopt the writer's current map size
        # opened outside any transaction of ours: a handle opened in a read transaction is
        # not valid in the next one
        self.db = {name: self.env.open_db(name.encode(), create=False) for name in ("files", "blobs")}
        return self

    def begin(self, buffers: bool = False) -> lmdb.Transaction:
        try:
            return self.env.begin(buffers=buffers)
        except lmdb.MapResizedError:  # the writer grew the map since we mapped it
            self.env.set_mapsize(0)
            return self.env.begin(buffers=buffers)

    def file_meta(self, txn, ns: str, path: str) -> dict | None:
        """The record of a file (its kept versions and their blobs), or None."""
        raw = txn.get(fkey(ns, path), db=self.db["files"])
        return load_record(raw) if raw else None

    def read(self, ns: str, path: str, version: int | None = None, max_size: int | None = None) -> dict:
        """A version's bytes (the latest by default); over `max_size` raises TooBig uncopied."""
        check_path(path)
        with self.begin(buffers=max_size is not None) as txn:
            meta = self.file_meta(txn, ns, path)
            if meta is None:
                raise AiosError("ENOENT", f"no file '{path}' in namespace '{ns}'")
            v = version or meta["v"]
            data = self.version_bytes(txn, meta, path, v)
            if max_size is not None:
                if len(data) > max_size:
                    raise TooBig(len(data))
                data = bytes(data)  # the buffer dies with the transaction
            return {"data": data, "version": v}

    def version_bytes(self, txn, meta: dict, path: str, v: int):
        """The bytes of version `v` of the file `meta` describes (a buffer with buffers=True)."""
        try:
            seq = meta["seqs"][meta["kept"].index(v)]
        except ValueError:
            raise AiosError("ENOENT", f"version {v} of '{path}' is not kept (kept: {meta['kept']})") from None
        return txn.get(bkey(seq), db=self.db["blobs"])

    def versions(self, ns: str, path: str) -> list[dict]:
        check_path(path)
        with self.begin() as txn:
            meta = self.file_meta(txn, ns, path)
            if meta is None:
                raise AiosError("ENOENT", f"no file '{path}' in namespace '{ns}'")
            return [{"version": v, "size": s} for v, s in zip(meta["kept"], meta["sizes"], strict=True)]

    def list(self, ns: str, prefix: str = "") -> list[str]:
        check_path(prefix, "prefix", prefix=True)
        start = fkey(ns, prefix)
        out = []
        with self.begin() as txn:
            cur = txn.cursor(self.db["files"])
            if cur.set_range(start):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(start):
                        break
                    out.append(key[len(ns.encode()) + 1:].decode())
        return out


class StorageDB(StorageReader, RawTables, AgentSnapshotTable):
    def __init__(self, path: str | Path, map_size: int = 1 << 32, versions_kept: int = 8,
                 default_quota: int = 256 << 20, sync: str = "full"):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.sync_mode = sync
        # "full": LMDB syncs data then meta inside every commit; "data": commit unsynced,
        # then one explicit env.sync() before anything is acknowledged
        self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=len(DBS) + 2, subdir=True,
                             sync=(sync == "full"), metasync=(sync == "full"), max_readers=256)
        self.cleared_readers = self.env.reader_check()  # slots of dead readers (a killed process)
        self.db = {name: self.env.open_db(name.encode()) for name in DBS}
        self.blobs = BlobLog(self.env, self.db["blobs"], self.db["dead"])
        migrate_versions(self.env, self.db["files"], self.blobs, load_record, dump_record, version_key)
        self.versions_kept = max(1, versions_kept)
        self.default_quota = default_quota
        self.audit = AuditLog(self.env, self.db["audit"])
        self.commits = 0

    def close(self) -> None:
        self.env.close()

    # ---- transactions -------------------------------------------------------------------
    def run_batch(self, ops: list[Callable[[Any], Any]]) -> list[Any]:
        """Apply ops in one transaction, each in its own nested one (a failing op changes
        nothing), commit and sync once. Returns each op's result or its AiosError."""
        while True:
            results: list[Any] = []
            txn = self.env.begin(write=True)
            try:
                for op in ops:
                    if getattr(op, "fails_before_writing", False):
                        try:  # its errors come before its first change: no nested transaction needed
                            results.append(op(txn))
                        except _OP_ERRORS as exc:
                            results.append(_op_error(exc))
                        continue
                    child = self.env.begin(write=True, parent=txn)
                    try:
                        results.append(op(child))
                        child.commit()
                    except _OP_ERRORS as exc:
                        child.abort()
                        results.append(_op_error(exc))
                if self.blobs.backlog > GC_BACKLOG:  # a writer that never pauses: collect as we go
                    self.blobs.collect(txn, 2 * len(ops) + 16)
                txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
                continue
            except BaseException:
                txn.abort()
                raise
            if self.sync_mode != "full":
                self.env.sync(True)
            self.commits += 1
            return results

    def write_now(self, op: Callable[[Any], Any]) -> Any:
        res = self.run_batch([op])[0]
        if isinstance(res, AiosError):
            raise res
        return res

    # ---- quotas -------------------------------------------------------------------------
    def quota(self, txn, ns: str) -> dict:
        return self._quota_record(txn, ns)[0]

    def _quota_record(self, txn, ns: str) -> tuple[dict, bool]:
        """The namespace's quota and usage, and whether it has a record of its own yet."""
        raw = txn.get(ns.encode(), db=self.db["quotas"])
        return (load_record(raw), True) if raw else ({"quota": self.default_quota, "used": 0}, False)

    def set_quota_op(self, ns: str, size: int) -> Callable:
        def op(txn):
            q = self.quota(txn, ns)
            if size < q["used"]:
                raise AiosError("ENOSPC", f"namespace '{ns}' already holds {q['used']} bytes, more than {size}")
            q["quota"] = size
            txn.put(ns.encode(), dump_record(q), db=self.db["quotas"])
            return {"quota": size, "used": q["used"]}
        return op

    def _charge(self, txn, ns: str, delta: int, quota: int | None = None) -> None:
        """Raises ENOSPC before it changes anything."""
        q, recorded = self._quota_record(txn, ns)
        if quota is not None and not recorded:
            q["quota"] = quota  # the agent's spawn-time quota, on its namespace's first write
        if delta > 0 and q["used"] + delta > q["quota"]:
            raise AiosError("ENOSPC", f"namespace '{ns}' would hold {q['used'] + delta} bytes, "
                                      f"over its quota of {q['quota']}")
        if delta == 0 and recorded:
            return  # an unchanged record would still dirty a page that the commit syncs
        q["used"] = max(0, q["used"] + delta)
        txn.put(ns.encode(), dump_record(q), db=self.db["quotas"])

    # ---- files --------------------------------------------------------------------------
    def write_op(self, ns: str, path: str, data: Any, quota: int | None = None) -> Callable:
        check_ns(ns)
        check_path(path)
        blob = as_bytes(data)
        # keys and handles made here, as the request is parsed: the op runs inside the batch's
        # transaction, whose time is what bounds a write-heavy load
        key, files, index = fkey(ns, path), self.db["files"], self.db["index"]

        def op(txn) -> dict:
            raw = txn.get(key, db=files)
            meta = load_record(raw) if raw else {"v": 0, "kept": [], "sizes": [], "seqs": [], "size": 0}
            version = meta["v"] + 1
            kept, sizes, seqs = meta["kept"], meta["sizes"], meta["seqs"]
            kept.append(version)
            sizes.append(len(blob))
            drop = len(kept) - self.versions_kept
            if drop > 0:
                dropped = kept[:drop]
                del kept[:drop], sizes[:drop]
            size = sum(sizes)
            self._charge(txn, ns, size - meta["size"], quota)
            if drop > 0:
                for v in dropped:
                    txn.delete(version_key(key, v), db=index)
                self.blobs.drop(txn, seqs[:drop])
                del seqs[:drop]
            seqs.append(self.blobs.append(txn, blob))
            meta["v"], meta["size"], meta["t"] = version, size, time.time()
            txn.put(key, dump_record(meta), db=files)
            return {"version": version, "size": len(blob)}
        op.fails_before_writing = True  # ENOSPC from _charge comes before the first put or delete
        return op

    def delete_op(self, ns: str, path: str) -> Callable:
        check_ns(ns)
        check_path(path)

        def op(txn) -> dict:
            meta = self.file_meta(txn, ns, path)
            if meta is None:
                raise AiosError("ENOENT", f"no file '{path}' in namespace '{ns}'")
            for v in meta["kept"]:
                txn.delete(vkey(ns, path, v), db=self.db["index"])
            self.blobs.drop(txn, meta["seqs"])
            txn.delete(fkey(ns, path), db=self.db["files"])
            self._charge(txn, ns, -meta["size"])
            return {"deleted": path, "versions": len(meta["kept"])}
        return op

    def usage(self, ns: str) -> dict:
        with self.env.begin() as txn:
            return self.quota(txn, ns)

    def usage_rows(self, ns: str | None = None) -> list[dict]:
        """Bytes kept, quota and file count of one namespace, or of every namespace that
        has written (each write keeps its namespace's quota record)."""
        with self.env.begin() as txn:
            if ns is not None:
                names = [ns]
            else:
                names = [k.decode() for k in txn.cursor(self.db["quotas"]).iternext(values=False)]
            rows = []
            for name in names:
                q, start = self.quota(txn, name), fkey(name, "")
                cur, files = txn.cursor(self.db["files"]), 0
                if cur.set_range(start):
                    for key in cur.iternext(values=False):
                        if not key.startswith(start):
                            break
                        files += 1
                rows.append({"name": name, "used": q["used"], "quota": q["quota"], "files": files})
        return rows

    # ---- audit (aiosd/audit_log.py) -----------------------------------------------------
    def audit_op(self, records: list) -> Callable:
        return self.audit.append_op(records)

    def audit_query(self, **query: Any) -> list[dict]:
        return self.audit.query(**query)
