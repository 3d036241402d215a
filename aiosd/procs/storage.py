"""The storage manager: the only LMDB writer (files, versions, audit, snapshots, retrieval).

Every mutating call is queued (DEFERRED) and answered from `tick()` after the batch it
belongs to is committed and synced: writes that arrive together share one transaction
and one sync (group commit, aiosd/group_commit.py: what ZeroMQ received while one batch
synced is the next), and no write is acknowledged before it is durable.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zmq

from aiosd import protocol
from aiosd.blob_log import GC_IDLE_BATCH
from aiosd.embed import Embedder
from aiosd.errors import AiosError
from aiosd.procs.base import DEFERRED, Manager, Request, run_manager
from aiosd.procs.storage_retrieval import Retrieval
from aiosd.procs.storage_snapshots import AgentSnapshots
from aiosd.group_commit import GroupCommitWriter
from aiosd.storage_db import StorageDB
from aiosd.storage_paths import check_ns

SNAP_CALLS = ("snapshot_create", "snapshot_restore")
GC_AFTER_PAUSE_S = 1.0  # dropped versions are freed when writes pause this long (or GC_IDLE_BATCH wait)
PRUNE_CHECK_S = 1.0     # how often an idle writer asks whether the audit log or saved rows are past their bounds
PRUNE_BATCH = 2048      # oldest records deleted per transaction and table (~1 ms, synced, here)


class StorageManager(Retrieval, AgentSnapshots, Manager):
    name = "storage"
    batch_replies = True  # a committed batch's answers go back to the kernel as one frame

    def setup(self) -> None:
        cfg = self.cfg
        self.db = StorageDB(cfg.data_dir / "storage.lmdb", map_size=cfg.storage_map_size,
                            versions_kept=cfg.versions_kept, default_quota=cfg.storage_quota,
                            sync=cfg.storage_sync)
        self.writer = GroupCommitWriter(self.db, group=cfg.group_commit, max_batch=cfg.storage_max_batch)
        self.embedder = Embedder(threads=1)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="retrieve")
        self.done: queue.Queue = queue.Queue()   # (req id, result, error) from retrieval jobs
        self.jobs = 0
        self.kernel_pid = os.getppid()
        self.last_write = 0.0
        self.pruned_at = 0.0

    # ---- plumbing -----------------------------------------------------------------------
    def ns(self, req: Request) -> str:
        """The namespace a call touches: the caller's name, or an owner the kernel approved."""
        if req.args.get("owner") is not None:
            target = req.ctx.get("target")
            if not target:
                raise AiosError("EACCES", f"no grant to use the storage of '{req.args['owner']}'")
            return check_ns(str(target))
        return check_ns(req.name)

    def queue_op(self, req: Request, op) -> object:
        self.writer.submit(req.id, op)
        self.last_write = time.monotonic()
        return DEFERRED

    def flush(self) -> None:
        """Commit everything queued now and answer it (before a call that must see it)."""
        self.answer(self.writer.flush())

    def commit_now(self, ops: list) -> list:
        """Commit `ops` through the writer (so every write goes through one place), answering
        whatever else was queued; returns their results, or raises the first AiosError among them."""
        tokens = [object() for _ in ops]
        for tok, op in zip(tokens, ops, strict=True):
            self.writer.submit(tok, op)
        mine = {id(t) for t in tokens}
        done = self.writer.flush()
        self.answer([(rid, res) for rid, res in done if id(rid) not in mine])
        results = {id(rid): res for rid, res in done if id(rid) in mine}
        out = [results[id(t)] for t in tokens]
        for res in out:
            if isinstance(res, AiosError):
                raise res
        return out

    def answer(self, done: list) -> None:
        for rid, res in done:
            if isinstance(res, AiosError):
                self.fail(rid, res.code, res.message)
            elif rid is not None:
                self.reply(rid, res)

    def tick(self) -> float | None:
        while self.jobs:  # retrieval jobs only; queue.Empty would cost microseconds every pass
            try:
                rid, result, err = self.done.get_nowait()
            except queue.Empty:
                break
            self.jobs -= 1
            if rid == "index":
                for key, vec in result:
                    self.writer.submit(None, self.db.raw_put_op("index", key, vec))
            elif err is not None:
                self.fail(rid, err.code, err.message)
            else:
                self.reply(rid, result)
        if not self.writer.idle:
            self.answer(self.writer.collect())
        wait = 0.005 if self.jobs else None
        if not self.writer.idle:  # more than one batch was queued: the rest after the next drain
            wait = 0
        if self.writer.idle and self.db.blobs.backlog:
            # Dropped versions are freed, oldest first, once writing pauses for a while or
            # when many wait: freeing each as soon as the writer is idle would add a synced
            # transaction to every write of a lone writer.
            pause = time.monotonic() - self.last_write
            if self.db.blobs.backlog >= GC_IDLE_BATCH or pause >= GC_AFTER_PAUSE_S:
                self.writer.submit(None, self.db.blobs.collect_op())
                self.answer(self.writer.collect())
            else:
                wait = min(wait or GC_AFTER_PAUSE_S, max(0.005, GC_AFTER_PAUSE_S - pause))
        if self.writer.idle:
            self.prune_old()
        if self.jobs and os.getppid() == self.kernel_pid:
            # the kernel pings only managers it has not heard from, and our short ticks keep
            # our own heartbeats too regular for that; while a job runs, a live parent (the
            # kernel) is the liveness proof, so the base loop does not think it lost it
            self._last_rx = time.monotonic()
        return wait

    def prune_old(self) -> None:
        """Delete the oldest audit records past `audit_keep` / `audit_keep_days` and the oldest
        saved process rows past `procs_kept`, a chunk at a time: each chunk is one transaction,
        so writers wait behind one chunk at most."""
        now = time.monotonic()
        if now - self.pruned_at < PRUNE_CHECK_S:
            return
        self.pruned_at = now
        cfg, ops = self.cfg, []
        max_age_s = cfg.audit_keep_days * 86400.0
        if (cfg.audit_keep or max_age_s) and self.db.audit.over(cfg.audit_keep, max_age_s):
            ops.append(self.db.audit.prune_op(cfg.audit_keep, max_age_s, PRUNE_BATCH))
        if self.db.raw_count("procs") > cfg.procs_kept:
            ops.append(self.db.raw_trim_op("procs", cfg.procs_kept, PRUNE_BATCH))
        if not ops:
            return
        for op in ops:
            self.writer.submit(None, op)
        done = self.writer.collect()
        self.answer(done)
        if any(isinstance(res, dict) and res.get("pruned") == PRUNE_BATCH for _, res in done):
            self.pruned_at = 0.0  # more to go: the next idle tick takes the next chunk

    def call(self, call: str, args: dict, aid: int = 0, timeout: float = 30.0) -> Any:
        """An internal call that keeps serving storage requests while it waits, so a manager
        that needs storage to answer us (memory swapping records) cannot deadlock with us."""
        rid = f"s{next(self._ids)}"
        self.send({"id": rid, "call": call, "args": protocol.offload(args, self.cfg.shm_threshold), "aid": aid})
        self.flush_out()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AiosError("ETIMEDOUT", f"internal call {call} timed out")
            if not self.sock.poll(int(min(left, 0.05) * 1000)):
                continue
            answer = None
            while answer is None:
                try:
                    msgs = self.recv_msgs(self.sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                for msg in msgs:
                    if answer is None and isinstance(msg, dict) and msg.get("id") == rid and "ok" in msg:
                        answer = msg
                    elif answer is None and isinstance(msg, dict) and "call" in msg and msg["call"] not in SNAP_CALLS:
                        self.dispatch(msg)
                    else:
                        self._stash.append(msg)
            if not self.writer.idle:
                self.answer(self.writer.collect())
            self.flush_out()
            if answer is not None:
                if answer["ok"]:
                    return protocol.resolve(answer.get("result"))
                raise AiosError.from_wire(answer.get("error"))

    def on_event(self, event: dict) -> None:
        settings = event.get("settings") or {}
        if event.get("event") == "config" and "group_commit" in settings:
            self.writer.group = bool(settings["group_commit"])

    def shutdown(self) -> None:
        self.flush()
        w = self.writer
        logging.getLogger("aiosd").info("storage: %d ops in %d synced batches (%.1f per batch), %.1f s committing",
                                        w.ops, w.batches, w.ops / max(w.batches, 1), w.busy_s)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.db.close()

    # ---- files --------------------------------------------------------------------------
    def handle_sto_alloc(self, req: Request) -> Any:
        return self.queue_op(req, self.db.set_quota_op(self.ns(req), int(req.args["size"])))

    def handle_sto_write(self, req: Request) -> Any:
        quota = None if req.args.get("owner") is not None else req.ctx.get("storage_quota")
        return self.queue_op(req, self.db.write_op(self.ns(req), req.args["path"], req.args["data"], quota))

    def handle_sto_delete(self, req: Request) -> Any:
        return self.queue_op(req, self.db.delete_op(self.ns(req), req.args["path"]))

    def handle_sto_read(self, req: Request) -> Any:
        return self.db.read(self.ns(req), req.args["path"], req.args.get("version"))

    def handle_sto_versions(self, req: Request) -> Any:
        return {"versions": self.db.versions(self.ns(req), req.args["path"])}

    def handle_sto_usage(self, req: Request) -> Any:
        if req.args.get("all"):
            if not req.ctx.get("is_root"):
                raise AiosError("EACCES", "only root may see every namespace's usage")
            return {"namespaces": self.db.usage_rows()}
        return {"namespaces": self.db.usage_rows(self.ns(req))}

    def handle_sto_list(self, req: Request) -> Any:
        return {"paths": self.db.list(self.ns(req), req.args.get("prefix") or "")}

    # ---- audit, raw databases, process rows ---------------------------------------------
    def handle_audit_query(self, req: Request) -> Any:
        a = req.args
        aid, name = a.get("aid"), a.get("name")
        if not req.ctx.get("is_root") and aid is None:
            if name is not None and name != req.name:
                raise AiosError("EACCES", f"agent {req.aid} may read only its own audit records")
            if name is None:
                aid = req.aid
        self.flush()
        return {"records": self.db.audit_query(aid=aid, name=name, since=a.get("since"), until=a.get("until"),
                                               call=a.get("call"), limit=int(a.get("limit") or 1000))}

    def handle_audit(self, req: Request) -> Any:
        records = [r for r in req.args["records"] if isinstance(r, (bytes, dict))]
        return self.queue_op(req, self.db.audit_op(records))

    def handle_proc_save(self, req: Request) -> Any:
        row = req.args["row"]
        aid = int(row.get("aid", 0))
        return self.queue_op(req, self.db.raw_put_op("procs", struct.pack(">Q", aid), row))

    def handle_sto_put(self, req: Request) -> Any:
        return self.queue_op(req, self.db.raw_put_op(req.args["db"], bytes(req.args["key"]), req.args.get("value")))

    def handle_sto_drop(self, req: Request) -> Any:
        return self.queue_op(req, self.db.raw_drop_op(req.args["db"], bytes(req.args["prefix"]),
                                                                int(req.args.get("keep") or 0)))

    def handle_sto_last(self, req: Request) -> Any:
        self.flush()  # a put still queued must be visible, as for _sto_get
        key, value = self.db.raw_last(req.args["db"], bytes(req.args["prefix"]))
        return {"key": key, "value": value}

    def handle_sto_get(self, req: Request) -> Any:
        self.flush()  # a put still queued must be visible to the get that follows it
        db, key = req.args["db"], bytes(req.args["key"])
        value = self.db.raw_get(db, key)
        if req.args.get("delete"):
            self.commit_now([self.db.raw_put_op(db, key, None)])
        return value  # the stored value itself; a missing key is ENOENT


if __name__ == "__main__":
    run_manager(StorageManager)
