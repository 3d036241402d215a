"""One plain function per public syscall, with the keyword names of DESIGN.md.

Each wrapper's parameters are exactly the argument names of its entry in
`aiosd.syscalls.SYSCALLS` (tests/test_libaios_table.py keeps the two from drifting);
the kernel checks the types, so a wrong one is `InvalidArgument`, not a `TypeError`.

Calls go through the process's default connection (AIOS_HOME, AIOS_AID, AIOS_TOKEN).
To act through another connection (a test's agent client, a gateway), bind it:

    from libaios import calls
    me = calls.bind(client)
    me.mem_write("likes ramen")          # checked as the agent `client` belongs to

Streaming: `llm_chat(..., stream=True)` returns a `ChatStream`; iterating it yields the
text deltas (str) as the model produces them, and once it is exhausted its `.result`
holds the same dict a non-streaming call returns (text, finish_reason, usage, timings).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("libaios_client", default=None)


def _client() -> Any:
    c = _current.get()
    if c is not None:
        return c
    return _default()


def _default() -> Any:
    from libaios.client import connect
    return connect()  # the process's one connection (as the agent in the environment, or root)


def _call(name: str, args: dict, timeout: float | None = None) -> Any:
    """Drop the unset arguments (the schema's defaults apply) and make the call."""
    clean = {k: v for k, v in args.items() if v is not None}
    c = _client()
    if timeout is None:
        return c.syscall(name, clean)
    return c.syscall(name, clean, timeout=timeout)


class Bound:
    """The wrappers of this module, made through one given client."""

    def __init__(self, client: Any):
        self.client = client

    def __getattr__(self, name: str) -> Any:
        fn = globals().get(name)
        if name.startswith("_") or name not in __all__ or not callable(fn):
            raise AttributeError(name)

        def call(*a: Any, **kw: Any) -> Any:
            token = _current.set(self.client)
            try:
                out = fn(*a, **kw)
                if isinstance(out, ChatStream):
                    out.client = self.client  # the stream is read later, outside this block
                return out
            finally:
                _current.reset(token)
        call.__name__ = call.__qualname__ = name
        call.__doc__ = fn.__doc__
        return call


def bind(client: Any) -> Bound:
    return Bound(client)


def _field(result: Any, key: str) -> Any:
    """Managers answer either the bare value or a small map that holds it."""
    if isinstance(result, dict) and key in result:
        return result[key]
    return result


# ---- llm --------------------------------------------------------------------------------
class ChatStream:
    """Iterate for text deltas; `.result` is the final reply dict once iteration ends."""

    def __init__(self, args: dict, client: Any = None):
        self.args = args
        self.client = client
        self.result: dict | None = None

    def __iter__(self) -> Iterator[str]:
        client = self.client or _client()
        stream = client.stream("llm_chat", self.args)
        text: list[str] = []
        final: Any = None
        for chunk in stream:
            delta, final_chunk = _delta(chunk)
            if final_chunk is not None:
                final = final_chunk
            elif delta:
                text.append(delta)
                yield delta
        final = stream.result if isinstance(stream.result, dict) else final
        if not isinstance(final, dict):
            final = {"text": "".join(text), "finish_reason": None, "tool_calls": None}
        self.result = final

    def text(self) -> str:
        """Drain the stream and return the whole text."""
        return "".join(self)


def _delta(chunk: Any) -> tuple[str, dict | None]:
    if isinstance(chunk, str):
        return chunk, None
    if isinstance(chunk, dict):
        if "finish_reason" in chunk and chunk.get("finish_reason") is not None and "delta" not in chunk:
            return "", chunk  # the final reply travelled as the last chunk
        return str(chunk.get("delta") or chunk.get("text") or ""), None
    return "", None


def llm_chat(messages: list, *, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, stop: str | list | None = None, tools: list | None = None,
             stream: bool = False, context: bool | None = None) -> Any:
    """Generate a reply: {"text", "finish_reason", "tool_calls", "usage", "timings"}.

    >>> llm_chat([{"role": "user", "content": "Say hi"}], max_tokens=8)["text"]
    """
    args = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "seed": seed, "stop": stop, "tools": tools, "context": context}
    if stream:
        return ChatStream({k: v for k, v in {**args, "stream": True}.items() if v is not None},
                          _current.get())
    return _call("llm_chat", args)


def gen_snapshot(request: int | None = None) -> Any:
    return _call("gen_snapshot", {"request": request})


