"""Tools used only by perf/tools.py (loaded through `tools.plugins`)."""

from __future__ import annotations

import time

from aiosd.tools.registry import Tool, ToolContext


def noop(args: dict, ctx: ToolContext) -> dict:
    return {"ok": True}


def sleep(args: dict, ctx: ToolContext) -> dict:
    time.sleep(float(args.get("seconds", 1.0)))
    return {"slept": float(args.get("seconds", 1.0))}


TOOLS = [
    Tool("perf_noop", "does nothing", {"type": "object", "properties": {}}, noop),
    Tool("perf_sleep", "sleeps", {"type": "object", "properties": {"seconds": {"type": "number"}}}, sleep),
]
