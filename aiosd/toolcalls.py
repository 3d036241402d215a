"""Tool calls in model output, the prompt that offers tools to a model, and what the llm
manager does with both (pure functions).

SmolLM2's chat template has no tools section, so tools go into the system message the
way SmolLM2-Instruct was trained for function calling: schemas inside <tools>...</tools>
and calls answered as <tool_call>[{"name": ..., "arguments": {...}}]</tool_call>. The
parser also takes a lone JSON object or list (fenced or bare) as a fallback, and reports
what it could not read instead of raising, so a weak model's mistakes go back to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiosd.errors import AiosError

TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


@dataclass
class Parsed:
    calls: list[dict] = field(default_factory=list)   # OpenAI form: {"id", "type", "function"}
    errors: list[str] = field(default_factory=list)   # one sentence per call that could not be read
    content: str = ""                                 # the text without the tool-call blocks


def tools_prompt(tools: list[dict]) -> str:
    """The system-prompt text that offers `tools` (OpenAI function schemas) to the model."""
    fns = [t.get("function", t) for t in tools if isinstance(t, dict)]
    return ("You may call functions to help with the request. The functions are listed in "
            "<tools></tools>:\n<tools>" + json.dumps(fns, ensure_ascii=False) + "</tools>\n"
            "To call functions, answer with only a list of calls in <tool_call></tool_call> tags, e.g.\n"
            '<tool_call>[{"name": "func_name", "arguments": {"arg": "value"}}]</tool_call>\n'
            "If no function helps, answer directly.")


def _loads(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    # small models often write Python literals (single quotes, True/None)
    import ast
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("not JSON") from None


def _one(obj: Any, known: set[str] | None, n: int, out: Parsed) -> None:
    if not isinstance(obj, dict):
        out.errors.append(f"tool call {n} is not an object with a name and arguments")
        return
    fn = obj.get("function") if isinstance(obj.get("function"), dict) else obj
    name = fn.get("name") or fn.get("tool")
    args = fn.get("arguments", fn.get("parameters", fn.get("args", {})))
    if isinstance(args, str):
        try:
            args = _loads(args or "{}")
        except ValueError:
            out.errors.append(f"tool call {n} ({name}): its arguments are not JSON")
            return
    if not isinstance(name, str) or not name:
        out.errors.append(f"tool call {n} has no function name")
        return
    if not isinstance(args, dict):
        out.errors.append(f"tool call {n} ({name}): arguments must be an object")
        return
    if known is not None and name not in known:
        out.errors.append(f"tool call {n}: there is no tool named '{name}' (tools: {', '.join(sorted(known))})")
        return
    out.calls.append({"id": f"call_{len(out.calls) + 1}", "type": "function",
                      "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}})


def _add(payload: Any, known: set[str] | None, out: Parsed) -> None:
    items = payload if isinstance(payload, list) else [payload]
    for item in items:
        _one(item, known, len(out.calls) + len(out.errors) + 1, out)


def parse_tool_calls(text: str, tool_names: Iterable[str] | None = None) -> Parsed:
    """The tool calls in a model's reply. Tagged blocks first; else a reply that is (only)
    JSON naming a function. `tool_names`, when given, are the tools that exist."""
    known = set(tool_names) if tool_names is not None else None
    out = Parsed()
    text = text or ""
    blocks = TAG.findall(text)
    if blocks:
        for block in blocks:
            body = block.strip()
            fenced = FENCE.search(body)
            body = fenced.group(1) if fenced else body
            try:
                _add(_loads(body), known, out)
            except ValueError:
                out.errors.append(f"tool call {len(out.calls) + len(out.errors) + 1} is not valid JSON: "
                                  f"{body[:80]!r}")
        out.content = TAG.sub("", text).strip()
        return out
    candidates = [m.group(1) for m in FENCE.finditer(text)] or [text]
    for cand in candidates:
        cand = cand.strip()
        if not cand.startswith(("{", "[")):
            continue
        try:
            payload = _loads(cand)
        except ValueError:
            continue
        items = payload if isinstance(payload, list) else [payload]
        if items and all(isinstance(i, dict) and ("name" in i or "function" in i or "tool" in i) for i in items):
            _add(payload, known, out)
            out.content = text.replace(cand, "").replace("```json", "").replace("```", "").strip()
            return out
    out.content = text.strip()
    return out


# ---- what the llm manager does with them ---------------------------------------------------
def check_tools(tools: Any) -> list[dict] | None:
    """OpenAI function schemas, or EINVAL; None when no tools are offered."""
    if not tools:
        return None
    if not isinstance(tools, list):
        raise AiosError("EINVAL", "tools must be a list of function schemas")
    for i, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise AiosError("EINVAL", f"tools[{i}] must be a function schema with a name")
    return tools


def tool_names(tools: list[dict]) -> list[str]:
    return [t.get("function", t)["name"] for t in tools]


def offer_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The messages with the tools offered in the system message: SmolLM2's chat template
    ignores `tools`, so the model only sees them if the prompt says so."""
    if not tools:
        return messages
    offer = tools_prompt(tools)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + offer}, *messages[1:]]
    return [{"role": "system", "content": offer}, *messages]


def split_tool_calls(text: str, names: list[str] | None) -> tuple[str, list[dict], list[str]]:
    """(content, OpenAI-form tool calls, unreadable calls) of a reply; a reply with no call
    keeps its text exactly as generated."""
    if names is None:
        return text, [], []
    parsed = parse_tool_calls(text, names)
    if not parsed.calls and not parsed.errors:
        return text, [], []
    return parsed.content, parsed.calls, parsed.errors
