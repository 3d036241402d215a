"""Agent snapshots in storage.lmdb (createAgentSnapshot / rollbackAgentState), a mixin of
StorageDB.

  agent_snaps  ns\\0id  -> {"id", "label", "time", "aid", "n_records", "n_files", "charged",
                          then "memory", "context", "files"}: the header first, so that a listing
                          decodes a few hundred bytes of each and not its files

A snapshot copies every file the namespace keeps, so its bytes count against the
namespace's storage quota like the files' own: without that, an agent could multiply its
quota by snapshotting itself. Deleting one gives its bytes back.
"""

from __future__ import annotations

from collections.abc import Callable

import lmdb
import msgpack

from aiosd import protocol
from aiosd.errors import AiosError
from aiosd.storage_paths import MAX_KEY, SEP

HEAD_BYTES = 4096  # more than a header needs: the label is at most 256 characters
BODY = frozenset({"memory", "context", "files"})


def snap_key(ns: str, sid: str) -> bytes:
    key = ns.encode() + SEP + sid.encode()
    if len(key) > MAX_KEY:  # no snapshot has such a name (ours are "snap-" and 16 hex digits)
        raise AiosError("ENOENT", f"no snapshot {sid[:40]!r} of '{ns}'")
    return key


def snapshot_header(raw: bytes | memoryview) -> dict:
    """The small fields of a packed snapshot, read from its first bytes."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(bytes(raw[:HEAD_BYTES]))
    head: dict = {}
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key in BODY or not isinstance(key, str):
                break
            head[key] = unpacker.unpack()
    except (msgpack.OutOfData, ValueError):
        pass  # a header longer than HEAD_BYTES: what was read is what is listed
    return head


class AgentSnapshotTable:
    env: lmdb.Environment
    db: dict
    _charge: Callable[..., None]

    def snapshot_put_op(self, ns: str, sid: str, snap: dict) -> Callable:
        """`snap` with its header fields first and "charged": True among them."""
        raw = protocol.pack(snap)
        key = snap_key(ns, sid)

        def op(txn) -> dict:
            self._charge(txn, ns, len(raw))  # ENOSPC before anything is written
            txn.put(key, raw, db=self.db["agent_snaps"])
            return {"bytes": len(raw)}
        op.fails_before_writing = True
        return op

    def snapshot_delete_op(self, ns: str, sid: str) -> Callable:
        key = snap_key(ns, sid)

        def op(txn) -> dict:
            raw = txn.get(key, db=self.db["agent_snaps"])
            if raw is None:
                raise AiosError("ENOENT", f"no snapshot {sid!r} of '{ns}'")
            txn.delete(key, db=self.db["agent_snaps"])
            if snapshot_header(raw).get("charged"):  # not those taken before snapshots counted
                self._charge(txn, ns, -len(raw))
            return {"deleted": sid, "bytes": len(raw)}
        return op

    def snapshot_get(self, ns: str, sid: str) -> dict:
        with self.env.begin(buffers=False) as txn:
            raw = txn.get(snap_key(ns, sid), db=self.db["agent_snaps"])
        if raw is None:
            raise AiosError("ENOENT", f"no snapshot {sid!r} of '{ns}'")
        return protocol.unpack(raw, 1 << 40)

    def snapshot_list(self, ns: str) -> list[dict]:
        """The namespace's snapshots, oldest first: header fields and size in bytes."""
        prefix, out = ns.encode() + SEP, []
        with self.env.begin(buffers=True) as txn:
            cur = txn.cursor(self.db["agent_snaps"])
            if cur.set_range(prefix):
                for key, raw in cur:
                    if not bytes(key).startswith(prefix):
                        break
                    head = snapshot_header(raw)
                    out.append({"snapshot": head.get("id", bytes(key[len(prefix):]).decode()),
                                "label": head.get("label", ""), "time": head.get("time", 0.0),
                                "aid": head.get("aid", 0), "records": head.get("n_records"),
                                "files": head.get("n_files"), "bytes": len(raw)})
        return sorted(out, key=lambda r: r["time"])

