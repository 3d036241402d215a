"""The syscalls the kernel serves itself about access, sealed data and the system: grants,
encrypt/decrypt with per-name keys, status, metrics, run-time settings and stop.

A mixin of Kernel (aiosd/kernel.py), as KernelCalls is: one `k_<syscall>` method per call.
"""

from __future__ import annotations

import os
import time

from aiosd import crypto
from aiosd.access import Principal
from aiosd.config import check_value, coerce
from aiosd.errors import AiosError

RUNTIME_SETTINGS = ("scheduler", "quantum", "max_batch", "max_batch_tokens", "syscall_rate", "context_window",
                    "llm_tokens_per_min")


class SystemCalls:
    # ---- access --------------------------------------------------------------------------
    def k_grant(self, caller, args, target, h):
        g = self.rules.grant(caller, args["resource"], args["grantee"], args.get("rights") or "r")
        return {"owner": g.owner, "resource": g.resource, "grantee": g.grantee, "rights": g.rights}

    def k_revoke(self, caller, args, target, h):
        return self.rules.revoke(caller, args["resource"], args["grantee"], args.get("rights") or "rw")

    def k_encrypt_data(self, caller, args, target, h):
        data = args["data"]
        return crypto.seal(self.master_key(), caller.name, data.encode() if isinstance(data, str) else data)

    def k_decrypt_data(self, caller, args, target, h):
        owner = crypto.owner_of(args["blob"])
        if owner != caller.name and not self.rules.allowed(caller, "crypto", Principal(-1, owner), "r"):
            raise AiosError("EACCES", f"{self.who(caller)} may not decrypt data of '{owner}'")
        return crypto.open_sealed(self.master_key(), args["blob"])

    def master_key(self) -> bytes:
        if not hasattr(self, "_master"):
            self._master = crypto.load_master_key(self.cfg.home / "master.key")
        return self._master

    # ---- system --------------------------------------------------------------------------
    def k_sys_status(self, caller, args, target, h):
        return {"pid": os.getpid(), "home": str(self.cfg.home), "uptime_s": round(time.time() - self.started_at, 1),
                "managers": [m.describe() for m in self.sup.procs.values()],
                "agents": len(self.table.alive()), "scheduler": self.cfg.scheduler}

    def k_sys_metrics(self, caller, args, target, h):
        return {**self.counters, "pending": len(self.pending), "held": len(self.held),
                "agents_alive": len(self.table.alive()), "agents_total": len(self.table.rows)}

    def k_sys_set(self, caller, args, target, h):
        clean = {}
        for key, value in args["settings"].items():
            if key not in RUNTIME_SETTINGS:
                raise AiosError("EINVAL", f"'{key}' cannot be changed at run time "
                                          f"(one of {', '.join(RUNTIME_SETTINGS)})")
            clean[key] = coerce(self.cfg, key, value, "aiosd set")
            check_value(key, clean[key], "aiosd set")
        self.apply_settings(clean)
        return clean

    def apply_settings(self, clean: dict) -> None:
        """Run-time settings, checked: in the kernel, and to every manager (`aiosd set`, SIGHUP)."""
        for key, value in clean.items():
            setattr(self.cfg, key, value)
        self.llm_limits.tokens_per_min = self.cfg.llm_tokens_per_min
        self.broadcast({"event": "config", "settings": clean})

    def k_sys_stop(self, caller, args, target, h):
        self.begin_stop()
        return True
