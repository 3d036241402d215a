"""The syscalls the kernel serves itself about agents: their identity, status, priority,
signals, spawning and ending (access, crypto and the system calls: aiosd/kernel_sys.py).

A mixin of Kernel (aiosd/kernel.py), one `k_<syscall>` method per call; each gets the
caller, the checked arguments, the resolved target and a handle to answer later
(`DEFERRED`, for wait_agent).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import time
import traceback

from aiosd import audit, protocol
from aiosd.access import Principal, agent_ids
from aiosd.errors import AiosError
from aiosd.limits import check_child
from aiosd.procfs import proc_stats
from aiosd.proctable import AgentRow, AgentState
from aiosd.supervisor import MgrState, child_setup

log = logging.getLogger("aiosd")
DEFERRED = object()
IMPERSONATING_CAP = 65_536  # connections remembered as acting as an agent (set_aid)


class KernelCalls:
    # ---- plumbing ------------------------------------------------------------------------
    def serve_kernel_call(self, ident, req_id, caller: Principal, row, sc, args, target, t0,
                          refs: bool = False) -> None:
        handler = getattr(self, "k_" + sc.name)
        try:
            if refs:  # payloads over the threshold came through shared memory (encrypt_data's)
                args = protocol.resolve(args)
            result = handler(caller, args, target, (ident, req_id, t0))
        except AiosError as exc:
            return self.answer(ident, req_id, caller, sc.name, args, t0, error=(exc.code, exc.message))
        except Exception as exc:  # one request's bug must not take the kernel, and every agent, down
            log.error("kernel failed on %s: %s", sc.name, traceback.format_exc())
            return self.answer(ident, req_id, caller, sc.name, args, t0,
                               error=("EIO", f"kernel failed on {sc.name}: {type(exc).__name__}: {exc}"))
        if result is not DEFERRED:
            self.answer(ident, req_id, caller, sc.name, args, t0, result=result)

    def answer(self, ident, req_id, caller: Principal, call: str, args, t0, result=None, error=None) -> None:
        self.reply_front(ident, req_id, result=result, error=error)
        row = self.table.get(caller.aid) if not caller.is_root else None
        if row is not None:
            self.table.syscall_end(row, call == "wait_agent")
        note = ""
        if call in ("grant", "revoke", "set_priority", "suspend_agent", "resume_agent", "kill_agent",
                    "set_status", "set_aid", "spawn_agent", "sys_set", "log_event"):
            note = str({k: v for k, v in (args or {}).items() if v is not None and k not in ("env",)})[:4096]
        self.audit.add(audit.record(caller.aid, caller.name, call, args, error[0] if error else "OK",
                                    time.perf_counter() - t0, note))

    def broadcast(self, event: dict) -> None:
        for m in self.sup.procs.values():
            if m.state == MgrState.RUNNING and m.ident is not None:
                self.post(m.ident, protocol.pack(event))

    def row_of(self, aid: int | None, caller: Principal) -> AgentRow:
        aid = caller.aid if aid is None else aid
        row = self.table.get(aid)
        if row is None:
            raise AiosError("ESRCH", f"no agent {aid}")
        return row

    def view(self, row: AgentRow) -> dict:
        now = time.monotonic()
        # /proc reads cost more than the rest of a syscall: refresh at most every 100 ms
        if row.status.alive and row.pid and now - getattr(row, "stats_at", 0.0) > 0.1:
            row.cpu_s, row.rss_bytes = proc_stats(row.pid)
            row.stats_at = now
        return row.public()

    # ---- agent calls ---------------------------------------------------------------------
    def k_get_aid(self, caller, args, target, h):
        return caller.aid

    def k_set_aid(self, caller, args, target, h):
        aid = args["aid"]
        if aid == 0:
            self.impersonating.pop(h[0], None)
            return 0
        row = self.row_of(aid, caller)
        if not row.status.alive:
            raise AiosError("ESRCH", f"agent {aid} has exited")
        self.impersonating[h[0]] = aid
        if len(self.impersonating) > IMPERSONATING_CAP:
            self.forget_impersonations()
        return aid

    def forget_impersonations(self) -> None:
        """ROUTER tells nothing of closed connections, so each connection that said set_aid
        stays here. Past the cap, those acting as ended agents go, oldest first: such a
        connection (root by its token) would be root again, which it could always become
        by connecting anew; none acting as a live agent is forgotten."""
        ended = [ident for ident, aid in self.impersonating.items()
                 if (row := self.table.get(aid)) is None or not row.status.alive]
        for ident in ended[:len(self.impersonating) - IMPERSONATING_CAP // 2]:  # down to half the cap
            del self.impersonating[ident]

    def k_get_status(self, caller, args, target, h):
        if caller.is_root and args["aid"] is None:
            return {"aid": 0, "name": "root", "status": "RUNNING", "pid": os.getpid()}
        return self.view(self.row_of(args["aid"], caller))

    def k_get_priority(self, caller, args, target, h):
        if caller.is_root and args["aid"] is None:
            return 0
        return self.row_of(args["aid"], caller).priority

    def k_set_priority(self, caller, args, target, h):
        row = self.row_of(args["aid"], caller)
        wanted = args["priority"]
        me = Principal(row.aid, row.name, row.group, row.parent)
        if not self.rules.may_set_priority(caller, me, row.priority, wanted):
            raise AiosError("EPERM", f"only root may raise a priority (agent {row.aid}: {row.priority} -> {wanted})")
        row.priority = wanted
        self.broadcast({"event": "priority", "aid": row.aid, "priority": wanted})
        return wanted

    def k_set_status(self, caller, args, target, h):
        status = args["status"]
        if status == "SUSPENDED":
            return self.k_suspend_agent(caller, args, target, h)
        if status == "RUNNING":
            return self.k_resume_agent(caller, args, target, h)
        return self.k_kill_agent(caller, {"aid": args["aid"], "signal": "TERM"}, target, h)

    def k_suspend_agent(self, caller, args, target, h):
        row = self.alive_row(args["aid"], caller)
        self.signal_agent(row, signal.SIGSTOP)
        row.status = AgentState.SUSPENDED
        self.broadcast({"event": "agent_suspend", "aid": row.aid})
        return row.status.value

    def k_resume_agent(self, caller, args, target, h):
        row = self.alive_row(args["aid"], caller)
        self.signal_agent(row, signal.SIGCONT)
        if row.status == AgentState.SUSPENDED:
            row.status = AgentState.WAITING if row.inflight else AgentState.RUNNING
        self.broadcast({"event": "agent_resume", "aid": row.aid})
        return row.status.value

    def k_kill_agent(self, caller, args, target, h):
        row = self.alive_row(args["aid"], caller)
        name = args.get("signal") or "TERM"
        if name == "STOP":
            return self.k_suspend_agent(caller, args, target, h)
        if name == "CONT":
            return self.k_resume_agent(caller, args, target, h)
        sig = getattr(signal, "SIG" + name)
        if row.status == AgentState.SUSPENDED and sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.signal_agent(row, signal.SIGCONT)  # a stopped process cannot act on TERM
        self.signal_agent(row, sig)
        return True

    def k_wait_agent(self, caller, args, target, h):
        row = self.row_of(args["aid"], caller)
        if not row.status.alive:
            return self.view(row)
        timeout = args.get("timeout")
        deadline = time.time() + timeout if timeout is not None else float("inf")
        self.waiters.setdefault(row.aid, []).append((h, caller, deadline))
        return DEFERRED

    def k_list_agents(self, caller, args, target, h):
        return [self.view(r) for r in self.table.listing(bool(args.get("all")))]

    def k_spawn_agent(self, caller, args, target, h):
        argv = args["argv"]
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise AiosError("EINVAL", "argv must be a non-empty list of strings without NUL bytes")
        env_in = args.get("env") or {}
        if not all(isinstance(k, str) and isinstance(v, str) and "\0" not in k + v for k, v in env_in.items()):
            raise AiosError("EINVAL", "env must map strings to strings")
        name = args.get("name") or os.path.basename(argv[0])
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(name) > 64:
            raise AiosError("EINVAL", "an agent name is letters, digits, '-', '_' and '.', at most 64")
        parent = self.table.get(caller.aid) if not caller.is_root else None
        tools, mem_q, sto_q = args.get("tools"), args.get("memory_quota"), args.get("storage_quota")
        if parent is not None:  # an agent gives a child no more than it has, and no one else's name
            if sum(1 for r in self.table.alive() if r.parent == parent.aid) >= self.cfg.max_children:
                raise AiosError("EBUSY", f"agent {parent.aid} already has {self.cfg.max_children} live children")
            name, tools, mem_q, sto_q = check_child(
                parent.name, parent.tools, (parent.memory_quota or self.cfg.memory_quota,
                                            parent.storage_quota or self.cfg.storage_quota),
                name, tools, mem_q, sto_q)
            if len(name) > 64:
                raise AiosError("EINVAL", f"the child's name '{name}' is longer than 64")
        priority = args.get("priority")
        if priority is None:
            priority = parent.priority if parent else 0
        if parent is not None and priority > parent.priority:
            raise AiosError("EPERM", "a child cannot have a higher priority than its parent")
        row = self.table.create(name, list(argv), parent=caller.aid, priority=priority)
        row.tools, row.memory_quota, row.storage_quota = tools, mem_q, sto_q
        row.context_strategy = args.get("context_strategy")
        token = self.tokens.issue(row.aid)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_")}
        env.update(env_in)
        env.update({"AIOS_HOME": str(self.cfg.home), "AIOS_AID": str(row.aid), "AIOS_TOKEN": token,
                    "AIOS_MODEL_CACHE": str(self.cfg.model_cache), "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1"})
        limits = {resource.RLIMIT_AS: self.cfg.rlimit_as, resource.RLIMIT_NOFILE: self.cfg.rlimit_nofile,
                  resource.RLIMIT_CORE: 0}
        if self.cfg.rlimit_cpu:
            limits[resource.RLIMIT_CPU] = self.cfg.rlimit_cpu
        if self.cfg.rlimit_nproc:
            limits[resource.RLIMIT_NPROC] = self.cfg.rlimit_nproc
        log_path = self.cfg.log_dir / f"agent-{row.aid}.log"
        try:
            with open(log_path, "ab", buffering=0) as out:
                proc = subprocess.Popen(
                    argv, env=env, cwd=args.get("cwd") or None, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, close_fds=True,
                    preexec_fn=child_setup(os.getpid(), pgroup=True, rlimits=limits), **self.agent_user())
        except (OSError, ValueError) as exc:
            self.table.finish(row, 127)
            self.tokens.revoke(row.aid)
            self.save_row(row)
            raise AiosError("ENOENT", f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        proc.returncode = 0  # the kernel reaps it with wait4; keep Popen from polling it later
        self.table.started(row, proc.pid)
        self.save_row(row)
        return {"aid": row.aid, "pid": proc.pid, "name": row.name, "log": str(log_path)}

    def agent_user(self) -> dict:
        """Popen arguments that drop an agent to cfg.agent_uid when aiosd runs as root: as
        root an agent could signal the kernel, read run/root.token and master.key, and
        RLIMIT_NPROC would not bind it."""
        ids = agent_ids(self.cfg.agent_uid, self.cfg.agent_gid)
        if ids is None:
            return {}
        uid, gid = ids
        return {"user": uid, "group": gid, "extra_groups": []}

    def alive_row(self, aid: int, caller) -> AgentRow:
        row = self.row_of(aid, caller)
        if not row.status.alive:
            raise AiosError("ESRCH", f"agent {aid} has already exited")
        return row

    def signal_agent(self, row: AgentRow, sig: int) -> None:
        if row.aid in self.attached:  # no process of its own: never signal its carrier
            return self.signal_attached(row, sig)
        try:
            os.killpg(row.pid, sig)
        except ProcessLookupError:
            try:
                os.kill(row.pid, sig)
            except ProcessLookupError:
                pass

    def agent_died(self, pid: int, code: int, cpu_s: float, maxrss: int) -> None:
        row = self.table.ended(pid, code)
        if row is None:
            return
        row.cpu_s = cpu_s
        row.rss_bytes = maxrss
        try:  # whatever the agent left in its process group goes with it
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.tokens.revoke(row.aid)
        self.agent_gone(row)

    def agent_gone(self, row: AgentRow) -> None:
        """What the kernel holds for an agent that ended (a child or an attached one) goes."""
        self.rules.drop_owner(Principal(row.aid, row.name))
        for per_aid in (self.buckets, self.refusal_buckets, self.refusals_counted):
            per_aid.pop(row.aid, None)
        self.llm_limits.forget(row.aid)
        # connections acting as this agent (set_aid) keep pointing at it: they get EACCES from
        # now on, and never fall back to being root
        self.broadcast({"event": "agent_exit", "aid": row.aid, "name": row.name})
        self.save_row(row)
        for h, caller, _ in self.waiters.pop(row.aid, []):
            self.answer(h[0], h[1], caller, "wait_agent", {"aid": row.aid}, h[2], result=self.view(row))

    def expire_waiters(self, now: float) -> None:
        for aid, ws in list(self.waiters.items()):
            keep = []
            for h, caller, deadline in ws:
                if deadline <= now:
                    self.answer(h[0], h[1], caller, "wait_agent", {"aid": aid}, h[2],
                                error=("ETIMEDOUT", f"agent {aid} is still running"))
                else:
                    keep.append((h, caller, deadline))
            self.waiters[aid] = keep
            if not keep:
                del self.waiters[aid]

    def save_row(self, row: AgentRow) -> None:
        """The row into LMDB (`procs`): at spawn, so that a kernel that dies leaves its aids
        known to the next one, and at the end, with the exit code and usage."""
        self.send_internal("storage", "_proc_save", {"row": row.public()})

    def send_internal(self, manager: str, call: str, args: dict) -> None:
        """Fire-and-forget call from the kernel itself (its answer is dropped)."""
        from aiosd.kernel_link import Pending
        kid = next(self.ids)
        self.pending[kid] = Pending(b"kernel", None, 0, "root", call, "", time.perf_counter(), manager, True)
        self.send_manager(manager, {"id": kid, "call": call, "args": args, "aid": 0,
                                    "ctx": {"name": "root", "is_root": True}})

    def k_log_event(self, caller, args, target, h):
        return True  # the audit record made by answer() carries the message

    def stop_agents(self) -> None:
        alive = self.table.alive()
        for row in alive:
            if row.status == AgentState.SUSPENDED:
                self.signal_agent(row, signal.SIGCONT)
            self.signal_agent(row, signal.SIGTERM)
        self.wait_children(lambda: bool(self.table.alive()), self.cfg.stop_timeout_s)
        for row in self.table.alive():
            self.signal_agent(row, signal.SIGKILL)
        self.wait_children(lambda: bool(self.table.alive()), 2.0)
