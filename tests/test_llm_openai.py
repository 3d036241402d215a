"""The openai backend of the llm worker (--llm-backend openai --llm-url URL), against a real
OpenAI-compatible server on loopback: another aiosd's gateway, serving the real model."""

from __future__ import annotations

import socket
import time

import pytest

from aiosd.gateway.keys import KeyStore
from aiosd.llm_openai import FairQueue, endpoint
from libaios.client import AiosError

MSGS = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a fruit."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- pure: which request goes to the server next -------------------------------------------
def test_fair_queue_caps_each_agent_and_takes_turns():
    q = FairQueue(max_inflight=3, per_agent=2)
    for i in range(10):
        q.add(("a", i), aid=1)
    q.add(("b", 0), aid=2)
    first = q.take()
    assert [k for _, k in first] == [("a", 0), ("b", 0), ("a", 1)]  # b is not stuck behind a's burst
    assert q.take() == []                                          # 3 in flight: full
    q.done(2)
    assert q.take() == []                                          # a already has its 2
    q.done(1)
    assert q.take() == [(1, ("a", 2))]
    assert q.drop_agent(1) == [("a", i) for i in range(3, 10)] and q.busy()


def test_fair_queue_parks_and_prioritises():
    q = FairQueue(max_inflight=1, per_agent=1, policy="priority")
    q.add("low", 1, priority=0)
    q.add("high", 2, priority=5)
    q.parked.add(2)
    assert q.take() == [(1, "low")]
    q.done(1)
    q.add("low2", 1)
    q.parked.discard(2)
    assert q.take() == [(2, "high")]


def test_endpoint_url():
    assert endpoint("http://h:1/v1") == endpoint("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert endpoint("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


# ---- through two real daemons ----------------------------------------------------------------
@pytest.fixture(scope="module")
def pair():
    from conftest import Daemon
    port = free_port()
    server = Daemon({"http": f"127.0.0.1:{port}", "torch_threads": 1}).start()
    key, _ = KeyStore.for_home(server.home).create("relay")
    relay = Daemon({"llm_backend": "openai", "llm_url": f"http://127.0.0.1:{port}/v1", "llm_api_key": key,
                    "managers": ["storage", "llm"]}).start()
    yield server, relay
    relay.stop()
    server.stop()


def test_llm_chat_through_the_openai_backend_is_the_servers_text(pair):
    server, relay = pair
    direct = server.root.syscall("llm_chat", {"messages": MSGS, "max_tokens": 12}, timeout=300)
    aid, agent = relay.agent("remote-user")
    via = agent.syscall("llm_chat", {"messages": MSGS, "max_tokens": 12}, timeout=300)
    assert via["text"] == direct["text"] and via["finish_reason"] == direct["finish_reason"]
    assert via["usage"] == direct["usage"] and via["tool_calls"] == []
    t = via["timings"]
    assert 0 <= t["queued_s"] <= t["first_token_s"] <= t["total_s"]
    row = relay.root.syscall("get_status", {"aid": aid})
    assert row["tokens_in"] >= direct["usage"]["prompt_tokens"]
    assert row["tokens_out"] >= direct["usage"]["completion_tokens"]
    pieces = [c.get("text", "") for c in agent.stream("llm_chat", {"messages": MSGS, "max_tokens": 12,
                                                                   "stream": True})]
    assert "".join(pieces) == direct["text"]


def test_server_side_refusals_map_to_errno(pair):
    _, relay = pair
    with pytest.raises(AiosError) as e:  # the server's window is 2048 tokens: it answers 400
        relay.root.syscall("llm_chat", {"messages": [{"role": "user", "content": "word " * 3000}],
                                        "max_tokens": 4}, timeout=120)
    assert e.value.code == "EINVAL"
    with pytest.raises(AiosError) as e:
        relay.root.syscall("gen_snapshot", {}, timeout=30)
    assert e.value.code == "EINVAL"


def test_a_dead_url_is_eunavail_quickly(make_daemon):
    d = make_daemon(llm_backend="openai", llm_url=f"http://127.0.0.1:{free_port()}/v1", managers=["storage", "llm"])
    t0 = time.monotonic()
    with pytest.raises(AiosError) as e:
        d.root.syscall("llm_chat", {"messages": MSGS, "max_tokens": 4}, timeout=30)
    assert e.value.code == "EUNAVAIL" and time.monotonic() - t0 < 5
    assert d.root.syscall("get_status", {}) is not None  # the worker lives on
