"""The process table: agents as rows, states as an enum. Pure bookkeeping, no I/O."""

from __future__ import annotations

import enum
import signal
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


class AgentState(enum.StrEnum):
    CREATED = "CREATED"      # row made, process not started yet
    READY = "READY"          # process started, no syscall yet
    RUNNING = "RUNNING"      # on the CPU, or between syscalls
    WAITING = "WAITING"      # blocked in a syscall (llm_chat in the queue, ...)
    SUSPENDED = "SUSPENDED"  # SIGSTOPped, its requests parked
    EXITED = "EXITED"        # ended on its own; exit_code holds its status
    KILLED = "KILLED"        # ended by a signal; exit_code is -signal

    @property
    def alive(self) -> bool:
        return self not in (AgentState.EXITED, AgentState.KILLED)


@dataclass
class AgentRow:
    aid: int
    name: str
    argv: list
    parent: int = 0
    priority: int = 0
    pid: int = 0
    status: AgentState = AgentState.CREATED
    exit_code: int | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    cpu_s: float = 0.0
    rss_bytes: int = 0
    syscalls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    llm_requests: int = 0
    queue_wait_s: float = 0.0
    inflight: int = 0
    tools: list | None = None
    memory_quota: int | None = None
    storage_quota: int | None = None
    context_strategy: str | None = None
    group: str = ""
    token: str = field(default="", repr=False)  # never leaves the kernel
    principal: object = field(default=None, repr=False, compare=False)  # cached by the kernel

    def public(self) -> dict:
        """The row as aios-ps --json shows it (pinned keys first); no secrets."""
        end = self.ended_at or time.time()
        return {
            "aid": self.aid, "pid": self.pid, "name": self.name, "status": self.status.value,
            "priority": self.priority, "exit_code": self.exit_code, "cpu_s": round(self.cpu_s, 3),
            "rss_bytes": self.rss_bytes, "syscalls": self.syscalls, "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out, "uptime_s": round(end - self.started_at, 3),
            "started_at": self.started_at, "ended_at": self.ended_at, "parent": self.parent,
            "group": self.group or self.name, "llm_requests": self.llm_requests,
            "queue_wait_s": round(self.queue_wait_s, 4), "argv": list(self.argv),
        }


class ProcessTable:
    def __init__(self, keep_ended: int = 10_000) -> None:
        self.rows: dict[int, AgentRow] = {}
        self.by_pid: dict[int, int] = {}
        self.next_aid = 1
        self.keep_ended = keep_ended
        self.ended_aids: deque[int] = deque()  # oldest first

    def restore(self, saved: Iterable[dict], last_aid: int) -> None:
        """Take in the rows that earlier kernels on this home saved (LMDB `procs`), so that aids
        stay unique across restarts (the audit log, agent logs and grants name agents by aid)
        and `aios-ps -a` still shows them. A row saved while its agent was alive belongs to an
        agent that died with its kernel: PR_SET_PDEATHSIG sent it SIGKILL."""
        self.next_aid = max(self.next_aid, last_aid + 1)
        for d in saved:
            try:
                row = AgentRow(aid=int(d["aid"]), name=str(d["name"]), argv=list(d.get("argv") or []),
                               parent=int(d.get("parent") or 0), priority=int(d.get("priority") or 0),
                               pid=int(d.get("pid") or 0), status=AgentState(d["status"]),
                               exit_code=d.get("exit_code"), started_at=float(d["started_at"]),
                               ended_at=d.get("ended_at"), cpu_s=float(d.get("cpu_s") or 0.0),
                               rss_bytes=int(d.get("rss_bytes") or 0), syscalls=int(d.get("syscalls") or 0),
                               tokens_in=int(d.get("tokens_in") or 0), tokens_out=int(d.get("tokens_out") or 0),
                               llm_requests=int(d.get("llm_requests") or 0), group=str(d.get("group") or ""))
            except (KeyError, TypeError, ValueError):
                continue  # a row this version cannot read is left out of the listing, not fatal
            if row.status.alive:
                row.status, row.exit_code = AgentState.KILLED, -signal.SIGKILL
                row.ended_at = row.started_at + float(d.get("uptime_s") or 0.0)
            if row.aid not in self.rows:
                self.rows[row.aid] = row
                self._retire(row.aid)
            self.next_aid = max(self.next_aid, row.aid + 1)

    def create(self, name: str, argv: list, parent: int = 0, priority: int = 0) -> AgentRow:
        row = AgentRow(aid=self.next_aid, name=name, argv=argv, parent=parent, priority=priority)
        self.next_aid += 1
        self.rows[row.aid] = row
        return row

    def started(self, row: AgentRow, pid: int) -> None:
        row.pid = pid
        row.status = AgentState.READY
        self.by_pid[pid] = row.aid

    def get(self, aid: int) -> AgentRow | None:
        return self.rows.get(aid)

    def ended(self, pid: int, status: int) -> AgentRow | None:
        """Record a reaped child's wait status; returns its row (None: not an agent)."""
        aid = self.by_pid.pop(pid, None)
        row = self.rows.get(aid) if aid is not None else None
        if row is None:
            return None
        self.finish(row, status)
        return row

    def finish(self, row: AgentRow, code: int, status: AgentState | None = None) -> None:
        """The agent ended with `code` (-N: killed by signal N). The oldest ended rows leave the
        table past `keep_ended` (they stay in LMDB), so a daemon that runs for months and
        millions of agents does not grow without bound."""
        row.ended_at = time.time()
        row.token = ""
        row.inflight = 0
        row.exit_code = code
        row.status = status or (AgentState.KILLED if code < 0 else AgentState.EXITED)
        self._retire(row.aid)

    def _retire(self, aid: int) -> None:
        self.ended_aids.append(aid)
        while len(self.ended_aids) > self.keep_ended:
            self.rows.pop(self.ended_aids.popleft(), None)

    def syscall_begin(self, row: AgentRow, waits: bool) -> None:
        row.syscalls += 1
        if row.status in (AgentState.READY, AgentState.CREATED):
            row.status = AgentState.RUNNING
        if waits:
            row.inflight += 1
            if row.status == AgentState.RUNNING:
                row.status = AgentState.WAITING

    def syscall_end(self, row: AgentRow, waited: bool) -> None:
        if waited and row.inflight > 0:
            row.inflight -= 1
        if row.inflight == 0 and row.status == AgentState.WAITING:
            row.status = AgentState.RUNNING

    def alive(self) -> list[AgentRow]:
        return [r for r in self.rows.values() if r.status.alive]

    def listing(self, include_exited: bool) -> list[AgentRow]:
        return [r for r in self.rows.values() if include_exited or r.status.alive]

    def children(self, aid: int) -> list[AgentRow]:
        return [r for r in self.rows.values() if r.parent == aid]
