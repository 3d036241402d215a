"""The audit sub-database of storage.lmdb: one record per syscall, appended in key order.

  audit  time_ns(8) seq(8)  -> a record (aiosd/audit.py builds them in the kernel)

Keys only ever grow, so every append lands on the last page, and a query walks back from
the newest record until it passes the window it was asked for. Every syscall leaves a record,
so the log is bounded (`audit_keep` records, `audit_keep_days`): the storage manager deletes
the oldest past either bound in small transactions when its writer is idle.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import lmdb

from aiosd import protocol
from aiosd.errors import AiosError

_KEY = struct.Struct(">QQ")


class AuditLog:
    """Appends and queries audit records; appends run inside the one writer's transactions."""

    def __init__(self, env: lmdb.Environment, db):
        self.env, self.db = env, db
        self.last = (0, 0)  # the newest key's (time_ns, seq)
        with env.begin() as txn:
            cur = txn.cursor(db)
            if cur.last():
                self.last = _KEY.unpack(cur.key()[:16])

    def append_op(self, records: list[bytes | dict]) -> Callable:
        """An op for StorageDB.run_batch that appends `records`: packed as the kernel's
        AuditBuffer sends them, or dicts."""
        values = [rec if isinstance(rec, bytes) else protocol.pack(rec) for rec in records]

        def op(txn):
            t, seq = self.last
            for value in values:
                now = time.time_ns()
                t, seq = (now, 0) if now > t else (t, seq + 1)  # keys only ever grow
                if not txn.put(_KEY.pack(t, seq), value, db=self.db, append=True):
                    raise RuntimeError(f"audit key {t}/{seq} is not past the last")  # LMDB's quiet refusal
            self.last = (t, seq)
            return {"appended": len(values)}
        return op

    def over(self, keep: int, max_age_s: float) -> bool:
        """Whether the log holds more than `keep` records (0: no limit) or any older than
        `max_age_s` (0: no limit). One stat and one cursor step: cheap enough for every idle tick."""
        with self.env.begin() as txn:
            if keep and txn.stat(self.db)["entries"] > keep:
                return True
            cur = txn.cursor(self.db)
            return bool(max_age_s) and cur.first() and _KEY.unpack(cur.key()[:16])[0] < _cutoff_ns(max_age_s)

    def prune_op(self, keep: int, max_age_s: float, limit: int) -> Callable:
        """An op that deletes at most `limit` of the oldest records, those past either bound."""
        def op(txn) -> dict:
            excess = max(0, txn.stat(self.db)["entries"] - keep) if keep else 0
            cutoff = _cutoff_ns(max_age_s) if max_age_s else 0
            cur, n = txn.cursor(self.db), 0
            cur.first()
            while n < limit and (key := cur.key()):  # b"": past the last record, or none
                if n >= excess and _KEY.unpack(key[:16])[0] >= cutoff:
                    break
                cur.delete()  # and moves to the next record
                n += 1
            return {"pruned": n}
        op.fails_before_writing = True
        return op

    def query(self, aid: int | None = None, name: str | None = None, since: float | None = None,
              until: float | None = None, call: str | None = None, limit: int = 1000) -> list[dict]:
        """The newest `limit` matching records, oldest first."""
        out: list[dict] = []
        with self.env.begin() as txn:
            cur = txn.cursor(self.db)
            if not cur.last():
                return out
            for _, raw in cur.iterprev():
                try:
                    rec = protocol.unpack(raw, 1 << 24)
                except AiosError:
                    rec = None
                if not isinstance(rec, dict):  # appended as bytes: a query must survive a bad one
                    rec = {"t": 0.0, "call": "?", "code": "EBADMSG", "note": "an undecodable audit record"}
                t = rec.get("t", 0.0)
                if since is not None and t < since - 5.0:
                    break  # keys are append order; records' own times lag them by batching only
                if ((aid is not None and rec.get("aid") != aid) or (name is not None and rec.get("name") != name)
                        or (call is not None and rec.get("call") != call)
                        or (since is not None and t < since) or (until is not None and t > until)):
                    continue
                out.append(rec)
                if len(out) >= limit:
                    break
        out.reverse()
        return out


def _cutoff_ns(max_age_s: float) -> int:
    return time.time_ns() - int(max_age_s * 1e9)
