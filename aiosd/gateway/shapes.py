"""OpenAI request and response shapes <-> llm_chat arguments and results. Pure, no I/O.

Only what aiosd can honour is accepted: n = 1, text content, function tools. Fields an
OpenAI client sends that change nothing here (user, metadata, a zero penalty, ...) are
ignored, as other OpenAI-compatible servers do; ones whose meaning would be lost are 400.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from aiosd.errors import AiosError

STATUS = {"EINVAL": 400, "E2BIG": 400, "EPROTO": 400, "ENOSYS": 400, "EACCES": 403, "EPERM": 403,
          "ENOENT": 404, "ESRCH": 404, "EBUSY": 429, "ENOMEM": 429, "ENOSPC": 429, "EUNAVAIL": 503,
          "ETIMEDOUT": 504}
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}
ROLES = {"system", "developer", "user", "assistant", "tool"}
UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "audio", "prediction")


def bad(message: str, param: str | None = None) -> AiosError:
    exc = AiosError("EINVAL", message)
    exc.param = param  # type: ignore[attr-defined]
    return exc


def error_response(code: str, message: str, param: str | None = None) -> tuple[int, dict, dict]:
    """(HTTP status, OpenAI error body, extra headers) for an errno-named error."""
    status = 401 if code == "EAUTH" else STATUS.get(code, 500)
    body = {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param,
                      "code": "invalid_api_key" if status == 401 else code}}
    headers = {"Retry-After": "1"} if status == 429 else {}
    return status, body, headers


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise bad(f"{where}: only text content parts are supported", "messages")
            out.append(str(part.get("text", "")))
        return "".join(out)
    raise bad(f"{where}: content must be a string or a list of text parts", "messages")


def messages_in(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(f"{where} must be an object with a role of {', '.join(sorted(ROLES))}", "messages")
        role = "system" if m["role"] == "developer" else m["role"]
        msg: dict = {"role": role, "content": _text(m.get("content"), where)}
        if role == "assistant" and m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise bad(f"{where}.tool_calls must be an array", "messages")
            msg["tool_calls"] = m["tool_calls"]
        if role == "tool":
            msg["tool_call_id"] = str(m.get("tool_call_id") or "")
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def tools_in(body: dict) -> list | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none", "auto"):
            raise bad("'tool_choice' names a tool but no 'tools' were given", "tool_choice")
        return None
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type", "function") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise bad("'tools' must be an array of {type: function, function: {name, ...}}", "tools")
    if choice in (None, "auto", "required"):
        return tools
    if choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        named = [t for t in tools if t["function"]["name"] == choice["function"].get("name")]
        if not named:
            raise bad("'tool_choice' names a function that is not in 'tools'", "tool_choice")
        return named
    raise bad("'tool_choice' must be none, auto, required or {type: function, function: {name}}", "tool_choice")


def tool_names(tools: list | None) -> list[str]:
    return [t["function"]["name"] for t in tools or []]


def _num(body: dict, key: str, lo: float, hi: float, integer: bool = False) -> Any:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        raise bad(f"'{key}' must be {kind} from {lo:g} to {hi:g}", key)
    return v if integer else float(v)


def chat_in(body: Any) -> tuple[dict, dict]:
    """A /v1/chat/completions body -> (llm_chat arguments, {model, stream, include_usage})."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    if body.get("n") not in (None, 1):
        raise bad("only n = 1 is supported", "n")
    for key in UNSUPPORTED:
        if body.get(key):
            raise bad(f"'{key}' is not supported", key)
    args: dict = {"messages": messages_in(body.get("messages"))}
    mt = _num(body, "max_completion_tokens", 1, 1 << 20, True)
    args["max_tokens"] = mt if mt is not None else _num(body, "max_tokens", 1, 1 << 20, True)
    args["temperature"] = _num(body, "temperature", 0.0, 2.0)
    args["top_p"] = _num(body, "top_p", 0.0, 1.0)
    args["seed"] = _num(body, "seed", 0, 2**63 - 1, True)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) and s for s in stop)):
        raise bad("'stop' must be a string or an array of at most 4 strings", "stop")
    args["stop"] = stop
    args["tools"] = tools_in(body)
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise bad("'stream' must be a boolean", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("'model' must be a string", "model")
    meta = {"model": model, "stream": bool(stream), "include_usage": bool(opts.get("include_usage"))}
    return {k: v for k, v in args.items() if v is not None}, meta


# ---- out ---------------------------------------------------------------------------------
def new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def tool_calls_out(calls: Any) -> list | None:
    """The worker's tool calls as OpenAI's: [{id, type: function, function: {name, arguments}}]."""
    if not calls:
        return None
    out = []
    for i, c in enumerate(calls):
        if not isinstance(c, dict):
            continue
        fn = c.get("function") if isinstance(c.get("function"), dict) else c
        args = fn.get("arguments", {})
        out.append({"id": str(c.get("id") or f"call_{secrets.token_hex(8)}"), "type": "function",
                    "index": i, "function": {"name": str(fn.get("name", "")),
                                             "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return out or None


def finish_out(result: dict, calls: list | None) -> str:
    reason = result.get("finish_reason") or "stop"
    if calls:
        return "tool_calls"
    return reason if reason in ("stop", "length", "tool_calls", "content_filter") else "stop"


def usage_out(result: dict) -> dict:
    u = result.get("usage") or {}
    p, c = int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion_out(result: dict, model: str, cid: str | None = None) -> dict:
    calls = tool_calls_out(result.get("tool_calls"))
    message: dict = {"role": "assistant", "content": result.get("text") or (None if calls else ""),
                     "refusal": None}
    if calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    return {"id": cid or new_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_out(result, calls)}],
            "usage": usage_out(result), "system_fingerprint": None}


def chunk_out(cid: str, created: int, model: str, delta: dict, finish: str | None = None,
              usage: dict | None = None, choices: bool = True) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "system_fingerprint": None,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage is not None:
        out["usage"] = usage
    return out


def delta_of(chunk: Any) -> tuple[str, dict | None]:
    """A streamed partial from the worker -> (text delta, final reply if it carried one)."""
    if isinstance(chunk, str):
        return chunk, None
    if isinstance(chunk, dict):
        if chunk.get("finish_reason") is not None and "delta" not in chunk:
            return "", chunk
        return str(chunk.get("delta") or chunk.get("text") or ""), None
    return "", None


def unsent(final_text: str, streamed: str) -> str:
    """What of the final text the stream has not carried (all of it, if nothing was streamed)."""
    return final_text[len(streamed):] if final_text.startswith(streamed) else ""
