"""Tools for agents (Table 1 of the paper), run by the tools manager in sandboxed processes.

A tool module defines `TOOLS = [Tool(...)]` (and optionally `warm()`, run once in each
warm sandbox worker). See registry.py for plugins and MCP servers.
"""

from aiosd.tools.registry import Registry, Tool, ToolContext, build, validate_args

__all__ = ["Registry", "Tool", "ToolContext", "build", "validate_args"]
