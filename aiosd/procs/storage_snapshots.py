"""Agent snapshots, a mixin of the storage manager: memory, context and stored files of an
agent at one moment (createAgentSnapshot), and putting them back (rollbackAgentState)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiosd.errors import AiosError
from aiosd.procs.base import Request
from aiosd.storage_db import StorageDB


class AgentSnapshots:
    db: StorageDB
    # the manager's own: the namespace a call touches, commit what is queued, commit these
    # ops now, call another manager through the kernel
    ns: Callable[[Request], str]
    flush: Callable[[], None]
    commit_now: Callable[[list], list]
    call: Callable[..., Any]

    def handle_snapshot_create(self, req: Request) -> Any:
        ns = self.ns(req)
        self.flush()
        memory = self.call("_mem_dump", {"aid": req.aid}).get("records", [])
        try:
            context = self.call("_ctx_dump", {"aid": req.aid}, timeout=10.0)
        except AiosError:  # an llm worker without contexts: the snapshot holds none
            context = None
        files = {p: self.db.read(ns, p)["data"] for p in self.db.list(ns)}
        sid = f"snap-{time.time_ns():x}"
        snap = {"id": sid, "label": req.args.get("label") or "", "time": time.time(), "aid": req.aid,
                "n_records": len(memory), "n_files": len(files), "charged": True,
                "memory": memory, "context": context, "files": files}
        put = self.commit_now([self.db.snapshot_put_op(ns, sid, snap)])[0]
        return {"snapshot": sid, "records": len(memory), "files": len(files), "context": context is not None,
                "bytes": put["bytes"]}

    def handle_snapshot_list(self, req: Request) -> Any:
        return {"snapshots": self.db.snapshot_list(self.ns(req))}

    def handle_snapshot_delete(self, req: Request) -> Any:
        return self.commit_now([self.db.snapshot_delete_op(self.ns(req), req.args["snapshot"])])[0]

    def handle_snapshot_restore(self, req: Request) -> Any:
        ns, sid = self.ns(req), req.args["snapshot"]
        snap = self.db.snapshot_get(ns, sid)
        self.flush()
        ops = [self.db.delete_op(ns, p) for p in self.db.list(ns) if p not in snap["files"]]
        for path, data in snap["files"].items():
            try:
                same = self.db.read(ns, path)["data"] == data
            except AiosError:
                same = False
            if not same:  # rollback is a new version, so the rolled-over one stays readable
                ops.append(self.db.write_op(ns, path, data))
        self.commit_now(ops)
        self.call("_mem_load", {"aid": req.aid, "records": snap["memory"]})
        restored_ctx = False
        if snap.get("context") is not None:
            try:
                self.call("_ctx_load", {"aid": req.aid, "context": snap["context"]}, timeout=10.0)
                restored_ctx = True
            except AiosError:
                pass
        return {"snapshot": sid, "records": len(snap["memory"]), "files": len(snap["files"]),
                "context": restored_ctx}
