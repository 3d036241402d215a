"""The tools manager in a real daemon: sandboxed calls through the real sockets.

One daemon for the module (storage and tools managers only: no model needed), with the
test tools of tests/tooldefs.py as a plugin, an MCP server, and every network tool
pointed at a loopback HTTP server that answers like the real service.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import pytest
from conftest import Daemon
from skimage import data

import libaios
from aiosd.tools.image import encode_png

MCP_SERVER = '''
from mcp.server.mcpserver import MCPServer
app = MCPServer("demo")
@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b
if __name__ == "__main__":
    app.run()
'''

ARXIV = b"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>http://arxiv.org/abs/2403.16971v2</id>
<published>2024-03-25T17:32:23Z</published><title>AIOS: LLM Agent Operating System</title>
<summary>  LLM-based intelligent agents face significant deployment challenges. </summary>
<author><name>Kai Mei</name></author><author><name>Yongfeng Zhang</name></author></entry></feed>"""


class Service(BaseHTTPRequestHandler):
    """Answers like Wikipedia, arXiv, WordsAPI, Urban Dictionary, Google, Bing."""

    def log_message(self, *a) -> None:
        pass

    def send(self, body: bytes, ctype: str = "application/json", code: int = 200) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/w/api.php":
            pages = {"42": {"pageid": 42, "index": 1, "title": "Operating system",
                            "extract": f"An operating system ... ({q.get('gsrsearch')})"}}
            return self.send(json.dumps({"batchcomplete": "", "query": {"pages": pages}}).encode())
        if url.path == "/api/query":
            return self.send(ARXIV, "application/atom+xml")
        if url.path.startswith("/words/"):
            if self.headers.get("X-RapidAPI-Key") != "wk":
                return self.send(b'{"message": "Invalid API key"}', code=403)
            return self.send(json.dumps({"word": url.path.split("/")[-1], "results": [
                {"definition": "a large natural stream of water", "partOfSpeech": "noun", "synonyms": ["stream"]}
            ]}).encode())
        if url.path == "/v0/define":
            return self.send(json.dumps({"list": [{"definition": f"[{q['term']}] means cool", "example": "so yeet",
                                                   "thumbs_up": 7, "word": q["term"]}]}).encode())
        if url.path == "/customsearch/v1":
            if q.get("key") != "gk" or q.get("cx") != "cx1":
                return self.send(b'{"error": {"code": 400}}', code=400)
            return self.send(json.dumps({"items": [{"title": "AIOS", "link": "https://github.com/agiresearch/AIOS",
                                                    "snippet": q["q"]}]}).encode())
        if url.path == "/v7.0/search":
            if self.headers.get("Ocp-Apim-Subscription-Key") != "bk":
                return self.send(b'{"error": "denied"}', code=401)
            return self.send(json.dumps({"webPages": {"value": [{"name": "AIOS", "url": "https://x.org",
                                                                  "snippet": q["q"]}]}}).encode())
        self.send(b'{"error": "not found"}', code=404)


NET = ("wikipedia_query", "arxiv_search", "words_api", "urban_dictionary", "google_search", "bing_search")


@pytest.fixture(scope="module")
def td(tmp_path_factory):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    script = tmp_path_factory.mktemp("mcp") / "srv.py"
    script.write_text(MCP_SERVER)
    tools = {"plugins": ["tests.tooldefs"], **{n: {"url": base} for n in NET},
             "test_one_at_a_time": {"concurrency": 1}}
    d = Daemon({"managers": ["storage", "tools"], "tools": tools})
    with open(d.home / "config.toml", "a") as fh:  # conftest's writer does not nest three levels
        fh.write(f"\n[tools.mcp.demo]\ncommand = {json.dumps([sys.executable, str(script)])}\n")
    d.env.update(WORDSAPI_KEY="wk", GOOGLE_API_KEY="gk", GOOGLE_CSE_ID="cx1", BING_SUBSCRIPTION_KEY="bk")
    d.start()
    yield d
    d.stop()
    srv.shutdown()


def call(d, name, args=None, timeout=None, client=None):
    c = client or d.root
    return c.syscall("tool_call", {"name": name, "args": args or {}, **({"timeout": timeout} if timeout else {})},
                     timeout=(timeout or 30) + 30)


