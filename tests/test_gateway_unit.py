"""The gateway's pure parts: the key store, OpenAI shapes, errno -> HTTP. No sockets."""

from __future__ import annotations

import json
import os
import stat

import pytest

from aiosd.errors import AiosError
from aiosd.gateway import shapes
from aiosd.gateway.keys import KeyStore, digest
from aiosd.config import parse_http

USER = [{"role": "user", "content": "hi"}]
FN = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}


def test_keys_are_stored_hashed_0600_and_shown_once(tmp_path):
    store = KeyStore.for_home(tmp_path)
    key, rec = store.create("alice", priority=-2, tools=["calculator"])
    text = (tmp_path / "data" / "keys.json").read_text()
    assert key not in text and digest(key) in text
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "keys.json").st_mode) == 0o600
    assert not any(p.name.startswith("keys.tmp") for p in (tmp_path / "data").iterdir())
    found = KeyStore.for_home(tmp_path).lookup(key)
    assert found is not None and (found.name, found.priority, found.tools) == ("alice", -2, ["calculator"])
    assert store.lookup(key + "x") is None and store.lookup("") is None
    assert "sha256" not in found.public()


def test_revoke_by_name_or_prefix_and_reload(tmp_path):
    store = KeyStore.for_home(tmp_path)
    k1, r1 = store.create("a")
    k2, r2 = store.create("b")
    reader = KeyStore.for_home(tmp_path)
    assert reader.lookup(k1) and reader.lookup(k2)
    assert [r.name for r in store.revoke("a")] == ["a"]
    assert reader.lookup(k1) is None and reader.lookup(k2) is not None  # the reader saw the change
    assert [r.name for r in store.revoke(r2.prefix)] == ["b"]
    assert reader.lookup(k2) is None
    with pytest.raises(AiosError) as e:
        store.revoke("a")
    assert e.value.code == "ENOENT"
    assert len(store.load()) == 2 and all(not r.active for r in store.load())


def test_key_names_and_duplicates(tmp_path):
    store = KeyStore.for_home(tmp_path)
    store.create("x")
    for bad_name in ("", "a b", "../x", "x" * 65):
        with pytest.raises(AiosError) as e:
            store.create(bad_name)
        assert e.value.code == "EINVAL"
    with pytest.raises(AiosError) as e:
        store.create("x")
    assert e.value.code == "EEXIST"
    with pytest.raises(AiosError):
        store.create("y", priority=99)
    store.revoke("x")
    store.create("x")  # a name is free again once its key is revoked


def test_chat_in_maps_the_openai_fields():
    args, meta = shapes.chat_in({"model": "m", "messages": USER, "max_tokens": 9, "max_completion_tokens": 7,
                                 "temperature": 0, "top_p": 0.5, "seed": 3, "stop": "\n", "stream": True,
                                 "stream_options": {"include_usage": True}, "user": "ignored", "n": 1})
    assert args == {"messages": USER, "max_tokens": 7, "temperature": 0.0, "top_p": 0.5, "seed": 3, "stop": ["\n"]}
    assert meta == {"model": "m", "stream": True, "include_usage": True}
    args, _ = shapes.chat_in({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                             {"type": "text", "text": "b"}]}]})
    assert args["messages"] == [{"role": "system", "content": "ab"}]


def test_chat_in_tools_and_tool_choice():
    args, _ = shapes.chat_in({"messages": USER, "tools": [FN], "tool_choice": "auto"})
    assert args["tools"] == [FN]
    args, _ = shapes.chat_in({"messages": USER, "tools": [FN], "tool_choice": "none"})
    assert "tools" not in args
    args, _ = shapes.chat_in({"messages": USER, "tools": [FN],
                              "tool_choice": {"type": "function", "function": {"name": "calculator"}}})
    assert shapes.tool_names(args["tools"]) == ["calculator"]
    msgs = [*USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "calculator", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "4"}]
    args, _ = shapes.chat_in({"messages": msgs, "tools": [FN]})
    assert args["messages"][1]["content"] == "" and args["messages"][2]["tool_call_id"] == "c1"


@pytest.mark.parametrize("body, param", [
    ([], None), ({}, "messages"), ({"messages": []}, "messages"), ({"messages": [{"role": "bot"}]}, "messages"),
    ({"messages": USER, "n": 2}, "n"), ({"messages": USER, "temperature": 5}, "temperature"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"), ({"messages": USER, "max_tokens": True}, "max_tokens"),
    ({"messages": USER, "stop": ["a"] * 5}, "stop"), ({"messages": USER, "tools": [{"type": "x"}]}, "tools"),
    ({"messages": USER, "tools": [FN], "tool_choice": {"type": "function", "function": {"name": "y"}}},
     "tool_choice"),
    ({"messages": USER, "tool_choice": "required"}, "tool_choice"), ({"messages": USER, "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
])
def test_chat_in_refuses_what_it_cannot_honour(body, param):
    with pytest.raises(AiosError) as e:
        shapes.chat_in(body)
    assert e.value.code == "EINVAL" and getattr(e.value, "param", None) == param


@pytest.mark.parametrize("code, status", [("EINVAL", 400), ("EACCES", 403), ("EPERM", 403), ("ENOENT", 404),
                                          ("EBUSY", 429), ("EUNAVAIL", 503), ("EIO", 500), ("EAUTH", 401)])
def test_errno_to_http(code, status):
    got, body, headers = shapes.error_response(code, "why")
    assert got == status and body["error"]["message"] == "why" and set(body["error"]) >= {"type", "code", "param"}
    assert ("Retry-After" in headers) == (status == 429)


def test_completion_and_chunks_out():
    result = {"text": "Hello", "finish_reason": "length", "tool_calls": None,
              "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    out = shapes.completion_out(result, "smollm2")
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["content"] == "Hello"
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["total_tokens"] == 7
    calls = [{"name": "calculator", "arguments": {"expression": "2+2"}}]
    out = shapes.completion_out({**result, "text": "", "tool_calls": calls}, "m")
    tc = out["choices"][0]["message"]["tool_calls"][0]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and out["choices"][0]["message"]["content"] is None
    assert tc["type"] == "function" and json.loads(tc["function"]["arguments"]) == {"expression": "2+2"}
    assert shapes.delta_of("ab") == ("ab", None) and shapes.delta_of({"delta": "c"}) == ("c", None)
    assert shapes.delta_of({"text": "x", "finish_reason": "stop"})[1] is not None
    assert shapes.unsent("abc", "ab") == "c" and shapes.unsent("abc", "") == "abc" and shapes.unsent("x", "yz") == ""
    chunk = shapes.chunk_out("id", 1, "m", {}, usage={"total_tokens": 1}, choices=False)
    assert chunk["choices"] == [] and chunk["usage"] == {"total_tokens": 1}


def test_parse_http_defaults_to_loopback():
    assert parse_http("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_http(":9000") == ("127.0.0.1", 9000) and parse_http("9001") == ("127.0.0.1", 9001)
    assert parse_http("[::1]:80") == ("::1", 80) and parse_http("0.0.0.0:81") == ("0.0.0.0", 81)
    for bad_spec in ("host.example:80", "127.0.0.1:0", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(AiosError):
            parse_http(bad_spec)
