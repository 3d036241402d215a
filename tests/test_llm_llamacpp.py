"""The llm worker on the llama.cpp engine through a real daemon: consistency, snapshots, start errors."""

from __future__ import annotations

import threading

import pytest
from llmutil import concurrent_texts

pytest.importorskip("llama_cpp")

PROMPTS = [f"Give me one short fact about the number {i}." for i in range(16)]


def chat(client, content: str, max_tokens: int = 12, **kw):
    return client.syscall("llm_chat", {"messages": [{"role": "user", "content": content}],
                                       "max_tokens": max_tokens, **kw}, timeout=300)


@pytest.mark.slow
def test_llamacpp_solo_equals_16_concurrent_fifo_and_rr_and_no_prefix_reuse(make_daemon):
    # max_batch 4: four llama.cpp sequence ids for 16 requests, so rr preemption swaps states to the host
    d = make_daemon(engine="llamacpp", scheduler="rr", quantum=4, max_batch=4, torch_threads=1)
    n = 12
    solo = {i: chat(d.root, PROMPTS[i], n)["text"] for i in range(len(PROMPTS))}
    assert len(set(solo.values())) > 8
    for policy in ("fifo", "rr"):
        d.root.syscall("sys_set", {"settings": {"scheduler": policy, "quantum": 4}})
        assert concurrent_texts(d.home, PROMPTS, n) == solo, policy
    # those ran with prompt-prefix reuse (the default): without it, the same text
    off = make_daemon(engine="llamacpp", prefix_cache=False, max_batch=4, torch_threads=1)
    assert {i: chat(off.root, PROMPTS[i], n)["text"] for i in range(0, len(PROMPTS), 3)} == \
        {i: solo[i] for i in range(0, len(PROMPTS), 3)}


@pytest.mark.slow
def test_llamacpp_snapshot_restore_through_the_daemon(make_daemon):
    d = make_daemon(engine="llamacpp", max_batch=4, torch_threads=1)
    aid, agent = d.agent("snapper")
    full = chat(agent, PROMPTS[3], 24)
    got: dict = {}
    started = threading.Event()

    def stream() -> None:
        from libaios.client import Client
        c = Client(d.home)
        c.syscall("set_aid", {"aid": aid})
        text = ""
        for chunk in c.stream("llm_chat", {"messages": [{"role": "user", "content": PROMPTS[3]}],
                                           "max_tokens": 24, "stream": True}):
            text += chunk.get("text", "")
            if len(text) > 5:
                started.set()
        got["head"] = text
        c.close()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(120)
    snap = agent.syscall("gen_snapshot", {})
    t.join(60)
    assert snap["bytes"] > 0 and 0 < snap["generated"] < 24
    rest = agent.syscall("gen_restore", {"snapshot": snap["snapshot"]}, timeout=300)
    assert rest["text"] == full["text"]


@pytest.mark.slow
def test_engine_llamacpp_without_llama_cpp_fails_the_start(make_daemon, tmp_path):
    # a llama_cpp that cannot be imported stands in for a machine where it was never installed
    (tmp_path / "llama_cpp.py").write_text("raise ImportError('llama-cpp-python is not installed here')\n")
    # a death before the hello counts as a failed start only within quick_death_s: widen it, so the
    # test does not depend on how long importing torch takes on a busy machine
    d = make_daemon(start=False, engine="llamacpp", quick_death_s=120.0, fatal_after=2)
    d.env["PYTHONPATH"] = f"{tmp_path}:{d.env['PYTHONPATH']}"
    r = d.run_cli("aiosd", "start", timeout=240)
    assert r.returncode != 0
    assert "llama-cpp-python" in r.stderr and "--engine llamacpp" in r.stderr
