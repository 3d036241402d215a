"""sto_read, sto_versions and sto_list served by the kernel itself, from a read-only view
of data/storage.lmdb.

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

from aiosd.access import Principal
from aiosd.errors import AiosError
from aiosd.storage_db import StorageReader, TooBig, check_ns
from aiosd.supervisor import MgrState
from aiosd.syscalls import Syscall

log = logging.getLogger("aiosd")
LOCAL_READS = frozenset({"sto_read", "sto_versions", "sto_list"})
MAX_LOCAL_READ = 1 << 20


class LocalReads:
    reader: StorageReader | None = None

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
        """Answer a read here; False when it must go to the storage manager instead."""
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
