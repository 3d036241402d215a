"""Agent rows carried by a manager process instead of a process of their own.

The HTTP gateway serves many API keys from one process; each key is an agent (an aid, a
priority, a tool allowlist, quotas, an audit trail) whose pid is the gateway's. A mixin
of Kernel: the kernel never signals or reaps the carrier's pid on such a row's behalf;
ending the row is bookkeeping, and every row a carrier holds ends when the carrier dies.
"""

from __future__ import annotations

import signal

from aiosd.errors import AiosError
from aiosd.proctable import AgentRow, AgentState
from aiosd.supervisor import MgrState

ENDING_SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP)


class AttachCalls:
    attached: dict[int, int]  # aid -> pid of the manager that carries it

    def k_attach_agent(self, caller, args, target, h):
        carrier = args.get("manager") or "gateway"
        m = self.sup.procs.get(carrier)
        if m is None or m.state != MgrState.RUNNING or not m.pid:
            raise AiosError("EINVAL", f"no running manager '{carrier}' to carry an agent")
        name = args["name"]
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise AiosError("EINVAL", "an agent name is letters, digits, '-', '_' and '.', at most 64")
        row = self.table.create(name, [f"<{carrier}>", name], parent=0, priority=args.get("priority") or 0)
        row.tools = args.get("tools")
        # not table.started(): that would map the carrier's pid to this row, and reaping the
        # carrier would then be taken for this agent's death
        row.pid, row.status = m.pid, AgentState.READY
        row.stats_at = float("inf")  # the carrier's CPU and RSS in /proc are not this agent's
        self.attached[row.aid] = m.pid
        self.save_row(row)
        return row.aid

    def k_detach_agent(self, caller, args, target, h):
        row = self.table.get(args["aid"])
        if row is None or row.aid not in self.attached:
            raise AiosError("ESRCH", f"no attached agent {args['aid']}")
        self.end_attached(row, args.get("exit_code") or 0)
        return self.view(row)

    def signal_attached(self, row: AgentRow, sig: int) -> None:
        """What a signal means to a row with no process: the ending ones end it, others do nothing
        (suspend and resume are the scheduler's business, done by the callers)."""
        if sig in ENDING_SIGNALS:
            self.end_attached(row, -sig, AgentState.KILLED)

    def carrier_died(self, pid: int, code: int) -> None:
        for aid, carrier in list(self.attached.items()):
            row = self.table.get(aid)
            if carrier == pid and row is not None:
                self.end_attached(row, code, AgentState.EXITED)

    def end_attached(self, row: AgentRow, code: int, status: AgentState | None = None) -> None:
        self.attached.pop(row.aid, None)
        if not row.status.alive:
            return
        self.table.finish(row, code, status)
        self.agent_gone(row)