def gen_restore(snapshot: str, *, stream: bool | None = None) -> Any:
    return _call("gen_restore", {"snapshot": snapshot, "stream": stream})


def get_context(aid: int | None = None) -> Any:
    return _call("get_context", {"aid": aid})


def set_context(messages: list) -> Any:
    return _call("set_context", {"messages": messages})


def clr_context() -> Any:
    return _call("clr_context", {})


def exp_context(size: int) -> Any:
    return _call("exp_context", {"size": size})


# ---- memory -----------------------------------------------------------------------------
def mem_write(content: str | bytes, *, key: str | None = None, role: str = "user",
              metadata: dict | None = None) -> Any:
    """Append a record (or set `key`); returns the record id."""
    return _field(_call("mem_write", {"content": content, "key": key, "role": role, "metadata": metadata}), "id")


def mem_read(key: str | None = None, *, last: int | None = None, start: int | None = None,
             end: int | None = None, aid: int | None = None) -> list:
    """Records by key, by range or the last n (of another agent with `aid`, if granted)."""
    return _field(_call("mem_read", {"key": key, "last": last, "start": start, "end": end, "aid": aid}),
                  "records")


def mem_clear(key: str | None = None, *, record: int | None = None, all: bool = False,  # noqa: A002
              aid: int | None = None) -> Any:
    return _call("mem_clear", {"key": key, "record": record, "all": all or None, "aid": aid})


def mem_alloc(size: int) -> Any:
    return _call("mem_alloc", {"size": size})


def mem_search(query: str, k: int = 5, *, aid: int | None = None) -> list:
    return _field(_call("mem_search", {"query": query, "k": k, "aid": aid}), "records")


def mem_persist(on_exit: bool) -> Any:
    """Keep this agent's memory in storage when it exits, for a later run of its name."""
    return _call("mem_persist", {"on_exit": on_exit})


def mem_restore() -> dict:
    """Replace this agent's memory with what the last agent of its name persisted at exit:
    {"records": n, "from_aid": that agent's aid}; ENOENT (FileNotFoundError) when none did."""
    return _call("mem_restore", {})


# ---- storage ----------------------------------------------------------------------------
def sto_write(path: str, data: bytes | str, *, owner: str | None = None) -> int:
    """Durable write; returns the new version number."""
    return _field(_call("sto_write", {"path": path, "data": data, "owner": owner}), "version")


def sto_read(path: str, *, version: int | None = None, owner: str | None = None) -> bytes:
    out = _field(_call("sto_read", {"path": path, "version": version, "owner": owner}), "data")
    return out.encode() if isinstance(out, str) else out


def sto_delete(path: str, *, owner: str | None = None) -> Any:
    return _call("sto_delete", {"path": path, "owner": owner})


def sto_list(prefix: str = "", *, owner: str | None = None) -> list:
    return _field(_call("sto_list", {"prefix": prefix, "owner": owner}), "paths")


def sto_alloc(size: int) -> Any:
    return _call("sto_alloc", {"size": size})


def sto_retrieve(query: str, k: int = 5, *, owner: str | None = None) -> list:
    return _field(_call("sto_retrieve", {"query": query, "k": k, "owner": owner}), "results")


def sto_versions(path: str, *, owner: str | None = None) -> list:
    return _field(_call("sto_versions", {"path": path, "owner": owner}), "versions")


def sto_usage(*, owner: str | None = None, all: bool = False) -> list:  # noqa: A002 - the syscall's name
    """[{name, used, quota, files}]: the caller's namespace (or a granting owner's); all=True,
    every namespace (root only)."""
    return _field(_call("sto_usage", {"owner": owner, "all": all}), "namespaces")


def snapshot_create(label: str | None = None) -> Any:
    return _call("snapshot_create", {"label": label})


def snapshot_restore(snapshot: str) -> Any:
    return _call("snapshot_restore", {"snapshot": snapshot})


def snapshot_list(*, owner: str | None = None) -> list:
    """[{snapshot, label, time, aid, records, files, bytes}], oldest first: the caller's, or
    those of an owner that granted it storage reads (root: any name's)."""
    return _field(_call("snapshot_list", {"owner": owner}), "snapshots")


def snapshot_delete(snapshot: str) -> Any:
    return _call("snapshot_delete", {"snapshot": snapshot})


def audit_query(aid: int | None = None, *, since: float | None = None, until: float | None = None,
                call: str | None = None, limit: int | None = None, name: str | None = None) -> list:
    return _field(_call("audit_query", {"aid": aid, "since": since, "until": until, "call": call,
                                        "limit": limit, "name": name}), "records")


