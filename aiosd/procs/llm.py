"""The llm manager ("GPU worker"): one model, continuous batching, the context manager.

`llm_chat` validates, tokenises with the model's chat template, enqueues and returns DEFERRED;
`tick()` runs one engine step (the scheduler's pick of decodes and prefill chunks) whenever
there is work and answers the requests that finished. Streaming requests get each new piece
of text as a partial. A model error fails the requests of that step with EIO, not the worker.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiosd import context as cx
from aiosd import kv_shm
from aiosd.errors import AiosError
from aiosd.llm_openai import RemoteBackend, RemoteChat
from aiosd.procs.base import DEFERRED, Manager, Request, run_manager
from aiosd.procs.llm_context import ContextCalls
from aiosd.runner import Runner
from aiosd.scheduler import POLICIES, Scheduler
from aiosd.toolcalls import check_tools, offer_tools, split_tool_calls, tool_names

log = logging.getLogger("aiosd")
KV_PREFIX = b"kv:"  # spilled K/V caches in storage's `snapshots`, by snapshot id


@dataclass
class Job:
    req_id: Any
    aid: int
    seq: Any
    stream: bool
    stop: list[str]
    t_submit: float
    meta: dict
    t_start: float | None = None
    t_first: float | None = None
    sent: int = 0                      # characters already streamed
    text: str = ""
    base_tokens: int = 0               # generated before a snapshot this job resumed
    strategy: str | None = None
    context_msgs: list[dict] | None = None   # the agent's kept context to extend at the end
    extra: dict = field(default_factory=dict)


class LlmManager(ContextCalls, RemoteChat, Manager):
    name = "llm"

    def setup(self) -> None:
        self.contexts: dict[int, cx.AgentContext] = {}
        self.remote: RemoteBackend | None = None
        if self.cfg.llm_backend == "openai":
            self._setup_remote()
            return
        if self.cfg.llm_backend != "local":
            raise AiosError("EINVAL", f"unknown llm backend {self.cfg.llm_backend!r}; local or openai")
        import torch

        from aiosd.engines import make_engine, model_threads

        torch.set_num_threads(model_threads(self.cfg))  # before the model loads: see model_threads
        self.engine = make_engine(self.cfg)
        if self.cfg.prefix_cache and hasattr(self.engine, "remember_prefix"):
            self.engine.prefix_bytes = self.cfg.prefix_cache_bytes
        self.sched = Scheduler(self.cfg.scheduler, self.cfg.max_batch, self.cfg.max_batch_tokens,
                               self.cfg.prefill_chunk, self.cfg.quantum)
        self.runner = Runner(self.engine, self.sched)
        self.jobs: dict[int, Job] = {}
        self.next_rid = 1
        self.max_context = self.engine.max_context
        # snapshots' K/V in a shared-memory segment of the budget's size; a predecessor killed
        # with SIGKILL could not unlink its own, so ours replaces it
        prefix = kv_shm.home_prefix(self.cfg.home)
        if kv_shm.clean_stale(prefix):
            log.info("removed a dead llm worker's snapshot segment")
        self.snaps = cx.SnapshotStore(self.cfg.snapshot_budget_bytes, self._spill, self._fetch,
                                      arena=kv_shm.Arena(prefix, self.cfg.snapshot_budget_bytes),
                                      discard=self._discard)
        # the first step of a fresh engine is slow (allocation, lazy init): pay for it before the
        # hello, so the kernel's readiness means ready to serve and no live step runs that long
        warm = Runner(self.engine, Scheduler("fifo", 1, self.cfg.max_batch_tokens, self.cfg.prefill_chunk))
        warm.submit(self.engine.add(0, self.engine.encode_chat([{"role": "user", "content": "hi"}]), 2))
        warm.run_all()

    def setup_background(self) -> None:
        self.drop_left_over("snapshots", KV_PREFIX, "spilled K/V snapshots")  # megabytes each

    # helpers: spilled snapshots in storage, under KV_PREFIX
    def _spill(self, sid: str, blob: bytes) -> None:
        self.call("_sto_put", {"db": "snapshots", "key": KV_PREFIX + sid.encode(), "value": blob})

    def _fetch(self, sid: str) -> bytes | None:
        try:  # taken out: it is in memory again, and spilled anew if it must leave again
            return self.call("_sto_get", {"db": "snapshots", "key": KV_PREFIX + sid.encode(), "delete": True})
        except AiosError:
            return None

    def _discard(self, sid: str) -> None:
        try:
            self.call("_sto_put", {"db": "snapshots", "key": KV_PREFIX + sid.encode(), "value": None})
        except AiosError as exc:  # left for the next worker's start to drop
            log.warning("llm: spilled snapshot %s not deleted: %s", sid, exc)

    def _submit(self, req: Request, seq: Any, stream: bool, stop: list[str], meta: dict) -> Job:
        job = Job(req.id, req.aid, seq, stream, stop, time.monotonic(), meta)
        self.jobs[seq.rid] = job
        self.runner.submit(seq, req.aid, int(req.ctx.get("priority", 0) or 0))
        if stream:
            self.partial(req.id, {"text": "", "request": seq.rid})
        return job

    # syscalls
    def handle_llm_chat(self, req: Request) -> Any:
        a = req.args
        messages = cx.check_messages(a.get("messages"))
        temperature = float(a.get("temperature") or 0.0)
        top_p = float(a.get("top_p") if a.get("top_p") is not None else 1.0)
        if math.isnan(temperature) or math.isnan(top_p) or temperature < 0 or not 0 < top_p <= 1:
            raise AiosError("EINVAL", "temperature must be >= 0 and top_p in (0, 1]")
        max_tokens = int(a.get("max_tokens") or 256)
        ctx = self._ctx(req.aid, req.ctx.get("context_strategy"))
        window = ctx.window
        if max_tokens < 1 or max_tokens > window:
            raise AiosError("EINVAL", f"max_tokens must be 1..{window} (the context window)")
        tools = check_tools(a.get("tools"))
        if self.remote is not None:
            stop = [s for s in (a.get("stop") or []) if s]
            return self._chat_remote(req, messages, {"max_tokens": max_tokens, "temperature": temperature,
                                                     "top_p": top_p, "seed": a.get("seed"),
                                                     "stop": stop or None}, tools)
        strategy = None
        if a.get("context"):
            full = ctx.messages + messages
            def fits(ms: list[dict]) -> bool:
                return len(self.engine.encode_chat(offer_tools(ms, tools))) + max_tokens <= window
            if not fits(full):
                strategy = ctx.strategy
                full = self._summarize(full, fits) if strategy == "summarize" else cx.truncate(full, fits)
            messages = full
        try:
            prompt = self.engine.encode_chat(offer_tools(messages, tools))
        except Exception as exc:  # a template that cannot render these messages
            raise AiosError("EINVAL", f"chat template failed: {exc}") from None
        if len(prompt) >= window:
            raise AiosError("EINVAL", f"prompt is {len(prompt)} tokens; the context window is {window}")
        max_tokens = min(max_tokens, window - len(prompt))
        rid, self.next_rid = self.next_rid, self.next_rid + 1
        seq = self.engine.add(rid, prompt, max_tokens, temperature, top_p, a.get("seed"))
        stop = [s for s in (a.get("stop") or []) if s]
        meta = {"stop": stop, "stream": bool(a.get("stream")), "context": bool(a.get("context")),
                "tools": tool_names(tools) if tools else None}
        job = self._submit(req, seq, bool(a.get("stream")), stop, meta)
        job.strategy = strategy
        if a.get("context"):
            job.context_msgs = messages
        return DEFERRED

    def _summarize(self, messages: list[dict], fits: Any) -> list[dict]:
        """Summarise the older half of the turns with the model (a small, separate generation)."""
        system, old, keep = cx.summarize_split(messages)
        if not old:
            return cx.truncate(messages, fits)
        r = Runner(self.engine, Scheduler("fifo", 1, self.cfg.max_batch_tokens, self.cfg.prefill_chunk))
        r.submit(self.engine.add(0, self.engine.encode_chat(cx.summary_prompt(old)), 96))
        out = r.run_all().get(0, [])
        summary = {"role": "system", "content": "Summary of the earlier conversation: " + self.engine.decode(out)}
        return cx.truncate(system + [summary] + keep, fits)

    def handle_gen_snapshot(self, req: Request) -> Any:
        self._local_only("gen_snapshot")
        want = req.args.get("request")
        mine = [j for j in self.jobs.values() if j.aid == req.aid and (want is None or j.seq.rid == want)]
        if not mine:
            raise AiosError("ENOENT", "no generation of the caller is in flight" if want is None
                            else f"no in-flight request {want} of the caller")
        job = max(mine, key=lambda j: j.t_submit)
        seq = job.seq
        snap = self.engine.snapshot(seq, region_for=self.snaps.reserve) \
            if getattr(self.engine, "kind", "") != "llamacpp" else self.engine.snapshot(seq)
        sid = self.snaps.put(req.aid, snap, {**job.meta, "base_text": job.text})
        self._finish(job, "snapshot", extra={"snapshot": sid})
        return {"snapshot": sid, "tokens": len(snap.tokens), "generated": len(snap.tokens) - snap.n_prompt,
                "bytes": snap.nbytes}

    def _local_only(self, call: str) -> None:
        if self.remote is not None:
            raise AiosError("EINVAL", f"{call}: the openai backend keeps no generation state here")

    def handle_gen_restore(self, req: Request) -> Any:
        self._local_only("gen_restore")
        e = self.snaps.get(req.args["snapshot"], req.aid, bool(req.ctx.get("is_root")))
        if e.snap.model != self.engine.model_id:
            raise AiosError("EINVAL", f"snapshot is of model {e.snap.model}, this worker serves "
                                      f"{self.engine.model_id}")
        rid, self.next_rid = self.next_rid, self.next_rid + 1
        seq = self.engine.restore(e.snap, rid)
        stream = bool(req.args.get("stream", e.meta.get("stream")))
        job = self._submit(req, seq, stream, e.meta.get("stop", []), e.meta)
        job.base_tokens = len(e.snap.tokens) - e.snap.n_prompt
        job.text = self.engine.decode(seq.generated)
        job.sent = len(job.text)
        return DEFERRED

    # the step loop
    def tick(self) -> float | None:
        if self.remote is not None:
            return self.remote.tick()
        if not self.runner.busy():
            return None
        now = time.monotonic()
        if now - self._last_hb >= self.cfg.heartbeat_s:  # a busy loop still says it is alive
            self.send({"hb": 1})
            self._last_hb = now
        try:
            events = self.runner.step(now)
        except Exception as exc:  # noqa: BLE001 - a model or OOM error fails that step's requests only
            log.error("llm step failed: %s", exc)
            for rid in list(self.sched.running):
                job = self.jobs.get(rid)
                if job is not None:
                    self._finish(job, None, error=f"model error: {type(exc).__name__}: {exc}")
            return 0
        after = time.monotonic()
        for seq, new, done in events:
            job = self.jobs.get(seq.rid)
            if job is None:
                continue
            if job.t_start is None:
                job.t_start = now
            if new and job.t_first is None:
                job.t_first = after
            self._progress(job, done)
        return 0

    def _progress(self, job: Job, done: bool) -> None:
        text = self.engine.decode(job.seq.generated)
        reason = job.seq.finish_reason if done else None
        for s in job.stop:
            at = text.find(s)
            if at >= 0:
                text, reason = text[:at], "stop"
        job.text = text
        if job.stream:
            hold = max((len(s) for s in job.stop), default=1) - 1
            upto = len(text) if reason else len(text) - hold
            while upto > job.sent and text[upto - 1] == "\ufffd":  # half a UTF-8 character
                upto -= 1
            if upto > job.sent:
                self.partial(job.req_id, {"text": text[job.sent:upto]})
                job.sent = upto
        if reason:
            self._finish(job, reason)

    def _finish(self, job: Job, reason: str | None, error: str | None = None, extra: dict | None = None) -> None:
        rid = job.seq.rid
        self.jobs.pop(rid, None)
        self.runner.remove(rid)
        now = time.monotonic()
        n_out = len(job.seq.generated)
        queued = (job.t_start or now) - job.t_submit
        self.emit("usage", aid=job.aid, tokens_in=job.seq.n_prompt, tokens_out=max(0, n_out - job.base_tokens),
                  queue_wait_s=queued)
        if error is not None:
            self.fail(job.req_id, "EIO", error)
            return
        text, calls, bad = split_tool_calls(job.text, job.meta.get("tools") if reason != "snapshot" else None)
        if job.context_msgs is not None and reason != "snapshot":
            turn = {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}
            self._ctx(job.aid).messages = job.context_msgs + [turn]
        self.reply(job.req_id, {
            "text": text, "finish_reason": reason, "tool_calls": calls, "request": rid,
            **({"tool_errors": bad} if bad else {}),
            "usage": {"prompt_tokens": job.seq.n_prompt, "completion_tokens": n_out},
            "timings": {"queued_s": queued, "first_token_s": (job.t_first or now) - job.t_submit,
                        "total_s": now - job.t_submit},
            "context": {"strategy_applied": job.strategy}, **(extra or {})})

    # kernel events
    def on_event(self, event: dict) -> None:
        kind, aid = event.get("event"), event.get("aid")
        if self.remote is not None:
            self._remote_event(kind, aid, event)
        elif kind == "agent_suspend":
            self.sched.park(int(aid))
        elif kind == "agent_resume":
            self.sched.unpark(int(aid))
        elif kind == "priority":
            self.sched.set_priority(int(aid), int(event.get("priority", 0)))
        elif kind == "agent_exit":
            for job in [j for j in self.jobs.values() if j.aid == aid]:
                self.jobs.pop(job.seq.rid, None)
                self.runner.remove(job.seq.rid)
                self.fail(job.req_id, "ESRCH", f"agent {aid} exited")
            self.contexts.pop(aid, None)
            self.snaps.drop_agent(int(aid))
        elif kind == "config":
            s = event.get("settings") or {}
            if s.get("scheduler") in POLICIES or "quantum" in s:
                self.sched.set_policy(s.get("scheduler", self.sched.policy), s.get("quantum"))
            for key in ("max_batch", "max_batch_tokens"):
                if key in s:
                    setattr(self.sched, key, int(s[key]))

    def shutdown(self) -> None:
        if self.remote is not None:
            self.remote.close()
        if getattr(self, "snaps", None) is not None:  # unlink the snapshot segment
            self.snaps.close()


if __name__ == "__main__":
    run_manager(LlmManager)
