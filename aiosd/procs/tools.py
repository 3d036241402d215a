"""The tools manager: the registry of tools, argument checks, the caller's allowlist, and
the warm pool of sandbox workers whose pre-forked, confined children run one call each.

tool_call answers DEFERRED; tick() polls the pool and replies as calls finish, so calls
run in parallel up to `tool_pool`, each tool also within its own concurrency limit.
Results come back as {"tool", "untrusted": true, "content", "wall_s"}: data for an agent
to read, never instructions to follow.
"""

from __future__ import annotations

import itertools
from collections import deque
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from aiosd.access import FILE_ARGS, check_tool_path
from aiosd.errors import AiosError
from aiosd.procs.base import DEFERRED, Manager, Request, run_manager
from aiosd.tools import registry
from aiosd.tools.pool import Pool


@dataclass
class Call:
    req_id: Any
    aid: int
    tool: registry.Tool
    job: dict
    since: float = field(default_factory=time.monotonic)


class ToolsManager(Manager):
    name = "tools"

    def setup(self) -> None:
        self.tools_cfg = dict(self.cfg.tools or {})
        self.registry = registry.build(self.tools_cfg)
        scratch = self.cfg.run_dir / "tools"
        scratch.mkdir(parents=True, exist_ok=True)
        worker_cfg = {k: v for k, v in self.tools_cfg.items() if k != "mcp"}
        self.pool = Pool(self.cfg.tool_workers, worker_cfg, scratch, registry.tool_env(self.registry))
        self.ids = itertools.count(1)
        self.queue: deque[Call] = deque()
        self.running: dict[int, Call] = {}     # job id -> call
        self.per_tool: dict[str, int] = {}

    # ---- calls ------------------------------------------------------------------------
    def allowed(self, req: Request) -> list | None:
        allow = req.ctx.get("tools")
        return None if allow is None or req.ctx.get("is_root") else list(allow)

    def handle_tool_list(self, req: Request) -> list:
        return self.registry.schemas(self.allowed(req))

    def handle_tool_call(self, req: Request) -> object:
        name = str(req.args.get("name", ""))
        allow = self.allowed(req)
        if allow is not None and name not in allow:
            raise AiosError("EACCES", f"tool '{name}' is not in the allowlist of {req.name}")
        tool = self.registry.get(name)
        args = registry.validate_args(tool, req.args.get("args"))
        if tool.files and not req.ctx.get("is_root"):  # the tool reads as the daemon: not the agent's rights
            for key in FILE_ARGS:
                if isinstance(args.get(key), str):
                    args[key] = check_tool_path(args[key], self.cfg.home, self.cfg.agent_uid, self.cfg.agent_gid)
        per = self.tools_cfg.get(name) if isinstance(self.tools_cfg.get(name), dict) else {}
        timeout = req.args.get("timeout") or float(per.get("timeout_s", self.cfg.tool_timeout_s))
        extra = {}
        if name == "sql_query" and args.get("storage"):
            # the caller's own file, read through the storage manager as the caller
            data = self.call("sto_read", {"path": args["storage"]}, aid=req.aid)
            extra["storage_bytes"] = data.get("data") if isinstance(data, dict) else data
        job = {"job": next(self.ids), "tool": name, "args": args, "timeout": float(timeout),
               "cpu_s": tool.cpu_s, "memory": tool.memory, "nofile": self.cfg.tool_nofile,
               "env_names": list(tool.env), "url": self.cfg.tool_url(name), "caller": req.name,
               "extra": extra, "mcp": tool.mcp_spec}
        if len(self.queue) >= self.cfg.tool_queue:
            raise AiosError("EBUSY", f"{len(self.queue)} tool calls are already waiting")
        self.queue.append(Call(req.id, req.aid, tool, job))
        self.dispatch_queue()
        return DEFERRED

    def limit(self, tool: registry.Tool) -> int:
        return tool.concurrency if tool.concurrency > 0 else self.cfg.tool_pool

    def dispatch_queue(self) -> None:
        held: deque[Call] = deque()
        while self.queue and len(self.running) < self.cfg.tool_pool:
            c = self.queue.popleft()
            if self.per_tool.get(c.tool.name, 0) >= self.limit(c.tool):
                held.append(c)    # its tool is at its limit; others behind it may go
                continue
            try:
                given = self.pool.submit(c.job, self.registry.warm(c.tool.name))
            except OSError as exc:
                self.fail(c.req_id, "EIO", f"tool {c.tool.name}: {exc}")
                continue
            if not given:
                if time.monotonic() - c.since > c.job["timeout"]:  # workers that never come up
                    self.fail(c.req_id, "ETIMEDOUT", f"no sandbox for {c.tool.name} became free in "
                                                     f"{c.job['timeout']:g} s: the tool workers are not ready")
                    continue
                held.append(c)    # no spare of its kind yet: tick() tries again
                continue
            self.running[c.job["job"]] = c
            self.per_tool[c.tool.name] = self.per_tool.get(c.tool.name, 0) + 1
        self.queue.extendleft(reversed(held))

    def tick(self) -> float | None:
        if not self.running and not self.queue:
            self.pool.poll(0.0)   # readiness and worker deaths
            return None
        # calls in flight: sleep until an answer, a worker's message or a request comes
        # (one poll over all of them, so no periodic wake-ups), at most 50 ms: the backstop
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        for fd in self.pool.fds():
            poller.register(fd, zmq.POLLIN)
        poller.poll(0 if self.pool.pending else 50)
        for ans in self.pool.poll(0.0):
            c = self.running.pop(ans["done"], None)
            if c is None:
                continue
            self.per_tool[c.tool.name] -= 1
            if ans.get("ok"):
                self.reply(c.req_id, {"tool": c.tool.name, "untrusted": True, "content": ans.get("result"),
                                      "wall_s": round(float(ans.get("wall_s", 0.0)), 6)})
            else:
                err = ans.get("error") or {}
                self.fail(c.req_id, str(err.get("code", "EIO")), str(err.get("message", "tool failed")))
        self.dispatch_queue()
        return 0.0

    def on_event(self, event: dict) -> None:
        if event.get("event") != "agent_exit":
            return
        aid = event.get("aid")
        for c in [c for c in self.queue if c.aid == aid]:
            self.queue.remove(c)
            self.fail(c.req_id, "EIO", "the calling agent exited")
        for job_id, c in self.running.items():
            if c.aid == aid:
                self.pool.cancel(job_id)

    def shutdown(self) -> None:
        self.pool.close()


if __name__ == "__main__":
    run_manager(ToolsManager)