# ---- tools ------------------------------------------------------------------------------
def tool_list() -> list:
    """OpenAI function schemas of the tools the caller may use."""
    return _call("tool_list", {})


def tool_call(name: str, args: dict | None = None, *, timeout: float | None = None) -> Any:
    # the client waits a little longer than the tool may run, so the tool's own ETIMEDOUT wins
    wait = None if timeout is None else timeout + 10.0
    return _call("tool_call", {"name": name, "args": args or {}, "timeout": timeout}, wait)


# ---- agents -----------------------------------------------------------------------------
def get_aid() -> int:
    return _field(_call("get_aid", {}), "aid")


def set_aid(aid: int) -> Any:
    return _call("set_aid", {"aid": aid})


def get_status(aid: int | None = None) -> dict:
    return _call("get_status", {"aid": aid})


def set_status(aid: int, status: str) -> Any:
    return _call("set_status", {"aid": aid, "status": status})


def get_priority(aid: int | None = None) -> int:
    return _field(_call("get_priority", {"aid": aid}), "priority")


def set_priority(aid: int, priority: int) -> Any:
    return _call("set_priority", {"aid": aid, "priority": priority})


def suspend_agent(aid: int) -> Any:
    return _call("suspend_agent", {"aid": aid})


def resume_agent(aid: int) -> Any:
    return _call("resume_agent", {"aid": aid})


def spawn_agent(argv: list, *, name: str | None = None, priority: int | None = None, env: dict | None = None,
                cwd: str | None = None, tools: list | None = None, memory_quota: int | None = None,
                storage_quota: int | None = None, context_strategy: str | None = None) -> dict:
    """Start an agent as a child process of the daemon; returns {"aid", "pid", ...}."""
    return _call("spawn_agent", {"argv": argv, "name": name, "priority": priority, "env": env, "cwd": cwd,
                                 "tools": tools, "memory_quota": memory_quota, "storage_quota": storage_quota,
                                 "context_strategy": context_strategy})


def attach_agent(name: str, *, priority: int | None = None, tools: list | None = None,
                 manager: str | None = None) -> int:
    """Root: make an agent row carried by a manager process (the gateway); returns its aid."""
    return _call("attach_agent", {"name": name, "priority": priority, "tools": tools, "manager": manager})


def detach_agent(aid: int, exit_code: int | None = None) -> Any:
    """Root: end an attached agent row."""
    return _call("detach_agent", {"aid": aid, "exit_code": exit_code})


def kill_agent(aid: int, signal: str | None = None) -> Any:
    return _call("kill_agent", {"aid": aid, "signal": signal})


def wait_agent(aid: int, timeout: float | None = None) -> dict:
    """Block until the agent exits; returns its process-table row."""
    wait = 10**6 if timeout is None else timeout + 10.0  # the kernel's ETIMEDOUT comes first
    return _call("wait_agent", {"aid": aid, "timeout": timeout}, wait)


def list_agents(all: bool = False) -> list:  # noqa: A002 - the syscall's argument name
    return _call("list_agents", {"all": all or None})


def log_event(message: str, level: str | None = None) -> Any:
    return _call("log_event", {"message": message, "level": level})


# ---- access -----------------------------------------------------------------------------
def grant(grantee: int | str, resource: str, rights: str | None = None) -> Any:
    return _call("grant", {"grantee": grantee, "resource": resource, "rights": rights})


def revoke(grantee: int | str, resource: str, rights: str | None = None) -> Any:
    return _call("revoke", {"grantee": grantee, "resource": resource, "rights": rights})


def encrypt_data(data: bytes | str) -> bytes:
    return _call("encrypt_data", {"data": data})


def decrypt_data(blob: bytes, *, owner: str | None = None) -> bytes:
    return _call("decrypt_data", {"blob": blob, "owner": owner})


# ---- system -----------------------------------------------------------------------------
def sys_status() -> dict:
    return _call("sys_status", {})


def sys_metrics() -> dict:
    return _call("sys_metrics", {})


def sys_set(settings: dict) -> dict:
    return _call("sys_set", {"settings": settings})


def sys_stop() -> Any:
    return _call("sys_stop", {})


__all__ = [n for n, f in list(globals().items())
           if callable(f) and not n.startswith("_") and getattr(f, "__module__", "") == __name__
           and n not in ("bind", "Bound", "ChatStream")]
