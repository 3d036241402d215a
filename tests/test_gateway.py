"""The OpenAI-compatible gateway through the official `openai` package, against a real
daemon started with http on a free loopback port (its gateway is a supervised process)."""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest
from conftest import Daemon

from aiosd.gateway.keys import KeyStore
from libaios import calls

HAVE_LLM = importlib.util.find_spec("aiosd.procs.llm") is not None
needs_llm = pytest.mark.skipif(not HAVE_LLM, reason="the llm worker (aiosd/procs/llm.py) is not there yet")
HI = [{"role": "user", "content": "Name one colour."}]
CALC = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gw():
    port = free_port()
    overrides = {"http": f"127.0.0.1:{port}"}
    if not HAVE_LLM:
        overrides["managers"] = ["storage", "memory", "tools"]
    d = Daemon(overrides).start()
    d.url = f"http://127.0.0.1:{port}/v1"
    d.keys = KeyStore.for_home(d.home)
    yield d
    for name in ("gateway", "aiosd", "llm"):  # shown with -s or on failure
        log = d.home / "logs" / f"{name}.log"
        print(f"\n--- {name}.log\n" + (log.read_text()[-2000:] if log.exists() else "(none)"))
    d.stop()


def client(d, name: str | None = None, key: str | None = None, **create) -> openai.OpenAI:
    if key is None:
        key, _ = d.keys.create(name, **create)
    return openai.OpenAI(base_url=d.url, api_key=key, max_retries=0, timeout=120)


def aios_key(d, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiosd.cli.key", *argv, "--home", str(d.home)],
                          env=d.env, capture_output=True, text=True, timeout=60)


def ps(d, *flags: str) -> list[dict]:
    r = d.run_cli("aios-ps", "--json", *flags)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def chat(c: openai.OpenAI, **kw):
    return c.chat.completions.create(model="smollm2", messages=kw.pop("messages", HI),
                                     max_tokens=kw.pop("max_tokens", 8), temperature=kw.pop("temperature", 0), **kw)


