"""The ASGI app (Starlette): /v1/chat/completions, /v1/models, /healthz.

Each key is an agent: on the first request with a key the kernel attaches an agent row
to this process (attach_agent) and the gateway opens a connection acting as that aid
(set_aid); every later request with the key is a syscall on that connection. A revoked
key answers 401 at once and its agent is detached within `KEY_POLL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aiosd.errors import AiosError
from aiosd.gateway import shapes
from aiosd.gateway.conn import KernelConn
from aiosd.gateway.keys import KeyRecord, KeyStore

log = logging.getLogger("aiosd")
KEY_POLL_S = 0.5
MAX_BODY = 8 << 20


class Unauthorized(Exception):
    pass


@dataclass
class Session:
    rec: KeyRecord
    aid: int
    conn: KernelConn


class Gateway:
    def __init__(self, home: Path, model: str):
        self.home, self.model = Path(home), model
        self.keys = KeyStore.for_home(home)
        self.sessions: dict[str, Session] = {}  # key digest -> session
        self.locks: dict[str, asyncio.Lock] = {}
        self.root: KernelConn | None = None
        self.started = time.time()

    # ---- life ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.token = (self.home / "run" / "root.token").read_text().strip()
        self.root = KernelConn(self.ctx, self.home, self.token)
        self.watcher = asyncio.get_running_loop().create_task(self.watch_keys())

    async def stop(self) -> None:
        self.watcher.cancel()
        for s in list(self.sessions.values()):
            s.conn.close()
        self.sessions.clear()
        if self.root is not None:
            self.root.close()
        self.ctx.term()

    # ---- identity -----------------------------------------------------------------------
    def authenticate(self, request: Request) -> KeyRecord:
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("no API key: send 'Authorization: Bearer KEY' (aios-key create)")
        rec = self.keys.lookup(key.strip())
        if rec is None:
            raise Unauthorized("unknown or revoked API key")
        return rec

    async def session(self, rec: KeyRecord) -> Session:
        s = self.sessions.get(rec.sha256)
        if s is not None:
            return s
        async with self.locks.setdefault(rec.sha256, asyncio.Lock()):
            s = self.sessions.get(rec.sha256)
            if s is None:
                aid = await self.root.call("attach_agent", {"name": rec.name, "priority": rec.priority,
                                                            "tools": rec.tools, "manager": "gateway"})
                conn = KernelConn(self.ctx, self.home, self.token)
                await conn.act_as(aid)
                s = self.sessions[rec.sha256] = Session(rec, aid, conn)
                log.info("key %s... is agent %d (%s)", rec.prefix, aid, rec.name)
            return s

    def drop(self, s: Session) -> None:
        if self.sessions.get(s.rec.sha256) is s:
            del self.sessions[s.rec.sha256]
            s.conn.close()

    def forget_aid(self, aid: int) -> None:
        """The kernel ended the agent (aios-kill, revocation): the next request attaches anew."""
        for s in [s for s in self.sessions.values() if s.aid == aid]:
            self.drop(s)

    async def watch_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_POLL_S)
            try:
                # not only when the file changed here: a request may have reloaded it first
                live = self.keys.active_hashes()
                for s in [s for h, s in self.sessions.items() if h not in live]:
                    self.drop(s)
                    await self.root.call("detach_agent", {"aid": s.aid, "exit_code": 0})
            except AiosError as exc:
                log.warning("key watch: %s", exc)

    async def as_agent(self, rec: KeyRecord, fn):
        """Run fn(session); once more on a fresh session if the agent ended meanwhile."""
        s = await self.session(rec)
        try:
            return await fn(s)
        except AiosError as exc:
            if exc.code != "EACCES" or "has exited" not in exc.message:
                raise
            self.drop(s)
            return await fn(await self.session(rec))


# ---- endpoints ----------------------------------------------------------------------------
def error(code: str, message: str, param: str | None = None) -> JSONResponse:
    status, body, headers = shapes.error_response(code, message, param)
    return JSONResponse(body, status_code=status, headers=headers)


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def chat(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        rec = gw.authenticate(request)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise shapes.bad(f"the body is over {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            raise shapes.bad("the body is not valid JSON") from None
        args, meta = shapes.chat_in(body)
        outside = [n for n in shapes.tool_names(args.get("tools")) if rec.tools is not None and n not in rec.tools]
        if outside:
            raise AiosError("EACCES", f"key '{rec.name}' may not use tool(s) {', '.join(outside)}")
        if meta["stream"]:
            return await stream_chat(gw, rec, args, meta)
        result = await gw.as_agent(rec, lambda s: s.conn.call("llm_chat", args))
        return JSONResponse(shapes.completion_out(result, gw.model))
    except Unauthorized as exc:
        return error("EAUTH", str(exc))
    except AiosError as exc:
        return error(exc.code, exc.message, getattr(exc, "param", None))


async def stream_chat(gw: Gateway, rec: KeyRecord, args: dict, meta: dict) -> Response:
    async def first(s: Session):
        it = s.conn.stream("llm_chat", {**args, "stream": True}).__aiter__()
        return it, await it.__anext__()  # an error before the first chunk is an HTTP error

    it, head = await gw.as_agent(rec, first)
    cid, created, model = shapes.new_id(), int(time.time()), gw.model

    async def events():
        yield sse(shapes.chunk_out(cid, created, model, {"role": "assistant", "content": ""}))
        done, item = head
        final: dict = {}
        sent: list[str] = []
        try:
            while True:
                if done:
                    final = item if isinstance(item, dict) else final
                    break
                text, last = shapes.delta_of(item)
                if last is not None:
                    final = last
                elif text:
                    sent.append(text)
                    yield sse(shapes.chunk_out(cid, created, model, {"content": text}))
                done, item = await it.__anext__()
        except AiosError as exc:
            yield sse(shapes.error_response(exc.code, exc.message)[1])
            yield "data: [DONE]\n\n"
            return
        rest = shapes.unsent(final.get("text") or "", "".join(sent))
        if rest:  # text the worker returned without streaming it
            yield sse(shapes.chunk_out(cid, created, model, {"content": rest}))
        calls = shapes.tool_calls_out(final.get("tool_calls"))
        if calls:
            yield sse(shapes.chunk_out(cid, created, model, {"tool_calls": calls}))
        yield sse(shapes.chunk_out(cid, created, model, {}, shapes.finish_out(final, calls)))
        if meta["include_usage"]:
            yield sse(shapes.chunk_out(cid, created, model, {}, usage=shapes.usage_out(final), choices=False))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        gw.authenticate(request)
    except Unauthorized as exc:
        return error("EAUTH", str(exc))
    card = {"id": gw.model, "object": "model", "created": int(gw.started), "owned_by": "aiosd"}
    wanted = request.path_params.get("model")
    if wanted is not None:
        return JSONResponse(card) if wanted == gw.model else error("ENOENT", f"no model '{wanted}'", "model")
    return JSONResponse({"object": "list", "data": [card]})


async def healthz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"status": "ok", "model": gw.model, "agents": len(gw.sessions),
                         "uptime_s": round(time.time() - gw.started, 1)})


async def http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    code = {404: "ENOENT", 405: "EINVAL"}.get(status, "EIO")
    _, body, headers = shapes.error_response(code, str(getattr(exc, "detail", "")) or "error")
    return JSONResponse(body, status_code=status, headers=headers)


def build(home: Path, model: str) -> Starlette:
    gw = Gateway(home, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ], exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.gateway = gw
    return app
