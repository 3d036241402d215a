"""Table 3 (libaios.sdk) against a real daemon: real processes, real sockets, real LMDB."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from libaios import aio, calls, sdk
from libaios.agent import Agent, Manifest, parse_timings
from libaios.errors import InvalidArgument, NotFound, PermissionDenied

REPO = Path(__file__).resolve().parent.parent
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_parse_plan_is_pure() -> None:
    assert sdk.parse_plan("Sure!\n1. Boil water\n2) Steep the tea\nStep 3: Pour\n") == \
        ["Boil water", "Steep the tea", "Pour"]
    assert sdk.parse_plan("- a\n- b\n- c", max_steps=2) == ["a", "b"]
    assert sdk.parse_plan("") == []


def test_register_queue_terminate(daemon) -> None:
    aid = sdk.register_agent(SLEEP, name="held", client=daemon.root)
    me = calls.bind(daemon.root)
    assert me.get_status(aid)["status"] == "SUSPENDED"  # registered: has an aid, not running
    sdk.queue_for_execution(aid, client=daemon.root)
    assert me.get_status(aid)["status"] in ("RUNNING", "READY", "WAITING")
    assert aid in [r["aid"] for r in sdk.list_active_agents(client=daemon.root)]
    row = sdk.terminate_agent(aid, client=daemon.root)
    assert row["status"] == "KILLED" and row["exit_code"] == -15
    assert aid not in [r["aid"] for r in sdk.list_active_agents(client=daemon.root)]
    with pytest.raises(NotFound):
        sdk.queue_for_execution(aid, client=daemon.root)


def test_initialize_update_and_monitor(daemon) -> None:
    aid, c = daemon.agent("cfg")
    sdk.initialize_agent(memory_quota=1 << 20, storage_quota=1 << 20,
                         context=[{"role": "system", "content": "Be brief."}], client=c)
    assert sdk.update_agent_config(priority=-1, memory_quota=2 << 20, client=c) is True
    usage = sdk.monitor_resource_usage(client=c)
    assert usage["aid"] == aid and usage["priority"] == -1
    for key in ("cpu_s", "rss_bytes", "syscalls", "tokens_in", "tokens_out", "system"):
        assert key in usage
    with pytest.raises(PermissionDenied):  # raising one's own priority needs root
        sdk.update_agent_config(priority=5, client=c)
    with pytest.raises(InvalidArgument):
        sdk.update_agent_config(priority=99, client=c)


def test_authenticate_agent(daemon) -> None:
    # the agent checks its own credentials (only it holds its token), then a wrong one
    code = ("import os, sys; from libaios import sdk; aid = int(os.environ['AIOS_AID']); "
            "ok = sdk.authenticate_agent(aid, os.environ['AIOS_TOKEN']); "
            "bad = sdk.authenticate_agent(aid, 'not-the-token'); sys.exit(0 if ok and not bad else 3)")
    info = daemon.root.syscall("spawn_agent", {"argv": [sys.executable, "-c", code], "name": "authn",
                                               "env": {"PYTHONPATH": str(REPO)}})
    row = calls.bind(daemon.root).wait_agent(info["aid"], timeout=60)
    assert row["exit_code"] == 0, open(info["log"]).read()


def test_log_event_and_query_history(daemon) -> None:
    aid, c = daemon.agent("hist")
    sdk.log_event("fetched 3 restaurants", client=c)
    calls.bind(c).get_aid()
    history = []
    for _ in range(50):  # the kernel batches audit records to storage
        history = sdk.query_agent_history(client=c)
        if any(r.get("call") == "log_event" for r in history):
            break
        time.sleep(0.1)
    assert any(r.get("call") == "log_event" for r in history), history
    _, other = daemon.agent("nosy")
    with pytest.raises(PermissionDenied):
        sdk.query_agent_history(aid, client=other)


def test_encrypt_decrypt(daemon) -> None:
    _, c = daemon.agent("crypt")
    blob = sdk.encrypt_data(b"card 4111", client=c)
    assert b"4111" not in blob
    assert sdk.decrypt_data(blob, client=c) == b"card 4111"
    _, other = daemon.agent("thief")
    with pytest.raises(PermissionDenied):
        sdk.decrypt_data(blob, owner="crypt", client=other)


def test_snapshot_and_rollback(daemon) -> None:
    _, c = daemon.agent("snap")
    me = calls.bind(c)
    me.mem_write("before")
    me.sto_write("f.txt", "v1")
    snap = sdk.create_agent_snapshot("t", client=c)
    me.mem_write("after")
    me.sto_write("f.txt", "v2")
    sdk.rollback_agent_state(snap, client=c)
    assert me.sto_read("f.txt") == b"v1"
    texts = [r["content"] if isinstance(r, dict) else r for r in me.mem_read(last=10)]
    assert any("before" in str(t) for t in texts) and not any("after" in str(t) for t in texts)


def test_generate_plan_with_the_real_model(daemon) -> None:
    _, c = daemon.agent("planner")
    steps = sdk.generate_plan("make a cup of tea", max_steps=3, max_tokens=32, client=c)
    assert isinstance(steps, list) and 1 <= len(steps) <= 3 and all(isinstance(s, str) and s for s in steps)


def test_agent_base_class_loop(daemon, capsys) -> None:
    class Tiny(Agent):
        manifest = Manifest(name="tiny", max_steps=2, max_tokens=8, tool_rounds=1)

    _, c = daemon.agent("tiny")
    agent = Tiny(client=c)
    answer = agent.run("say hi")
    assert isinstance(answer, str)
    assert 2 <= len(agent.requests) <= 3  # a plan, then at most two steps
    assert all(r["total_s"] is not None for r in agent.requests)


def test_streaming_and_asyncio(daemon) -> None:
    import asyncio
    _, c = daemon.agent("streamer")
    me = calls.bind(c)
    stream = me.llm_chat([{"role": "user", "content": "Count: one, two,"}], max_tokens=6, stream=True)
    deltas = list(stream)
    assert stream.result is not None and "".join(deltas) == stream.result["text"]
    whole = me.llm_chat([{"role": "user", "content": "Count: one, two,"}], max_tokens=6)
    assert whole["text"] == stream.result["text"]  # greedy: streaming changes nothing

    async def both():
        token = calls._current.set(c)
        try:
            return await asyncio.gather(aio.get_aid(), aio.list_agents())
        finally:
            calls._current.reset(token)
    aid, rows = asyncio.run(both())
    assert isinstance(rows, list)


def test_parse_timings() -> None:
    text = 'answer\nAIOS_TIMINGS {"agent": "x", "requests": [{"queued_s": 0.1}]}\nnoise AIOS_TIMINGS {bad'
    assert parse_timings(text) == [{"agent": "x", "requests": [{"queued_s": 0.1}]}]
