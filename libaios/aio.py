"""The asyncio flavour of libaios: the same calls, awaitable.

    from libaios import aio
    reply, rec = await asyncio.gather(aio.llm_chat(msgs, max_tokens=32), aio.mem_read(last=3))

Each call runs in a worker thread; the client keeps one DEALER socket per thread, so
calls made at once really are in flight at once (the kernel answers them in any order).
The connection is the one in effect where the coroutine was made (`calls.bind` carries over).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from libaios import calls


def _wrap(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("stream"):
            # a stream is read lazily; draining it in a thread gives the whole reply at once
            stream = fn(*args, **kwargs)
            ctx = contextvars.copy_context()
            await asyncio.to_thread(ctx.run, lambda: list(stream))
            return stream.result
        return await asyncio.to_thread(fn, *args, **kwargs)  # to_thread copies the context
    call.__signature__ = inspect.signature(fn)  # keyword names are the interface
    return call


for _name in calls.__all__:
    globals()[_name] = _wrap(getattr(calls, _name))

__all__ = list(calls.__all__)
