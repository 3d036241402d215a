"""Audit records: what every syscall did, batched in the kernel and appended by storage."""

from __future__ import annotations

import hashlib
import time

from aiosd import protocol

# Calls that are too frequent and too harmless to audit one by one would go here; none are:
# the audit is the record of every access, as the access manager promises.


def digest(args: object) -> str:
    """A short digest of a call's arguments: enough to match, never the data itself."""
    try:
        raw = protocol.pack(args)
    except Exception:
        raw = repr(args).encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def record(aid: int, name: str, call: str, args: object, code: str, latency_s: float,
           note: str = "") -> dict:
    rec = {"t": time.time(), "aid": aid, "name": name, "call": call, "digest": digest(args),
           "code": code, "latency_s": round(latency_s, 6)}
    if note:
        rec["note"] = note
    return rec


class AuditBuffer:
    """Collects records and hands them out in batches (the kernel sends them to storage).
    Each is kept packed: storage appends the bytes as they come, instead of decoding every
    record of a batch from the wire and encoding it again for LMDB."""

    def __init__(self, max_batch: int = 512, max_age_s: float = 0.05):
        self.records: list[bytes] = []
        self.max_batch = max_batch
        self.max_age_s = max_age_s
        self.oldest = 0.0

    def add(self, rec: dict) -> None:
        if not self.records:
            self.oldest = time.monotonic()
        self.records.append(protocol.pack(rec))

    def due(self) -> bool:
        return bool(self.records) and (
            len(self.records) >= self.max_batch or time.monotonic() - self.oldest >= self.max_age_s)

    def take(self) -> list[bytes]:
        out, self.records = self.records, []
        return out
