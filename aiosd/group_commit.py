"""Group commit for the storage manager: writes that arrive together share one LMDB
transaction and one sync, and nobody is answered before the sync that covers them.

`GroupCommitWriter` runs the batches on a committer thread. The thread spends a batch's
time mostly in fsync with the GIL released, so the manager's loop keeps receiving and
parsing while the disk works; what arrives meanwhile becomes the next batch, so batches
grow with the load instead of the loop stalling once per sync. `wake_fd` becomes readable
when a batch is done; `collect()` then hands out its answers and starts the next batch.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from aiosd.storage_db import StorageDB


class GroupCommitWriter:
    """Queues write ops and commits them in batches, in arrival order, one batch at a time.
    With `group=False` each op gets its own synced transaction (the benchmark's baseline)."""

    def __init__(self, db: StorageDB, group: bool = True, max_batch: int = 1024):
        self.db = db
        self.group = group
        self.max_batch = max(1, max_batch)
        self.queue: list[tuple[Any, Callable]] = []
        self.batches = 0
        self.ops = 0
        self.busy_s = 0.0  # time spent committing: near the wall time, the disk is the limit
        self._cond = threading.Condition()
        self._todo: list[tuple[Any, Callable]] | None = None   # the batch handed to the thread
        self._done: list[tuple[Any, Any]] = []                 # its answers, until collected
        self._failure: BaseException | None = None              # what the thread could not survive
        self._busy = False
        self._closed = False
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, token: Any, op: Callable) -> None:
        self.queue.append((token, op))

    def __len__(self) -> int:
        return len(self.queue) + (len(self._todo or ()) if self._busy else 0)

    @property
    def idle(self) -> bool:
        """Nothing queued, committing, or answered and not yet collected."""
        return not self.queue and not self._busy and not self._done

    def collect(self) -> list[tuple[Any, Any]]:
        """Answers of the batch that finished, if one did, and the next batch started:
        (token, result or AiosError) in arrival order. Never waits."""
        try:
            os.read(self.wake_fd, 4096)
        except BlockingIOError:
            pass
        with self._cond:
            done, self._done = self._done, []
            self._raise_failure()
            self._start_next()
        return done

    def flush(self) -> list[tuple[Any, Any]]:
        """Commit everything queued and wait for it; returns every answer not yet collected."""
        out: list[tuple[Any, Any]] = []
        with self._cond:
            while True:
                out += self._done
                self._done = []
                self._raise_failure()
                if not self._busy and not self.queue:
                    return out
                self._start_next()
                self._cond.wait_for(lambda: not self._busy or self._failure is not None)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5.0)
        for fd in (self.wake_fd, self._wake_w):
            os.close(fd)

    # ---- the committer side ---------------------------------------------------------------
    def _start_next(self) -> None:  # with self._cond held
        if self._busy or not self.queue:
            return
        n = self.max_batch if self.group else 1
        self._todo, self.queue = self.queue[:n], self.queue[n:]
        self._busy = True
        self._cond.notify_all()

    def _raise_failure(self) -> None:  # with self._cond held
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise exc

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._todo is not None or self._closed)
                if self._todo is None:
                    return
                batch = self._todo
            t0 = time.perf_counter()
            try:
                results = self.db.run_batch([op for _, op in batch])
                answers = [(tok, res) for (tok, _), res in zip(batch, results, strict=True)]
                failure = None
            except BaseException as exc:  # noqa: BLE001 - the manager's loop re-raises it
                answers, failure = [], exc
            with self._cond:
                self._todo = None
                self._busy = False
                self._done += answers
                self._failure = failure
                self.busy_s += time.perf_counter() - t0
                if not failure:
                    self.batches += 1
                    self.ops += len(batch)
                self._cond.notify_all()
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:  # the pipe is full of wake-ups already
                pass
