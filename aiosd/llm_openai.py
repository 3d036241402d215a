"""The llm worker's second backend: `--llm-backend openai --llm-url URL`.

The same `llm_chat` goes to an OpenAI-compatible server (vLLM, llama.cpp's server, Ollama,
another aiosd's gateway) over HTTP. The HTTP calls block, so they run in a small thread pool;
the threads never touch the manager's socket (zmq sockets are not thread-safe): they put
what happened on a queue that the manager's `tick()` drains, and the manager answers from
there. Which request goes out next is `FairQueue`'s choice (pure, no I/O): at most
`llm_remote_per_agent` requests of one agent are in flight, agents take turns, so one agent's
burst cannot fill the server's queue ahead of everyone else, as the local scheduler ensures.
"""

from __future__ import annotations

import itertools
import json
import queue
import time
import urllib.error
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiosd.errors import AiosError
from aiosd.procs.base import DEFERRED
from aiosd.scheduler import POLICIES


class FairQueue:
    """Requests waiting to be sent, per agent; `take()` says which to send now."""

    def __init__(self, max_inflight: int = 8, per_agent: int = 2, policy: str = "fifo"):
        self.max_inflight, self.per_agent, self.policy = max(1, max_inflight), max(1, per_agent), policy
        self.pending: dict[int, deque] = {}
        self.inflight: dict[int, int] = {}
        self.priority: dict[int, int] = {}
        self.parked: set[int] = set()
        self.last: dict[int, int] = {}   # aid -> the turn it was last served (least recent goes first)
        self._turn = itertools.count()

    def add(self, key: Any, aid: int, priority: int = 0) -> None:
        self.pending.setdefault(aid, deque()).append(key)
        self.priority[aid] = priority

    def done(self, aid: int) -> None:
        self.inflight[aid] = max(0, self.inflight.get(aid, 0) - 1)

    def drop_agent(self, aid: int) -> list[Any]:
        """The waiting requests of an agent that exited (its in-flight ones still call done)."""
        return list(self.pending.pop(aid, ()))

    def busy(self) -> bool:
        return any(self.inflight.values()) or any(self.pending.values())

    def take(self) -> list[tuple[int, Any]]:
        out: list[tuple[int, Any]] = []
        while sum(self.inflight.values()) < self.max_inflight:
            ready = [a for a, q in self.pending.items()
                     if q and a not in self.parked and self.inflight.get(a, 0) < self.per_agent]
            if not ready:
                break
            first = self.policy == "priority"
            aid = min(ready, key=lambda a: (-self.priority.get(a, 0) if first else 0, self.last.get(a, -1)))
            out.append((aid, self.pending[aid].popleft()))
            self.inflight[aid] = self.inflight.get(aid, 0) + 1
            self.last[aid] = next(self._turn)
        return out


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def _http_error(exc: urllib.error.HTTPError) -> AiosError:
    try:
        body = json.loads(exc.read() or b"{}")
        msg = (body.get("error") or {}).get("message") or str(body)[:200]
    except (ValueError, AttributeError, OSError):
        msg = exc.reason
    why = f"the LLM server answered {exc.code}: {msg}"
    if exc.code in (401, 403, 408, 429) or exc.code in (502, 503, 504):
        return AiosError("EUNAVAIL", why)
    return AiosError("EINVAL" if 400 <= exc.code < 500 else "EIO", why)


@dataclass
class RJob:
    req_id: Any
    aid: int
    body: dict
    stream: bool
    t_submit: float
    context_msgs: list[dict] | None = None
    t_start: float | None = None
    t_first: float | None = None
    text: str = ""
    cancelled: bool = False
    extra: dict = field(default_factory=dict)


