"""A read-only mirror of every agent's resident keyed memory records, for the kernel.

A `mem_read` by key forwarded to the memory manager costs two messages and a process hop
more than a call the kernel answers itself (~150 of ~300 us on a small machine). The memory
manager stays the owner and the only writer: it mirrors each resident record that has a key
into `run/memory.lmdb` (unsynced LMDB; memory does not outlive the daemon) and commits the
pass's changes before its answers leave, so a read after an acknowledged write sees it. The
kernel answers a read by key of one's own memory from the mirror when the record is there;
anything else (ranges, other agents, swapped-out records, big records) still goes to the
manager. Reads served by the kernel are reported back as touches, so LRU order holds.

    key:   aid (8 bytes, big-endian) + the record's key (UTF-8)
    value: the record as msgpack, exactly what the manager itself would answer
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import lmdb

from aiosd import protocol
from aiosd.storage_paths import MAX_KEY

MAX_MIRRORED = 64 * 1024  # bigger records travel through shared memory, from the manager


def mirror_key(aid: int, key: str) -> bytes | None:
    """The mirror's key for a record, or None where it would not fit an LMDB key: such records
    are neither mirrored nor looked up here, and reads of them go to the manager."""
    k = struct.pack(">Q", aid) + key.encode()
    return k if len(k) <= MAX_KEY else None


class MemoryMirror:
    """The memory manager's side: collects changes while a pass runs, commits them at once."""

    def __init__(self, path: Path, map_size: int = 1 << 30):
        self.env = lmdb.open(str(path), map_size=map_size, subdir=True, sync=False, metasync=False,
                             max_readers=256)
        with self.env.begin(write=True) as txn:  # a restarted manager starts with no memory
            txn.drop(self.env.open_db(None, txn=txn), delete=False)
        self.pending: dict[bytes, bytes | None] = {}
        self.closed = False

    def changed(self, aid: int, key: str, rec: dict | None) -> None:
        """A keyed record became resident (rec) or stopped being (None)."""
        k = mirror_key(aid, key)
        if k is None:
            return
        raw = protocol.pack(rec) if rec is not None else None
        self.pending[k] = raw if raw is None or len(raw) <= MAX_MIRRORED else None

    def commit(self) -> None:
        if not self.pending or self.closed:
            return
        todo, self.pending = self.pending, {}
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in todo.items():
                        if v is None:
                            txn.delete(k)
                        else:
                            txn.put(k, v)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self) -> None:
        self.closed = True
        self.env.close()


class MirrorReader:
    """The kernel's side: a read-only view of the mirror."""

    def __init__(self, path: Path):
        self.env = lmdb.open(str(path), readonly=True, create=False, subdir=True, lock=True, max_readers=256)

    def get(self, aid: int, key: str) -> Any | None:
        k = mirror_key(aid, key)
        if k is None:
            return None
        try:
            txn = self.env.begin(buffers=True)
        except lmdb.MapResizedError:  # the manager grew the map since we mapped it
            self.env.set_mapsize(0)
            txn = self.env.begin(buffers=True)
        with txn:
            raw = txn.get(k)
            return None if raw is None else protocol.unpack(bytes(raw), MAX_MIRRORED + 1024)

    def close(self) -> None:
        self.env.close()
