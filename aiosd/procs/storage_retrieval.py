"""sto_retrieve, a mixin of the storage manager: rank an agent's stored texts by embedding
similarity to a query. Runs on the manager's one retrieval thread, so that embedding never
holds up the loop that commits writes; fresh vectors go back to the loop to be written to the
`index` sub-database, since the loop is LMDB's only writer."""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aiosd import protocol
from aiosd.embed import Embedder, top_k
from aiosd.errors import AiosError
from aiosd.procs.base import DEFERRED, Request
from aiosd.storage_db import StorageDB
from aiosd.storage_paths import vkey


class Retrieval:
    db: StorageDB
    embedder: Embedder
    pool: ThreadPoolExecutor
    done: queue.Queue
    jobs: int
    ns: Callable[[Request], str]  # the manager's: the namespace a call touches

    def handle_sto_retrieve(self, req: Request) -> Any:
        ns, query, k = self.ns(req), req.args["query"], int(req.args.get("k") or 5)
        self.embedder.start()
        self.jobs += 1
        self.pool.submit(self._retrieve_job, req.id, ns, query, k)
        return DEFERRED

    def _retrieve_job(self, rid: Any, ns: str, query: str, k: int) -> None:
        try:
            self.done.put((rid, self.retrieve(ns, query, k), None))
        except AiosError as exc:
            self.done.put((rid, None, exc))
        except Exception as exc:  # a bug here must still answer the caller
            self.done.put((rid, None, AiosError("EIO", f"retrieval failed: {type(exc).__name__}: {exc}")))

    def retrieve(self, ns: str, query: str, k: int) -> dict:
        """Rank the latest version of every text file in the namespace by similarity."""
        docs, vecs, todo = [], [], []
        with self.db.env.begin(buffers=False) as txn:
            for path in self.db.list(ns):
                meta = self.db.file_meta(txn, ns, path)
                key = vkey(ns, path, meta["v"])
                try:
                    text = self.db.version_bytes(txn, meta, path, meta["v"]).decode()
                except UnicodeDecodeError:
                    continue  # binary files are not retrievable text
                if "\0" in text or not text.strip():
                    continue
                cached = txn.get(key, db=self.db.db["index"])
                vec = np.frombuffer(protocol.unpack(cached, 1 << 20), dtype=np.float32) if cached else None
                if vec is None:
                    todo.append(len(docs))
                docs.append({"path": path, "version": meta["v"], "text": text, "key": key})
                vecs.append(vec)
        if todo:
            fresh = self.embedder.encode([docs[i]["text"][:8192] for i in todo])
            for j, i in enumerate(todo):
                vecs[i] = fresh[j]
            self.jobs += 1
            self.done.put(("index", [(docs[i]["key"], fresh[j].tobytes()) for j, i in enumerate(todo)], None))
        if not docs:
            return {"results": []}
        q = self.embedder.encode([query])[0]
        ranked = top_k(q, np.stack(vecs), k)
        return {"results": [{"path": docs[i]["path"], "version": docs[i]["version"], "score": s,
                             "text": docs[i]["text"][:4096]} for i, s in ranked]}