class RemoteBackend:
    """Runs llm_chat requests against an OpenAI-compatible server for a manager."""

    def __init__(self, mgr: Any, url: str, api_key: str = "", model: str = "", timeout_s: float = 300.0,
                 workers: int = 8, per_agent: int = 2, policy: str = "fifo"):
        if not url.startswith(("http://", "https://")):
            raise AiosError("EINVAL", f"--llm-url must be an http(s) URL, not {url!r}")
        self.mgr, self.url, self.api_key, self.model = mgr, endpoint(url), api_key, model
        self.timeout_s = timeout_s
        self.fair = FairQueue(workers, per_agent, policy)
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="llm-http")
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.jobs: dict[int, RJob] = {}
        self._ids = itertools.count(1)

    def submit(self, req_id: Any, aid: int, priority: int, body: dict, stream: bool,
               context_msgs: list[dict] | None = None) -> int:
        key = next(self._ids)
        self.jobs[key] = RJob(req_id, aid, body, stream, time.monotonic(), context_msgs)
        self.fair.add(key, aid, priority)
        if stream:
            self.mgr.partial(req_id, {"text": "", "request": key})
        return key

    def drop_agent(self, aid: int) -> None:
        for key in self.fair.drop_agent(aid):
            job = self.jobs.pop(key)
            self.mgr.fail(job.req_id, "ESRCH", f"agent {aid} exited")
        for job in self.jobs.values():
            if job.aid == aid:
                job.cancelled = True

    # the manager's loop
    def tick(self) -> float | None:
        for _aid, key in self.fair.take():
            job = self.jobs[key]
            job.t_start = time.monotonic()
            self.pool.submit(self._run, key, job)
        while True:
            try:
                kind, key, data = self.events.get_nowait()
            except queue.Empty:
                break
            self._event(kind, key, data)
        # results come from threads, not the socket: look again soon while any are out
        return 0.005 if self.fair.busy() else None

    def _event(self, kind: str, key: int, data: Any) -> None:
        job = self.jobs.get(key)
        if job is None:
            return
        if kind == "delta":
            if job.t_first is None:
                job.t_first = time.monotonic()
            job.text += data
            if job.stream and not job.cancelled:
                self.mgr.partial(job.req_id, {"text": data})
            return
        self.jobs.pop(key)
        self.fair.done(job.aid)
        if job.cancelled:
            self.mgr.fail(job.req_id, "ESRCH", f"agent {job.aid} exited")
            return
        if kind == "error":
            self.mgr.emit("usage", aid=job.aid, tokens_in=0, tokens_out=0,
                          queue_wait_s=(job.t_start or time.monotonic()) - job.t_submit)
            self.mgr.fail(job.req_id, data.code, data.message)
            return
        self.mgr.finish_remote(job, data)

    # in the pool's threads
    def _run(self, key: int, job: RJob) -> None:
        try:
            body = {**job.body, "model": self.model, "stream": job.stream}
            if job.stream:
                body["stream_options"] = {"include_usage": True}
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            rq = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
            with urllib.request.urlopen(rq, timeout=self.timeout_s) as resp:
                result = self._read_stream(key, job, resp) if job.stream else self._read_whole(key, resp)
            self.events.put(("done", key, result))
        except urllib.error.HTTPError as exc:
            self.events.put(("error", key, _http_error(exc)))
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            self.events.put(("error", key, AiosError("EUNAVAIL", f"LLM server {self.url} unreachable: {reason}")))
        except AiosError as exc:
            self.events.put(("error", key, exc))
        except Exception as exc:  # noqa: BLE001 - a garbled answer fails this request, not the worker
            self.events.put(("error", key, AiosError("EIO", f"LLM server answer unreadable: "
                                                            f"{type(exc).__name__}: {exc}")))

    def _read_whole(self, key: int, resp: Any) -> dict:
        body = json.loads(resp.read())
        choice = (body.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        text = msg.get("content") or ""
        self.events.put(("delta", key, ""))  # the first token arrived with the rest
        return {"text": text, "finish_reason": choice.get("finish_reason"),
                "tool_calls": msg.get("tool_calls") or [], "usage": body.get("usage") or {}}

    def _read_stream(self, key: int, job: RJob, resp: Any) -> dict:
        text, finish, usage = "", None, {}
        calls: dict[int, dict] = {}
        for raw in resp:  # server-sent events: "data: {...}" lines, then "data: [DONE]"
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk and not chunk.get("choices"):
                err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                raise AiosError("EIO", f"LLM server failed mid-stream: {err.get('message')}")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    text += delta["content"]
                    self.events.put(("delta", key, delta["content"]))
                for tc in delta.get("tool_calls") or []:  # arrive in pieces, by index
                    c = calls.setdefault(int(tc.get("index", len(calls))),
                                         {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                    c["id"] = tc.get("id") or c["id"]
                    fn = tc.get("function") or {}
                    c["function"]["name"] += fn.get("name") or ""
                    c["function"]["arguments"] += fn.get("arguments") or ""
                finish = choice.get("finish_reason") or finish
            if job.cancelled:
                break
        return {"text": text, "finish_reason": finish, "tool_calls": [calls[i] for i in sorted(calls)],
                "usage": usage}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class RemoteChat:
    """The llm manager's side of the openai backend (a mixin of LlmManager; kept here so the
    manager stays one screenful): setup, llm_chat, the reply, kernel events."""

    cfg: Any
    remote: RemoteBackend | None
    contexts: dict

    def _setup_remote(self) -> None:
        """--llm-backend openai: no model here; llm_chat goes to the server at llm_url."""
        cfg = self.cfg
        if not cfg.llm_url:
            raise AiosError("EINVAL", "--llm-backend openai needs --llm-url")
        self.engine = None
        self.max_context = 1 << 20  # the server knows its window; it answers EINVAL past it
        self.remote = RemoteBackend(self, cfg.llm_url, cfg.llm_api_key, cfg.llm_model or cfg.model,
                                    cfg.llm_timeout_s, cfg.llm_remote_workers, cfg.llm_remote_per_agent,
                                    cfg.scheduler)

    def _chat_remote(self, req: Any, messages: list[dict], gen: dict, tools: list | None) -> Any:
        assert self.remote is not None
        ctx_msgs = None
        if req.args.get("context"):
            messages = ctx_msgs = self._ctx(req.aid).messages + messages
        body = {"messages": messages, **{k: v for k, v in gen.items() if v is not None}}
        if tools:
            body["tools"] = tools
        self.remote.submit(req.id, req.aid, int(req.ctx.get("priority", 0) or 0), body,
                           bool(req.args.get("stream")), ctx_msgs)
        return DEFERRED

    def finish_remote(self, job: RJob, result: dict) -> None:
        """A remote request ended: the same reply, usage event and timings as a local one."""
        now = time.monotonic()
        usage = result.get("usage") or {}
        n_in, n_out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        queued = (job.t_start or now) - job.t_submit
        self.emit("usage", aid=job.aid, tokens_in=n_in, tokens_out=n_out, queue_wait_s=queued)
        calls = [{k: v for k, v in c.items() if k != "index"} for c in result.get("tool_calls") or []]
        text = result.get("text") or ""
        if job.context_msgs is not None:
            turn = {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}
            self._ctx(job.aid).messages = job.context_msgs + [turn]
        self.reply(job.req_id, {
            "text": text, "finish_reason": result.get("finish_reason") or "stop", "tool_calls": calls,
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out},
            "timings": {"queued_s": queued, "first_token_s": (job.t_first or now) - job.t_submit,
                        "total_s": now - job.t_submit},
            "context": {"strategy_applied": None}})

    def _remote_event(self, kind: str | None, aid: Any, event: dict) -> None:
        assert self.remote is not None
        fair = self.remote.fair
        if kind == "agent_suspend":
            fair.parked.add(int(aid))
        elif kind == "agent_resume":
            fair.parked.discard(int(aid))
        elif kind == "priority":
            fair.priority[int(aid)] = int(event.get("priority", 0))
        elif kind == "agent_exit":
            self.remote.drop_agent(int(aid))
            self.contexts.pop(aid, None)
        elif kind == "config" and (event.get("settings") or {}).get("scheduler") in POLICIES:
            fair.policy = event["settings"]["scheduler"]

