"""Hot backup and offline restore of storage.lmdb (`aios-sto backup` / `aios-sto restore`).

A backup is LMDB's own consistent copy (one read transaction, compacted: free pages left out),
taken while the daemon runs and writes: a reader in another process does not stop the storage
manager, and the copy is exactly one committed state. It goes to a temporary file beside the
destination, synced, then renamed, so a backup file is whole or absent.

A restore replaces the environment while the daemon is stopped (the storage manager holds it
open otherwise). The file it replaces is kept beside it (`data.mdb.replaced`), and the newest
saved process row of the replaced state goes into the restored one: aids are never given twice in
one AIOS_HOME, also across a restore to an older state.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

from aiosd.cli.common import daemon_pid
from aiosd.errors import AiosError
from aiosd.storage_raw import DBS


def storage_dir(home: Path) -> Path:
    return home / "data" / "storage.lmdb"


def backup(home: Path, dest: Path) -> dict:
    src = storage_dir(home)
    if not (src / "data.mdb").exists():
        raise AiosError("ENOENT", f"no storage in {home} to back up")
    if dest.exists():
        raise AiosError("EEXIST", f"{dest} exists; a backup does not overwrite")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    env = lmdb.open(str(src), readonly=True, max_dbs=len(DBS) + 2, subdir=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            env.copyfd(fd, compact=True)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        _sync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        env.close()
    return {"path": str(dest), "bytes": dest.stat().st_size}


def restore(home: Path, src: Path) -> dict:
    pid = daemon_pid(home)
    if pid is not None:
        raise AiosError("EBUSY", f"aiosd is running (pid {pid}): `aiosd stop` first")
    if not src.is_file():
        raise AiosError("ENOENT", f"no backup file {src}")
    _check_backup(src)
    target = storage_dir(home)
    target.mkdir(parents=True, exist_ok=True)
    newest = _newest_row(target)
    tmp = target / "data.mdb.restoring"
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    replaced = None
    if (target / "data.mdb").exists():
        replaced = target / "data.mdb.replaced"
        os.replace(target / "data.mdb", replaced)
    os.replace(tmp, target / "data.mdb")
    (target / "lock.mdb").unlink(missing_ok=True)  # reader slots of the replaced environment
    _sync_dir(target)
    if newest is not None:
        _carry_row(target, *newest)
    return {"path": str(target), "bytes": (target / "data.mdb").stat().st_size,
            "replaced": str(replaced) if replaced else None}


def _check_backup(src: Path) -> None:
    try:
        env = lmdb.open(str(src), readonly=True, subdir=False, lock=False, max_dbs=len(DBS) + 2)
    except lmdb.Error as exc:
        raise AiosError("EINVAL", f"{src} is not an LMDB file: {exc}") from None
    try:
        env.open_db(b"files", create=False)
        env.open_db(b"quotas", create=False)
    except lmdb.Error:
        raise AiosError("EINVAL", f"{src} is LMDB but not an aiosd storage backup") from None
    finally:
        env.close()


def _newest_row(target: Path) -> tuple[bytes, bytes] | None:
    """The greatest key of `procs` and its value in the environment about to be replaced."""
    if not (target / "data.mdb").exists():
        return None
    env = lmdb.open(str(target), readonly=True, max_dbs=len(DBS) + 2, subdir=True)
    try:
        try:
            db = env.open_db(b"procs", create=False)
        except lmdb.NotFoundError:
            return None
        with env.begin(db=db) as txn:
            cur = txn.cursor()
            return (bytes(cur.key()), bytes(cur.value())) if cur.last() else None
    finally:
        env.close()


def _carry_row(target: Path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(target), max_dbs=len(DBS) + 2, subdir=True)
    try:
        with env.begin(write=True, db=env.open_db(b"procs")) as txn:
            cur = txn.cursor()
            if not cur.last() or bytes(cur.key()) < key:
                txn.put(key, value)
    finally:
        env.close()


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