def test_list_and_allowlist(td):
    names = {s["function"]["name"] for s in td.root.syscall("tool_list")}
    assert {"currency_converter", "face_rect", "test_sleep", "add"} <= names
    aid, agent = td.agent("limited", tools=["currency_converter"])
    assert [s["function"]["name"] for s in agent.syscall("tool_list")] == ["currency_converter"]
    with pytest.raises(libaios.PermissionDenied):
        call(td, "test_sleep", {"seconds": 0}, client=agent)
    out = call(td, "currency_converter", {"amount": 100, "from": "USD", "to": "EUR"}, client=agent)
    assert out["tool"] == "currency_converter" and out["untrusted"] is True
    assert out["content"]["rate_date"] in out["content"]["text"]
    with pytest.raises(libaios.NotFound):
        call(td, "no_such_tool")


def test_schema_errors(td):
    with pytest.raises(libaios.InvalidArgument, match="'amount'"):
        call(td, "currency_converter", {"amount": "lots", "from": "USD", "to": "EUR"})
    with pytest.raises(libaios.InvalidArgument, match="'query'"):
        call(td, "wolframalpha", {})
    with pytest.raises(libaios.InvalidArgument):
        td.root.syscall("tool_call", {"name": "wolframalpha", "args": "x^2"})


def test_hanging_tool_is_killed_on_time(td):
    t0 = time.monotonic()
    with pytest.raises(libaios.TimedOut, match="killed"):
        call(td, "test_hang", timeout=1.0)
    assert time.monotonic() - t0 < 4.0


def test_cpu_limit_and_memory_limit(td):
    with pytest.raises(libaios.TimedOut, match="CPU"):
        call(td, "test_burn", timeout=20)
    with pytest.raises(libaios.AiosError) as e:
        call(td, "test_alloc", {"bytes": 10 << 30})
    assert e.value.code == "ENOMEM"
    assert call(td, "test_alloc", {"bytes": 10 << 20})["content"] == 10 << 20


def test_crash_is_eio_with_stderr_and_manager_goes_on(td):
    pid = td.manager_pid("tools")
    with pytest.raises(libaios.AiosError) as e:
        call(td, "test_crash")
    assert e.value.code == "EIO" and "SIGABRT" in e.value.message and "about to crash" in e.value.message
    with pytest.raises(libaios.AiosError) as e:
        call(td, "test_raise")
    assert e.value.code == "EIO" and "ValueError" in e.value.message
    assert call(td, "test_sleep", {"seconds": 0})["content"] == {"slept": 0.0}
    assert td.manager_pid("tools") == pid


def test_a_dead_worker_fails_its_calls_and_is_replaced(td):
    """Calls take their sandbox from a worker's spares; a worker killed mid-call fails the
    calls it watched over with EIO at once (no hang), and the pool goes on serving."""
    import os
    import signal
    pid = td.manager_pid("tools")
    worker = call(td, "test_state", {"mark": "w"})["content"]["ppid"]
    results: dict = {}
    failed_at: list = []

    def run(i):
        try:
            results[i] = call(td, "test_sleep", {"seconds": 3.0}, client=libaios.Client(td.home))["content"]
        except libaios.AiosError as exc:
            results[i] = exc.code
            failed_at.append(time.monotonic())
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    for t in threads:
        t.join()
    # calls spread over the light workers by load: four of them put some on the killed one
    assert all(r in ("EIO", {"slept": 3.0}) for r in results.values()) and "EIO" in results.values(), results
    assert max(failed_at) - t0 < 1.5  # when the worker died, not when the 3 s sleep would have ended
    assert max(failed_at) - t0 < 1.5  # when the worker died, not when the 3 s sleep would have ended
    for i in range(6):
        assert call(td, "test_state", {"mark": str(i)})["content"]["found"]["global"] == []
    assert td.manager_pid("tools") == pid


def test_forged_answers_fail_the_call_not_the_manager(td):
    """The manager reads answers straight from processes that ran tool code: garbage, a
    shared-memory reference to someone else's data, a made-up error code or a 4 GB frame
    fail that call only."""
    pid = td.manager_pid("tools")
    for kind, code in (("garbage", "EIO"), ("shm", "EIO"), ("code", "EIO"), ("huge", "E2BIG")):
        with pytest.raises(libaios.AiosError) as e:
            call(td, "test_forge", {"kind": kind})
        assert e.value.code == code, (kind, e.value)
    assert call(td, "test_sleep", {"seconds": 0})["content"] == {"slept": 0.0}
    assert td.manager_pid("tools") == pid


