"""An asyncio connection to the kernel: one DEALER, many calls in flight, matched by id.

The gateway opens one as plain root (to attach and detach agents) and one per agent,
which says `set_aid` once so that the kernel checks, schedules and audits every later
call on it as that agent, exactly as it does a native agent's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from aiosd import protocol
from aiosd.errors import AiosError

SHM_THRESHOLD = 64 * 1024


class KernelConn:
    def __init__(self, ctx: zmq.asyncio.Context, home: Path, token: str):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt_string(zmq.PLAIN_USERNAME, "root")
        self.sock.setsockopt_string(zmq.PLAIN_PASSWORD, token)
        self.sock.connect(f"ipc://{home / 'run' / 'kernel.sock'}")
        self.ids = itertools.count(1)
        self.waiters: dict[int, asyncio.Queue] = {}
        self.aid = 0
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                raw = await self.sock.recv()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            try:
                msg, refs = protocol.unpack_refs(raw, 1 << 31)
            except AiosError:
                continue
            if not isinstance(msg, dict):
                continue
            q = self.waiters.get(msg.get("id"))
            if q is None:
                if refs:  # nobody wants it any more: free its segments
                    protocol.discard(msg)
                continue
            q.put_nowait(protocol.resolve(msg) if refs else msg)

    async def _send(self, name: str, args: dict) -> tuple[int, asyncio.Queue]:
        rid = next(self.ids)
        q: asyncio.Queue = asyncio.Queue()
        self.waiters[rid] = q
        await self.sock.send(protocol.pack_msg({"id": rid, "call": name, "args": args}, SHM_THRESHOLD))
        return rid, q

    @staticmethod
    def _result(msg: dict) -> Any:
        if msg.get("ok"):
            return msg.get("result")
        raise AiosError.from_wire(msg.get("error"))

    async def call(self, name: str, args: dict | None = None) -> Any:
        rid, q = await self._send(name, args or {})
        try:
            while True:
                msg = await q.get()
                if "partial" not in msg:
                    return self._result(msg)
        finally:
            self.waiters.pop(rid, None)

    async def stream(self, name: str, args: dict) -> AsyncIterator[tuple[bool, Any]]:
        """Yields (False, partial chunk) as they come, then (True, the final result)."""
        rid, q = await self._send(name, args)
        try:
            while True:
                msg = await q.get()
                if "partial" in msg:
                    yield False, msg["partial"]
                    continue
                yield True, self._result(msg)
                return
        finally:
            self.waiters.pop(rid, None)

    async def act_as(self, aid: int) -> None:
        await self.call("set_aid", {"aid": aid})
        self.aid = aid

    def close(self) -> None:
        self.reader.cancel()
        self.sock.close(0)
