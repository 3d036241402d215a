"""What a request passes before it is served: identity, privilege, rate and LLM limits,
shared-memory ownership, and the access rules for the resource it names.

A mixin of Kernel (aiosd/kernel.py); every check raises AiosError with an errno name.
"""

from __future__ import annotations

import time
from typing import Any

from aiosd import audit
from aiosd.access import ROOT, Principal, drop_foreign_refs
from aiosd.errors import AiosError
from aiosd.limits import LLM_CALLS, check_alloc
from aiosd.ratelimit import TokenBucket
from aiosd.syscalls import Syscall


class Gate:
    def refuse_malformed(self, ident: bytes, user: bytes, t0: float, exc: AiosError) -> None:
        """A frame that is not a request at all: answered, and audited like any attempt."""
        self.audit_refused(self.aid_of(ident, user), "?", exc.code, t0)
        self.reply_front(ident, None, error=(exc.code, exc.message))

    def audit_refused(self, aid: int, call: str, code: str, t0: float) -> None:
        """Audit a request refused before admission. A flood of refusals (EBUSY over the rate,
        garbage, a wrong token) would fill the disk one record each: past 100 a second per
        caller they are counted, and the caller's next recorded refusal carries the count."""
        bucket = self.refusal_buckets.get(aid)
        if bucket is None:
            bucket = self.refusal_buckets[aid] = TokenBucket(100.0, 200.0)
        if not bucket.take():
            self.refusals_counted[aid] = self.refusals_counted.get(aid, 0) + 1
            self.counters["refusals_counted"] = self.counters.get("refusals_counted", 0) + 1
            return
        n = self.refusals_counted.pop(aid, 0)
        note = f"{n} earlier refused requests of this caller counted, not recorded one by one" if n else ""
        row = self.table.get(aid) if aid > 0 else None  # its name, so that the log says whose call it was
        self.audit.add(audit.record(aid, row.name if row else "", call, None, code, time.perf_counter() - t0, note))

    def identify(self, ident: bytes, user: bytes) -> tuple[Principal, Any]:
        if user == b"root":
            aid = self.impersonating.get(ident)
            if aid is None:
                return ROOT, None
        elif user.startswith(b"aid:"):
            aid = int(user[4:])
        else:
            raise AiosError("EACCES", "this connection presented no valid token")
        row = self.table.get(aid)
        if row is None or not row.status.alive:
            raise AiosError("EACCES", f"agent {aid} has exited; its token is no longer valid")
        p = row.principal
        if p is None:  # made once per agent: this runs on every request
            p = row.principal = Principal(row.aid, row.name, row.group or row.name, row.parent)
        return p, row

    def aid_of(self, ident: bytes, user: bytes) -> int:
        if user.startswith(b"aid:"):
            return int(user[4:])
        return self.impersonating.get(ident, 0) if user == b"root" else -1

    def admit(self, caller: Principal, row, sc: Syscall) -> None:
        if sc.privilege == "internal":
            raise AiosError("EPERM", f"{sc.name} is internal to the kernel")
        if sc.privilege == "root" and not caller.is_root:
            raise AiosError("EPERM", f"{sc.name} needs root")
        if row is not None and self.cfg.syscall_rate > 0:
            bucket = self.buckets.get(row.aid)
            if bucket is None:
                bucket = self.buckets[row.aid] = TokenBucket(self.cfg.syscall_rate, self.cfg.syscall_rate)
            if not bucket.take():
                raise AiosError("EBUSY", f"agent {row.aid} is over its syscall rate of {self.cfg.syscall_rate:g}/s")

    def check_refs(self, msg: dict) -> None:
        if drop_foreign_refs(msg.get("args"), self.agent_user()["user"]):
            raise AiosError("EACCES", "a shared-memory payload in this request is not the caller's")

    def check_limits(self, row, call: str, args: dict) -> None:
        """An agent's own ceilings: quotas it may not lift, LLM requests it may not queue."""
        if call in ("mem_alloc", "sto_alloc"):
            check_alloc(call, args["size"], row.memory_quota or self.cfg.memory_quota,
                        row.storage_quota or self.cfg.storage_quota)
        elif call in LLM_CALLS:
            self.llm_limits.admit(row.aid)  # counted until finish(); EBUSY over the limits

    def check_access(self, caller: Principal, sc: Syscall, args: dict) -> Any:
        """Resolve the call's target (another agent, or another name's storage) and check it."""
        if sc.target is None or args.get(sc.target) is None:
            return None
        value = args[sc.target]
        kind, _, mode = (sc.resource or "agent").partition(":")
        need = "r" if mode == "read" else "w"
        if sc.target == "owner":  # a storage namespace, by name
            owner = Principal(-1, str(value))
            if not self.rules.allowed(caller, kind, owner, need):
                raise AiosError("EACCES", f"{self.who(caller)} may not {'read' if need == 'r' else 'write'} "
                                          f"{kind} of '{value}'")
            return str(value)
        row = self.table.get(int(value))
        if row is None:
            raise AiosError("ESRCH", f"no agent {value}")
        target = Principal(row.aid, row.name, row.group or row.name, row.parent)
        if kind == "agent":
            if mode == "read" or self.rules.may_control(caller, target):
                return row.aid
            raise AiosError("EPERM", f"{self.who(caller)} may not control agent {row.aid}")
        if not self.rules.allowed(caller, kind, target, need):
            raise AiosError("EACCES", f"{self.who(caller)} may not {'read' if need == 'r' else 'change'} "
                                      f"{kind} of agent {row.aid}")
        return row.aid

    @staticmethod
    def who(p: Principal) -> str:
        return "root" if p.is_root else f"agent {p.aid}"

