"""sto_read, sto_versions and sto_list served by the kernel itself, from a read-only view
of data/storage.lmdb; mem_read of one's own record by key from the memory manager's mirror
(aiosd/memory_mirror.py explains that one).

A read forwarded to the storage manager costs two more messages and a process hop, which
on a small machine cost more than the read; LMDB lets any number of processes read beside
its one writer, so the kernel reads directly. The storage manager stays the only writer.
A write is acknowledged only after storage has committed it, and every read here begins a
fresh transaction, so a read that follows an acknowledged write sees it. Access checks and
the audit record are those of every kernel-served call (Gate.check_access, answer()).
Reads of values over MAX_LOCAL_READ are still forwarded, so one big copy never stalls the
kernel's loop; so is everything while the storage manager has not yet created the database.

A mixin of Kernel (aiosd/kernel.py).
"""

from __future__ import annotations

import logging
from typing import Any

import lmdb

from aiosd import protocol
from aiosd.access import Principal
from aiosd.errors import AiosError
from aiosd.memory_mirror import MirrorReader
from aiosd.storage_db import StorageReader, TooBig
from aiosd.storage_paths import check_ns
from aiosd.supervisor import MgrState
from aiosd.syscalls import Syscall

log = logging.getLogger("aiosd")
LOCAL_READS = frozenset({"sto_read", "sto_versions", "sto_list", "mem_read"})
MIRROR_ARGS = frozenset({"key"})  # the only mem_read the mirror answers: one's own record by key
MAX_LOCAL_READ = 1 << 20


class LocalReads:
    reader: StorageReader | None = None
    mirror: MirrorReader | None = None
    mem_touches: list | None = None

    def memory_mirror(self) -> MirrorReader | None:
        m = self.sup.procs.get("memory")
        if m is None or m.state != MgrState.RUNNING:  # a dead manager's mirror is not served
            return None
        if self.mirror is None:
            try:
                self.mirror = MirrorReader(self.cfg.run_dir / "memory.lmdb")
            except lmdb.Error:
                return None
        return self.mirror

    def serve_mirror_read(self, ident: bytes, req_id: Any, caller: Principal, args: dict, t0: float) -> bool:
        """mem_read of one's own record by key, from the memory manager's mirror; False to forward."""
        if not isinstance(args.get("key"), str) or any(v is not None for k, v in args.items() if k not in MIRROR_ARGS):
            return False
        mirror = self.memory_mirror()
        if mirror is None:
            return False
        try:
            rec = mirror.get(caller.aid, args["key"])
        except (lmdb.Error, AiosError) as exc:
            log.warning("kernel read of the memory mirror failed (%s); forwarding", exc)
            self.mirror = None
            return False
        if rec is None:  # not resident (swapped out, never written): the manager decides
            return False
        if self.mem_touches is None:
            self.mem_touches = []
        self.mem_touches.append((caller.aid, args["key"]))
        self.answer(ident, req_id, caller, "mem_read", args, t0, result={"records": [rec]})
        return True

    def flush_mem_touches(self) -> None:
        """Tell the memory manager which records the kernel read, so its LRU order holds."""
        m = self.sup.procs.get("memory")
        if self.mem_touches and m is not None and m.ident is not None and m.state == MgrState.RUNNING:
            self.post(m.ident, protocol.pack({"event": "mem_touch", "touches": self.mem_touches}))
        self.mem_touches = None

    def storage_reader(self) -> StorageReader | None:
        if self.reader is None:
            m = self.sup.procs.get("storage")
            if m is None or m.state != MgrState.RUNNING:  # not yet created (or storage is off)
                return None
            try:
                self.reader = StorageReader.open_readonly(self.cfg.data_dir / "storage.lmdb")
            except lmdb.Error as exc:
                log.warning("reading storage from the kernel failed (%s); forwarding reads", exc)
                return None
        return self.reader

    def serve_local_read(
        self, ident: bytes, req_id: Any, caller: Principal, sc: Syscall, args: dict, target: Any, t0: float
    ) -> bool:
        """Answer a read here; False when it must go to its manager instead."""
        if sc.name == "mem_read":
            return target is None and self.serve_mirror_read(ident, req_id, caller, args, t0)
        reader = self.storage_reader()
        if reader is None:
            return False
        try:
            # the namespace storage would use: the caller's name, or an owner check_access approved
            if args.get("owner") is not None and not target:
                raise AiosError("EACCES", f"no grant to use the storage of '{args['owner']}'")
            ns = check_ns(str(target) if args.get("owner") is not None else caller.name)
            if sc.name == "sto_read":
                result = reader.read(ns, args["path"], args.get("version"), max_size=MAX_LOCAL_READ)
            elif sc.name == "sto_versions":
                result = {"versions": reader.versions(ns, args["path"])}
            else:
                result = {"paths": reader.list(ns, args.get("prefix") or "")}
        except TooBig:
            return False
        except AiosError as exc:
            self.answer(ident, req_id, caller, sc.name, args, t0, error=(exc.code, exc.message))
            return True
        except lmdb.Error as exc:  # the environment went away under us: reopen on the next read
            log.warning("kernel read of storage failed (%s); forwarding", exc)
            self.reader = None
            return False
        self.answer(ident, req_id, caller, sc.name, args, t0, result=result)
        return True
