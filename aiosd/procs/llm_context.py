"""The context syscalls of the llm manager (get/set/clr/exp_context, and the kernel's
ctx_dump/ctx_load for agent snapshots): each agent's kept conversation and window, a mixin
of LlmManager so that the manager's file is the model's step loop and little else."""

from __future__ import annotations

from typing import Any

from aiosd import context as cx
from aiosd.errors import AiosError
from aiosd.procs.base import Request


class ContextCalls:
    cfg: Any
    remote: Any
    engine: Any
    max_context: int
    contexts: dict[int, cx.AgentContext]

    def _ctx(self, aid: int, strategy: str | None = None) -> cx.AgentContext:
        """aid's context, made on first use (by any call) with the strategy its spawn asked for."""
        c = self.contexts.get(aid)
        if c is None:
            c = self.contexts[aid] = cx.AgentContext(window=min(self.cfg.context_window, self.max_context),
                                                     strategy=strategy or self.cfg.context_strategy)
        return c

    def _ntok(self, messages: list[dict]) -> int:
        if self.remote is not None:  # the server's tokenizer is not ours: a rough count (4 chars a token)
            return sum(len(m.get("content") or "") for m in messages) // 4 + 4 * len(messages)
        return len(self.engine.encode_chat(messages))

    def handle_get_context(self, req: Request) -> Any:
        aid = int(req.args["aid"]) if req.args.get("aid") is not None else req.aid
        c = self._ctx(aid, req.ctx.get("context_strategy") if aid == req.aid else None)
        return {"messages": c.messages, "tokens": self._ntok(c.messages) if c.messages else 0,
                "window": c.window, "strategy": c.strategy}

    def handle_set_context(self, req: Request) -> Any:
        msgs = cx.check_messages(req.args.get("messages"))
        c = self._ctx(req.aid, req.ctx.get("context_strategy"))
        n = self._ntok(msgs)
        if len(msgs) == 1 and n > c.window:
            raise AiosError("EINVAL", f"one message of {n} tokens exceeds the window of {c.window}")
        c.messages = msgs
        return {"tokens": n}

    def handle_clr_context(self, req: Request) -> Any:
        self._ctx(req.aid, req.ctx.get("context_strategy")).messages = []
        return True

    def handle_exp_context(self, req: Request) -> Any:
        c = self._ctx(req.aid, req.ctx.get("context_strategy"))
        size = int(req.args["size"])
        if size > self.max_context:
            raise AiosError("EINVAL", f"the model's limit is {self.max_context} tokens")
        c.window = max(c.window, size)
        return {"window": c.window}

    def handle_ctx_dump(self, req: Request) -> Any:
        c = self.contexts.get(int(req.args["aid"]))
        return None if c is None else {"messages": c.messages, "window": c.window, "strategy": c.strategy}

    def handle_ctx_load(self, req: Request) -> Any:
        aid, data = int(req.args["aid"]), req.args.get("context")
        if not data:
            self.contexts.pop(aid, None)
            return True
        c = self._ctx(aid)
        c.messages = cx.check_messages(data["messages"]) if data.get("messages") else []
        c.window = int(data.get("window", c.window))
        c.strategy = data.get("strategy", c.strategy)
        return True