# ---- without the model ---------------------------------------------------------------------
def test_healthz_and_models(gw):
    with urllib.request.urlopen(gw.url.removesuffix("/v1") + "/healthz", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    models = client(gw, "lister").models.list()
    assert [m.id for m in models.data] == ["smollm2"] and models.data[0].owned_by == "aiosd"


def test_missing_or_unknown_key_is_401(gw):
    with pytest.raises(openai.AuthenticationError) as e:
        chat(client(gw, key="aios-not-a-key"))
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    req = urllib.request.Request(gw.url + "/chat/completions", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401 and json.loads(e.value.read())["error"]["type"] == "authentication_error"


def test_malformed_requests_are_400_with_an_openai_error(gw):
    c = client(gw, "sloppy")
    for kw, param in ((dict(messages=[]), "messages"), (dict(n=2), "n"), (dict(temperature=7), "temperature"),
                      (dict(messages=[{"role": "wizard", "content": "x"}]), "messages"),
                      (dict(tools=[CALC], tool_choice={"type": "function", "function": {"name": "nope"}}),
                       "tool_choice")):
        with pytest.raises(openai.BadRequestError) as e:
            chat(c, **kw)
        assert e.value.status_code == 400
        assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == param
    key = c.api_key
    req = urllib.request.Request(gw.url + "/chat/completions", data=b"{not json", method="POST",
                                 headers={"Authorization": f"Bearer {key}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["code"] == "EINVAL"


def test_tool_outside_the_keys_allowlist_is_403(gw):
    c = client(gw, "narrow", tools=["weather"])
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(c, tools=[CALC])
    assert e.value.status_code == 403 and "calculator" in e.value.body["message"]


def test_key_cli_create_list_revoke(gw):
    r = aios_key(gw, "create", "--name", "cli-made", "--priority", "-3", "--tools", "calculator,weather")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("aios-") and key not in (gw.home / "data" / "keys.json").read_text()
    listed = json.loads(aios_key(gw, "list", "--json").stdout)
    mine = [k for k in listed if k["name"] == "cli-made"][0]
    assert mine["priority"] == -3 and mine["tools"] == ["calculator", "weather"] and key.startswith(mine["prefix"])
    assert aios_key(gw, "create", "--name", "cli-made").returncode == 1  # EEXIST
    assert aios_key(gw, "revoke", mine["prefix"]).returncode == 0
    assert all(k["name"] != "cli-made" for k in json.loads(aios_key(gw, "list", "--json").stdout))


def first_request(c: openai.OpenAI) -> None:
    """Any request makes the key's agent; without the model the answer is 503."""
    try:
        chat(c, max_tokens=1)
    except openai.InternalServerError as exc:
        assert not HAVE_LLM and exc.status_code == 503


def row_named(d, name: str, all_rows: bool = False) -> list[dict]:
    return [r for r in ps(d, *(["-a"] if all_rows else [])) if r["name"] == name]


def test_a_key_is_an_agent_row_whose_pid_is_the_gateway(gw):
    c = client(gw, "rowed", priority=-4)
    first_request(c)
    first_request(c)
    rows = row_named(gw, "rowed")
    assert len(rows) == 1 and rows[0]["pid"] == gw.manager_pid("gateway") and rows[0]["priority"] == -4
    assert rows[0]["syscalls"] >= 2
    status = gw.root.syscall("get_status", {"aid": rows[0]["aid"]})
    assert status["parent"] == 0


def test_revoked_key_is_401_and_its_agent_exits(gw):
    c = client(gw, "doomed")
    first_request(c)
    aid = row_named(gw, "doomed")[0]["aid"]
    r = aios_key(gw, "revoke", "doomed")
    assert r.returncode == 0, r.stderr
    with pytest.raises(openai.AuthenticationError):
        chat(c)
    deadline = time.time() + 10
    while time.time() < deadline and gw.root.syscall("get_status", {"aid": aid})["status"] != "EXITED":
        time.sleep(0.05)
    assert gw.root.syscall("get_status", {"aid": aid})["status"] == "EXITED"


def test_killing_a_key_agent_never_signals_the_gateway(gw):
    c = client(gw, "killable")
    first_request(c)
    pid = gw.manager_pid("gateway")
    aid = row_named(gw, "killable")[0]["aid"]
    for sig in ("STOP", "CONT", "KILL"):
        assert gw.run_cli("aios-kill", "-s", sig, str(aid)).returncode == 0
    assert gw.root.syscall("get_status", {"aid": aid})["status"] == "KILLED"
    time.sleep(0.3)
    assert gw.manager_pid("gateway") == pid and os.path.exists(f"/proc/{pid}")
    first_request(c)  # the key still holds: a fresh agent
    assert [r["aid"] for r in row_named(gw, "killable")] not in ([], [aid])


# ---- with the model ------------------------------------------------------------------------
@needs_llm
def test_plain_completion(gw):
    out = chat(client(gw, "plain"), max_completion_tokens=8)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content and out.choices[0].finish_reason in ("stop", "length")
    assert 0 < out.usage.completion_tokens <= 8 and out.usage.total_tokens > out.usage.completion_tokens
    row = row_named(gw, "plain")[0]
    assert row["tokens_out"] == out.usage.completion_tokens


@needs_llm
def test_streaming(gw):
    c = client(gw, "streamer")
    pieces, finish, usage = [], None, None
    for chunk in chat(c, max_tokens=12, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            pieces.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    whole = chat(c, max_tokens=12)
    assert "".join(pieces) == whole.choices[0].message.content and finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


@needs_llm
def test_tool_call_round_trip(gw):
    c = client(gw, "tooler", tools=["calculator"])
    msgs = [{"role": "user", "content": "What is 17*23? Use the calculator."}]
    out = chat(c, messages=msgs, tools=[CALC], tool_choice="auto", max_tokens=16)
    msg = out.choices[0].message
    if msg.tool_calls:  # the small model may or may not call it; both are valid answers
        assert out.choices[0].finish_reason == "tool_calls" and msg.tool_calls[0].function.name == "calculator"
        call_id = msg.tool_calls[0].id
    else:
        call_id = "call_0"
    msgs += [{"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
        "name": "calculator", "arguments": json.dumps({"expression": "17*23"})}}]},
             {"role": "tool", "tool_call_id": call_id, "content": "391"}]
    out = chat(c, messages=msgs, tools=[CALC], max_tokens=12)
    assert out.choices[0].message.content is not None or out.choices[0].message.tool_calls
    out = chat(c, messages=msgs, tools=[CALC], tool_choice="none", max_tokens=8)
    assert out.choices[0].message.tool_calls is None and out.choices[0].message.content


@needs_llm
def test_greedy_text_is_token_identical_to_libaios(gw):
    msgs = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Say a fruit name."}]
    via_http = chat(client(gw, "twin"), messages=msgs, max_tokens=12)
    native = calls.bind(gw.root).llm_chat(msgs, max_tokens=12, temperature=0.0)
    assert via_http.choices[0].message.content == native["text"]
    assert via_http.usage.completion_tokens == native["usage"]["completion_tokens"]


@needs_llm
def test_sixteen_clients_at_once_all_answered_and_in_ps(gw):
    clients = [client(gw, f"crowd{i}") for i in range(16)]
    with cf.ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda c: chat(c, max_tokens=8), clients))
    assert all(o.choices[0].message.content for o in outs)
    rows = {r["name"]: r for r in ps(gw) if r["name"].startswith("crowd")}
    assert set(rows) == {f"crowd{i}" for i in range(16)}
    assert len({r["aid"] for r in rows.values()}) == 16
    assert all(r["tokens_out"] > 0 and r["pid"] == gw.manager_pid("gateway") for r in rows.values())


# last: it restarts the gateway
def test_gateway_death_ends_its_agents_and_it_comes_back(gw):
    c = client(gw, "orphan")
    first_request(c)
    aid = row_named(gw, "orphan")[0]["aid"]
    pid = gw.manager_pid("gateway")
    os.kill(pid, signal.SIGKILL)
    gw.wait_manager("gateway", old_pid=pid, timeout=30)
    assert gw.root.syscall("get_status", {"aid": aid})["status"] == "EXITED"
    first_request(c)
    new = row_named(gw, "orphan")
    assert len(new) == 1 and new[0]["aid"] != aid and new[0]["pid"] == gw.manager_pid("gateway")
