"""The memory manager: per-agent short-term memory with quotas and K-LRU swap to storage.

Logic lives in aiosd.memory_store; this module wires it to the kernel, swaps records
out to (and back from) storage's `history` database, and runs embedding searches in a
worker thread so a search never stalls other agents' reads.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aiosd import protocol
from aiosd.embed import Embedder, top_k
from aiosd.errors import AiosError
from aiosd.memory_mirror import MemoryMirror
from aiosd.memory_store import SWAP_PREFIX, AgentMemory, MemoryStore, persist_key, persist_prefix, swap_key
from aiosd.procs.base import DEFERRED, Manager, Request, run_manager

log = logging.getLogger("aiosd")


def as_text(content: Any) -> str:
    if isinstance(content, bytes):
        return content.decode(errors="replace")
    return content if isinstance(content, str) else str(content)


class MemoryManager(Manager):
    name = "memory"
    batch_replies = True

    def setup(self) -> None:
        self.mirror = MemoryMirror(self.cfg.run_dir / "memory.lmdb")
        self.store = MemoryStore(self.cfg.memory_quota, self.cfg.memory_policy, watch=self.mirror.changed)
        self.embedder = Embedder(threads=1)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.done: queue.Queue = queue.Queue()
        self.jobs = 0
        self.kernel_pid = os.getppid()

    def setup_background(self) -> None:
        self.embedder.start()  # ~seconds; requests are served meanwhile, searches wait
        self.drop_left_over("history", SWAP_PREFIX, "swapped-out records")

    # ---- plumbing -----------------------------------------------------------------------
    def own(self, req: Request) -> AgentMemory:
        return self.store.get(req.aid, quota=req.ctx.get("memory_quota"))

    def target(self, req: Request) -> AgentMemory:
        """The memory a call reads: another agent's if the kernel approved `aid`, else the caller's."""
        if req.args.get("aid") is not None and req.ctx.get("target") is not None:
            aid = int(req.ctx["target"])
            if aid != req.aid:
                return self.store.get(aid)
        return self.own(req)

    def call_many(self, calls: list[tuple[str, dict]], timeout: float = 30.0) -> list[Any]:
        """Send several internal calls at once (storage commits them in one batch) and wait
        for all; each result is the value or the AiosError."""
        ids: dict[str, int] = {}
        for i, (call, args) in enumerate(calls):
            rid = f"m{next(self._ids)}"
            ids[rid] = i
            self.send({"id": rid, "call": call, "args": protocol.offload(args, self.cfg.shm_threshold), "aid": 0})
        self.flush_out()
        results: list[Any] = [None] * len(calls)
        deadline = time.monotonic() + timeout
        while ids:
            left = deadline - time.monotonic()
            if left <= 0:
                err = AiosError("ETIMEDOUT", "storage did not answer in time")
                for i in ids.values():
                    results[i] = err
                break
            if not self.sock.poll(int(left * 1000)):
                continue
            for msg in self.recv_msgs(self.sock.recv()):
                if isinstance(msg, dict) and msg.get("id") in ids and "ok" in msg:
                    i = ids.pop(msg["id"])
                    results[i] = (protocol.resolve(msg.get("result")) if msg["ok"]
                                  else AiosError.from_wire(msg.get("error")))
                else:
                    self._stash.append(msg)
        return results

    def swap_out(self, mem: AgentMemory, records: list[dict]) -> None:
        if not records:
            return
        res = self.call_many([("_sto_put", {"db": "history", "key": swap_key(mem.aid, r["id"]), "value": r})
                              for r in records])
        failed = [r for r, x in zip(records, res, strict=True) if isinstance(x, AiosError)]
        mem.on_disk.update(r["id"] for r, x in zip(records, res, strict=True) if not isinstance(x, AiosError))
        if failed:  # storage is away: keep them here, over quota, rather than lose them
            log.warning("memory: could not swap out %d records of agent %d: %s", len(failed), mem.aid,
                        next(x for x in res if isinstance(x, AiosError)))
            mem.restore(failed)

    def swap_fetch(self, mem: AgentMemory, ids: list[int]) -> list[dict]:
        res = self.call_many([("_sto_get", {"db": "history", "key": swap_key(mem.aid, i)}) for i in ids])
        out = []
        for rid, x in zip(ids, res, strict=True):
            if isinstance(x, AiosError):
                raise AiosError("EIO", f"record {rid} of agent {mem.aid} is swapped out and storage "
                                       f"could not return it: {x.message}")
            out.append(x)
        return out

    def drop_disk(self, mem: AgentMemory, ids: list[int]) -> None:
        ids = [i for i in ids if i in mem.on_disk]
        if ids:
            self.call_many([("_sto_put", {"db": "history", "key": swap_key(mem.aid, i), "value": None})
                            for i in ids])
            mem.on_disk.difference_update(ids)

    def everything(self, mem: AgentMemory) -> list[dict]:
        """Every record, swapped ones fetched but not swapped in."""
        found, missing = {i: r for i, r in mem.resident.items()}, mem.swapped_out()
        for rec in self.swap_fetch(mem, missing):
            found[rec["id"]] = rec
        return [found[i] for i in mem.ids if i in found]

    # ---- calls --------------------------------------------------------------------------
    def handle_mem_alloc(self, req: Request) -> Any:
        mem = self.own(req)
        self.swap_out(mem, mem.set_quota(int(req.args["size"])))
        return {"quota": mem.quota, "used": mem.used}

    def handle_mem_write(self, req: Request) -> Any:
        a = req.args
        mem = self.own(req)
        rid, evicted = mem.write(a["content"], a.get("role") or "user", a.get("key"), a.get("metadata"))
        self.swap_out(mem, evicted)
        return {"id": rid}

    def handle_mem_read(self, req: Request) -> Any:
        a = req.args
        mem = self.target(req)
        ids = mem.select(a.get("key"), a.get("last"), a.get("start"), a.get("end"))
        found, missing = mem.fetch(ids)
        if missing:
            back = self.swap_fetch(mem, missing)
            for rec in back:
                found[rec["id"]] = rec
            _, evicted = mem.swap_in(back, protect=set(ids))
            self.swap_out(mem, evicted)
        return {"records": [found[i] for i in ids if i in found]}

    def handle_mem_clear(self, req: Request) -> Any:
        a = req.args
        mem = self.target(req)
        ids = mem.clear(a.get("key"), a.get("record"), bool(a.get("all")))
        self.drop_disk(mem, ids)
        return {"cleared": len(ids)}

    def handle_mem_persist(self, req: Request) -> Any:
        mem = self.own(req)
        mem.persist = bool(req.args["on_exit"])
        return {"persist": mem.persist}

    def handle_mem_restore(self, req: Request) -> Any:
        mem = self.own(req)
        try:
            found = self.call("_sto_last", {"db": "history", "prefix": persist_prefix(req.name)}, timeout=10.0)
        except AiosError as exc:
            if exc.code == "ENOENT":
                raise AiosError("ENOENT", f"no agent named '{req.name}' persisted its memory "
                                          "(mem_persist(on_exit=True) before it exits)") from None
            raise
        value = found.get("value")
        self.replace(mem, [r for r in value if isinstance(r, dict) and "id" in r] if isinstance(value, list) else [])
        return {"records": len(mem.ids), "from_aid": int(bytes(found["key"])[-12:])}

    def handle_mem_search(self, req: Request) -> Any:
        mem = self.target(req)
        k = int(req.args.get("k") or 5)
        need = [i for i in mem.ids if i not in mem.vectors]
        texts = {i: as_text(r["content"]) for i, r in mem.resident.items() if i in need}
        swapped = [i for i in need if i not in texts]
        for rec in self.swap_fetch(mem, swapped):
            texts[rec["id"]] = as_text(rec["content"])
        self.jobs += 1
        self.pool.submit(self._embed_job, req.id, mem, req.args["query"], k, texts)
        return DEFERRED

    def _embed_job(self, rid: Any, mem: AgentMemory, query: str, k: int, texts: dict[int, str]) -> None:
        try:
            ids = list(texts)
            vecs = self.embedder.encode([texts[i][:8192] for i in ids] + [query])
            self.done.put((rid, mem, k, dict(zip(ids, vecs[:-1], strict=True)), vecs[-1], None))
        except AiosError as exc:
            self.done.put((rid, mem, k, {}, None, exc))
        except Exception as exc:
            self.done.put((rid, mem, k, {}, None, AiosError("EIO", f"embedding failed: {exc}")))

    def finish_search(self, rid: Any, mem: AgentMemory, k: int, fresh: dict, q: Any) -> None:
        for i, v in fresh.items():
            if i in mem.sizes:  # not cleared while we were embedding
                mem.vectors[i] = v
        ids = [i for i in mem.ids if i in mem.vectors]
        if not ids:
            return self.reply(rid, {"records": []})
        ranked = top_k(q, np.stack([mem.vectors[i] for i in ids]), k)
        pick = [ids[j] for j, _ in ranked]
        found, missing = mem.fetch(pick)
        for rec in self.swap_fetch(mem, missing):
            found[rec["id"]] = rec
        self.reply(rid, {"records": [{**found[ids[j]], "score": s} for j, s in ranked]})

    def tick(self) -> float | None:
        if not self.jobs:  # the common case: no search running, and queue.Empty costs microseconds
            return None
        while True:
            try:
                rid, mem, k, fresh, q, err = self.done.get_nowait()
            except queue.Empty:
                break
            self.jobs -= 1
            if err is not None:
                self.fail(rid, err.code, err.message)
                continue
            try:
                self.finish_search(rid, mem, k, fresh, q)
            except AiosError as exc:
                self.fail(rid, exc.code, exc.message)
        if self.jobs and os.getppid() == self.kernel_pid:
            # the kernel pings only managers it has not heard from, and our short ticks keep
            # our own heartbeats too regular for that; while a job runs, a live parent (the
            # kernel) is the liveness proof, so the base loop does not think it lost it
            self._last_rx = time.monotonic()
        return 0.005 if self.jobs else None

    # ---- snapshots and lifetime ---------------------------------------------------------
    def handle_mem_dump(self, req: Request) -> Any:
        mem = self.store.peek(int(req.args["aid"]))
        return {"records": self.everything(mem) if mem else []}

    def handle_mem_load(self, req: Request) -> Any:
        mem = self.store.get(int(req.args["aid"]))
        self.replace(mem, [r for r in req.args["records"] if isinstance(r, dict) and "id" in r])
        return {"records": len(mem.ids)}

    def replace(self, mem: AgentMemory, records: list[dict]) -> None:
        """Everything the agent held goes; `records` take its place (what does not fit is swapped out)."""
        self.drop_disk(mem, list(mem.on_disk))
        self.swap_out(mem, mem.load(records))

    def flush_out(self) -> None:
        self.mirror.commit()  # what the kernel may read must be there before any answer leaves
        super().flush_out()

    def on_event(self, event: dict) -> None:
        if event.get("event") == "mem_touch":  # reads the kernel answered from the mirror
            for aid, key in event.get("touches") or ():
                mem = self.store.peek(aid) if isinstance(aid, int) else None
                if mem is not None and isinstance(key, str):
                    mem.touch(key)
            return
        if event.get("event") != "agent_exit":
            return
        mem = self.store.peek(int(event.get("aid", -1)))
        if mem is None:
            return
        try:
            if mem.persist:
                name = event.get("name") or f"aid{mem.aid}"
                self.call("_sto_put", {"db": "history", "key": persist_key(name, mem.aid),
                                       "value": self.everything(mem)})
                # a name run daily would otherwise keep every run's memory for good
                self.call("_sto_drop", {"db": "history", "prefix": persist_prefix(name),
                                        "keep": self.cfg.persist_kept})
            self.drop_disk(mem, list(mem.on_disk))
        finally:
            self.store.release(mem.aid)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.mirror.commit()
        self.mirror.close()


if __name__ == "__main__":
    run_manager(MemoryManager)
