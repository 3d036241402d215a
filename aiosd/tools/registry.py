"""The tool registry: built-in tool modules, `aios.tools` entry-point plugins, modules named
in config (`tools.plugins = [...]`) and tools of MCP servers (`[tools.mcp.NAME] command`).

Both the tools manager (for schemas and validation) and the sandbox workers (to run the
tools) build the same registry, so a worker can find any tool by name after a fork.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema

from aiosd.errors import AiosError

log = logging.getLogger("aiosd")

BUILTIN = ("aiosd.tools.compute", "aiosd.tools.database", "aiosd.tools.web", "aiosd.tools.image")
CATEGORIES = ("search", "computation", "database query", "image processing", "mcp", "other")  # Table 1, then ours
RESERVED = ("plugins", "mcp")  # keys of cfg.tools that are not tool names


@dataclass
class ToolContext:
    """What a running tool gets besides its arguments."""
    scratch: Path                 # its own directory, removed after the call
    url: str = ""                 # base URL override (config or AIOS_TOOL_URL_<NAME>)
    timeout: float = 30.0         # seconds the call may take in all
    caller: str = ""              # the calling agent's name
    extra: dict = field(default_factory=dict)

    def base_url(self, default: str) -> str:
        return (self.url or default).rstrip("/")


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict
    run: Callable[[dict, ToolContext], Any]
    category: str = "other"
    network: bool = False         # needs: reaches a service over the network
    files: bool = False           # needs: reads files given by path
    cpu_s: int = 60               # needs: CPU seconds (RLIMIT_CPU)
    memory: int = 2 << 30         # needs: address space in bytes (RLIMIT_AS)
    concurrency: int = 0          # calls of this tool at once; 0: the pool's size
    env: tuple[str, ...] = ()     # environment variables it may see (API keys)
    mcp_spec: dict | None = None  # a tool of an MCP server: {"server", "command", "env", "tool"}

    def validator(self) -> Any:
        """Built once per tool: building one per call cost a tenth of a millisecond."""
        v = self.__dict__.get("_validator")
        if v is None:
            v = self.__dict__["_validator"] = Validator(self.parameters)
        return v

    def schema(self) -> dict:
        """The OpenAI function-calling form, the same `llm_chat(tools=...)` takes."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def _is_string(_checker: Any, inst: Any) -> bool:
    # images and other payloads arrive as bytes; they pass where a schema says "string"
    return isinstance(inst, (str, bytes, bytearray))


_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("string", _is_string)
Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


def validate_args(tool: Tool, args: Any) -> dict:
    """Check args against the tool's JSON schema; EINVAL names the failing field."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise AiosError("EINVAL", f"arguments of {tool.name} must be an object")
    validator = tool.validator()
    err = jsonschema.exceptions.best_match(validator.iter_errors(args))
    if err is None:
        return args
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "required":
        missing = next((r for r in err.validator_value if r not in (err.instance or {})), "?")
        path = f"{path}.{missing}" if path else str(missing)
        raise AiosError("EINVAL", f"{tool.name}: argument '{path}' is required")
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        raise AiosError("EINVAL", f"{tool.name}: unknown argument '{(extra or ['?'])[0]}'")
    msg = err.message if len(err.message) < 200 else err.message[:200] + "..."
    raise AiosError("EINVAL", f"{tool.name}: argument '{path or '(root)'}' is invalid: {msg}")


def _tools_of(obj: Any) -> list[Tool]:
    """A module (its TOOLS list), a Tool, a list of Tools, or a callable returning those."""
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for t in obj if isinstance(t, Tool)]
    if hasattr(obj, "TOOLS"):
        return _tools_of(obj.TOOLS)
    if callable(obj):
        return _tools_of(obj())
    return []


class Registry:
    def __init__(self) -> None:
        self.tools: dict[str, Tool] = {}
        self.modules: list[str] = []   # what a sandbox worker imports to rebuild this registry
        self.errors: list[str] = []    # plugins that failed to load (reported, not fatal)
        self.origin: dict[str, str] = {}  # tool name -> the module that defines it

    def add(self, tool: Tool, overrides: dict | None = None) -> None:
        for key in ("cpu_s", "memory", "concurrency"):
            if overrides and key in overrides:
                setattr(tool, key, int(overrides[key]))
        self.tools[tool.name] = tool

    def get(self, name: str) -> Tool:
        tool = self.tools.get(name)
        if tool is None:
            raise AiosError("ENOENT", f"no tool named '{name}'")
        return tool

    def schemas(self, allow: list | None = None) -> list[dict]:
        return [t.schema() for n, t in sorted(self.tools.items()) if allow is None or n in allow]

    def load_module(self, name: str, tools_cfg: dict) -> None:
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # a broken plugin must not stop the manager
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.error("tool module %s failed to load: %s", name, exc)
            return
        self.modules.append(name)
        for tool in _tools_of(mod):
            self.add(tool, tools_cfg.get(tool.name) if isinstance(tools_cfg.get(tool.name), dict) else None)
            self.origin[tool.name] = name

    def warm(self, name: str) -> bool:
        """Whether a tool's module has a `warm()` (heavy imports done once per worker): its
        calls go to warm workers; the rest to light ones, which fork and exit faster."""
        mod = sys.modules.get(self.origin.get(name, ""))
        return mod is not None and callable(getattr(mod, "warm", None))


def build(tools_cfg: dict | None = None, *, mcp: bool = True) -> Registry:
    """The registry for a config's `tools` table."""
    tools_cfg = tools_cfg or {}
    reg = Registry()
    for name in BUILTIN:
        reg.load_module(name, tools_cfg)
    for ep in entry_points(group="aios.tools"):
        try:
            for tool in _tools_of(ep.load()):
                reg.add(tool, tools_cfg.get(tool.name) if isinstance(tools_cfg.get(tool.name), dict) else None)
                reg.origin[tool.name] = ep.module
            reg.modules.append(ep.module)
        except Exception as exc:
            reg.errors.append(f"entry point {ep.name}: {type(exc).__name__}: {exc}")
    for name in tools_cfg.get("plugins") or []:
        reg.load_module(str(name), tools_cfg)
    servers = tools_cfg.get("mcp") or {}
    if mcp and isinstance(servers, dict):
        from aiosd.tools import mcp as mcp_tools
        for server, spec in servers.items():
            try:
                for tool in mcp_tools.mount(server, spec):
                    reg.add(tool)
            except Exception as exc:
                reg.errors.append(f"mcp server {server}: {type(exc).__name__}: {exc}")
                log.error("mcp server %s could not be mounted: %s", server, exc)
    return reg


def tool_env(reg: Registry) -> set[str]:
    """Every variable some tool may see: the workers keep these and drop the rest of secrets."""
    names: set[str] = set()
    for t in reg.tools.values():
        names.update(t.env)
    return names

