"""Group commit for the storage manager: writes that arrive together share one LMDB
transaction and one sync, and nobody is answered before the sync that covers them.

The manager's loop drains every request ZeroMQ holds, queues their ops here, then calls
`collect()`, which commits them as one batch and hands back the answers. While a batch
syncs, the loop is blocked but ZeroMQ's I/O thread keeps receiving: what arrives meanwhile
is the next batch, so batches grow with the load by themselves.

Why not a committer thread, which would parse the next requests while the disk syncs: on
this 2-core machine its two thread hand-offs a batch and the GIL traffic between the threads
cost more than the overlap gave. Under 16 writers the storage process spent ~25% less CPU
per write without it and the daemon wrote 6-10% more per second (2026-11-23, two series of
10 interleaved A/B pairs; perf/README).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiosd.storage_db import StorageDB


class GroupCommitWriter:
    """Queues write ops and commits them in batches, in arrival order. With `group=False`
    each op gets its own synced transaction (the benchmark's baseline)."""

    def __init__(self, db: StorageDB, group: bool = True, max_batch: int = 1024):
        self.db = db
        self.group = group
        self.max_batch = max(1, max_batch)
        self.queue: list[tuple[Any, Callable]] = []
        self.batches = 0
        self.ops = 0
        self.busy_s = 0.0  # time spent committing: near the wall time, the disk is the limit

    def submit(self, token: Any, op: Callable) -> None:
        self.queue.append((token, op))

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def idle(self) -> bool:
        return not self.queue

    def collect(self) -> list[tuple[Any, Any]]:
        """Commit one batch of what is queued (all of it, up to max_batch; one op with
        group=False) and return its answers: (token, result or AiosError) in arrival order.
        An error that is not an op's own (the disk failing) is raised; the batch is then not
        acknowledged."""
        if not self.queue:
            return []
        n = self.max_batch if self.group else 1
        batch, self.queue = self.queue[:n], self.queue[n:]
        t0 = time.perf_counter()
        results = self.db.run_batch([op for _, op in batch])
        self.busy_s += time.perf_counter() - t0
        self.batches += 1
        self.ops += len(batch)
        return [(tok, res) for (tok, _), res in zip(batch, results, strict=True)]

    def flush(self) -> list[tuple[Any, Any]]:
        """Commit everything queued; returns every answer."""
        out: list[tuple[Any, Any]] = []
        while self.queue:
            out += self.collect()
        return out