def test_sandbox_has_no_secrets_sockets_or_cores(td):
    out = call(td, "test_echo", {"x": 1})["content"]
    assert out["args"] == {"x": 1}
    assert not any(k.startswith("AIOS_") or "TOKEN" in k for k in out["env"])
    assert out["env"]["HOME"] == out["scratch"] == out["cwd"]
    # 0, 1, 2, the result pipe and the descriptor listdir used: nothing inherited
    assert len(out["fds"]) <= 5
    assert out["core"] == 0 and out["nofile"] == td.cfg.tool_nofile
    assert out["pgid"] == out["pid"]
    deadline = time.monotonic() + 5
    while Path(out["scratch"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(out["scratch"]).exists()


def test_every_call_is_a_fresh_process_with_nothing_left_by_earlier_calls(td):
    """Spares are forked ahead of time, but each runs one call: no process, module state,
    environment or scratch file carries over, between calls of one agent or of two."""
    _, other = td.agent("state-other")
    outs = [call(td, "test_state", {"mark": str(i)}, client=(td.root if i % 2 else other)) for i in range(12)]
    contents = [o["content"] for o in outs]
    assert len({c["pid"] for c in contents}) == len(contents)
    assert len({c["scratch"] for c in contents}) == len(contents)
    for c in contents:
        assert c["found"] == {"global": [], "env": None, "scratch": []}, c
    # nothing of a call outlives it: the worker removes a scratch after reaping its process
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(c["scratch"]).exists() for c in contents):
        time.sleep(0.05)
    assert not any(Path(c["scratch"]).exists() for c in contents)


def test_parallel_calls_overlap(td):
    def run(results, i):
        results[i] = call(td, "test_sleep", {"seconds": 1.0}, client=libaios.Client(td.home))
    results: dict = {}
    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(results, i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert len(results) == 8 and all(r["content"] == {"slept": 1.0} for r in results.values())
    assert elapsed < 4.0, f"8 parallel 1-second calls took {elapsed:.1f} s"


def test_per_tool_concurrency_limit(td):
    def run():
        call(td, "test_one_at_a_time", {"seconds": 0.5}, client=libaios.Client(td.home))
    t0 = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 >= 1.4


def test_image_bytes_through_shared_memory(td):
    png = encode_png(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert len(png) > td.cfg.shm_threshold
    out = call(td, "face_rect", {"image": png})["content"]
    assert len(out["faces"]) >= 1
    den = call(td, "image_denoising", {"image": png})["content"]
    assert den["image"][:4] == b"\x89PNG"


def test_maths_and_sql(td, tmp_path):
    assert call(td, "wolframalpha", {"query": "x^2 - 9 = 0", "op": "solve"})["content"]["result"] == "-3, 3"
    import sqlite3
    db = tmp_path / "t.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (a INTEGER)")
    con.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    con.commit()
    con.close()
    out = call(td, "sql_query", {"query": "SELECT sum(a) AS s FROM t", "db": str(db)})["content"]
    assert out["columns"] == ["s"] and out["rows"] == [[6]]
    with pytest.raises(libaios.PermissionDenied):
        call(td, "sql_query", {"query": "DROP TABLE t", "db": str(db)})


def test_network_tools_against_loopback(td):
    w = call(td, "wikipedia_query", {"query": "operating system"})["content"]
    assert w["results"][0]["title"] == "Operating system" and "operating system" in w["results"][0]["extract"]
    a = call(td, "arxiv_search", {"query": "agent operating system"})["content"]
    assert a["results"][0]["title"] == "AIOS: LLM Agent Operating System"
    assert a["results"][0]["authors"] == ["Kai Mei", "Yongfeng Zhang"]
    assert call(td, "words_api", {"word": "river"})["content"]["senses"][0]["synonyms"] == ["stream"]
    assert "means cool" in call(td, "urban_dictionary", {"term": "yeet"})["content"]["definitions"][0]["definition"]
    assert call(td, "google_search", {"query": "aios"})["content"]["results"][0]["snippet"] == "aios"
    assert call(td, "bing_search", {"query": "aios"})["content"]["results"][0]["title"] == "AIOS"


def test_mcp_tool_mounted_and_called(td):
    out = call(td, "add", {"a": 2, "b": 40}, timeout=30)
    assert out["content"]["text"] == "42"
    with pytest.raises(libaios.InvalidArgument):
        call(td, "add", {"a": "two", "b": 1})


def test_keys_missing_or_no_network_is_unavailable(make_daemon, monkeypatch):
    for k in ("GOOGLE_API_KEY", "GOOGLE_CSE_ID"):
        monkeypatch.delenv(k, raising=False)
    d = make_daemon(managers=["storage", "tools"], tools={"wikipedia_query": {"url": "http://127.0.0.1:1"}})
    with pytest.raises(libaios.Unavailable, match="GOOGLE_API_KEY"):
        call(d, "google_search", {"query": "x"})
    t0 = time.monotonic()
    with pytest.raises(libaios.Unavailable, match="unreachable"):
        call(d, "wikipedia_query", {"query": "x"})
    assert time.monotonic() - t0 < 5
