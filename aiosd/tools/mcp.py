"""MCP servers mounted into the registry: `[tools.mcp.NAME] command = ["python", "srv.py"]`
(optional `env = {...}`, `prefix = true` to name tools NAME.tool).

The manager starts each server once to list its tools. A call starts the server again
inside the call's sandboxed child (stdio transport), so a hostile or hanging server is
confined and killed like any other tool.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiosd.errors import AiosError
from aiosd.tools.registry import Tool, ToolContext

LIST_TIMEOUT_S = 20.0


def _params(spec: dict) -> Any:
    from mcp import StdioServerParameters
    cmd = spec.get("command")
    if isinstance(cmd, str):
        cmd = cmd.split()
    if not cmd:
        raise AiosError("EINVAL", "an MCP server needs command = [...]")
    env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "LANG", "HOME", "VIRTUAL_ENV") if k in os.environ}
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    return StdioServerParameters(command=str(cmd[0]), args=[str(a) for a in cmd[1:]], env=env,
                                 cwd=spec.get("cwd"))


async def _session(spec: dict, work: Any) -> Any:
    from mcp import ClientSession
    from mcp.client.stdio import stdio_client
    with open(os.devnull, "w") as quiet:
        async with stdio_client(_params(spec), errlog=quiet) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)


def list_tools(spec: dict) -> list:
    async def work(session: Any) -> list:
        return list((await session.list_tools()).tools)
    return asyncio.run(asyncio.wait_for(_session(spec, work), LIST_TIMEOUT_S))


def mount(server: str, spec: dict) -> list[Tool]:
    if not isinstance(spec, dict):
        raise AiosError("EINVAL", f"[tools.mcp.{server}] must be a table")
    tools = []
    for t in list_tools(spec):
        name = f"{server}.{t.name}" if spec.get("prefix") else t.name
        schema = dict(getattr(t, "input_schema", None) or getattr(t, "inputSchema", None)
                      or {"type": "object", "properties": {}})
        mspec = {"server": server, "command": spec.get("command"), "env": spec.get("env") or {},
                 "cwd": spec.get("cwd"), "tool": t.name}
        tools.append(Tool(name, t.description or f"{t.name} (MCP server {server})", schema, _refuse,
                          category="mcp", network=True, cpu_s=int(spec.get("cpu_s", 60)),
                          memory=int(spec.get("memory", 2 << 30)), mcp_spec=mspec))
    return tools


def _refuse(args: dict, ctx: ToolContext) -> Any:
    raise AiosError("EIO", "an MCP tool runs through its server, not in-process")


def _content(result: Any) -> Any:
    parts = []
    for c in result.content or []:
        if getattr(c, "type", "") == "text":
            parts.append(c.text)
        elif hasattr(c, "data"):
            mime = getattr(c, "mime_type", getattr(c, "mimeType", None))
            parts.append({"type": c.type, "data": c.data, "mime": mime})
        else:
            parts.append(str(c))
    structured = getattr(result, "structured_content", getattr(result, "structuredContent", None))
    out: dict = {"text": "\n".join(p for p in parts if isinstance(p, str))}
    if structured is not None:
        out["structured"] = structured
    if any(not isinstance(p, str) for p in parts):
        out["parts"] = parts
    return out


def call(spec: dict, args: dict, timeout: float) -> Any:
    """One call of one MCP tool (in the sandboxed child)."""
    async def work(session: Any) -> Any:
        return await session.call_tool(spec["tool"], args)
    try:
        result = asyncio.run(asyncio.wait_for(_session(spec, work), timeout))
    except TimeoutError:
        raise AiosError("ETIMEDOUT", f"MCP tool {spec['tool']} did not answer within {timeout:g} s") from None
    if getattr(result, "is_error", getattr(result, "isError", False)):
        raise AiosError("EIO", f"MCP tool {spec['tool']} failed: {_content(result).get('text', '')[:500]}")
    return _content(result)
