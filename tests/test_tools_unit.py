"""Pure tests of the tool layer: schema checks, tool-call parsing, and each offline tool's
run() on known inputs (no daemon, no sockets)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as psnr

from aiosd.errors import AiosError
from aiosd.toolcalls import parse_tool_calls, tools_prompt
from aiosd.tools import compute, database, image, registry, sandbox, web
from aiosd.tools.registry import ToolContext


@pytest.fixture(scope="module")
def reg():
    return registry.build({})


@pytest.fixture
def ctx(tmp_path):
    return ToolContext(scratch=tmp_path, timeout=5.0)


@pytest.fixture(scope="module")
def astronaut():
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def test_table1_tools_registered_with_categories(reg):
    names = set(reg.tools)
    assert {"google_search", "bing_search", "currency_converter", "wolframalpha", "sql_query", "wikipedia_query",
            "arxiv_search", "words_api", "urban_dictionary", "image_denoising", "image_deblurring",
            "image_classification", "object_detection", "face_rect"} <= names
    for t in reg.tools.values():
        assert t.category in registry.CATEGORIES
        s = t.schema()
        assert s["type"] == "function" and s["function"]["name"] == t.name
        assert s["function"]["parameters"]["type"] == "object"
    assert reg.get("google_search").category == "search"
    assert reg.get("face_rect").category == "image processing"


def test_schema_errors_name_the_field(reg):
    cc = reg.get("currency_converter")
    with pytest.raises(AiosError) as e:
        registry.validate_args(cc, {"from": "USD", "to": "EUR"})
    assert e.value.code == "EINVAL" and "'amount'" in e.value.message
    with pytest.raises(AiosError) as e:
        registry.validate_args(cc, {"amount": "ten", "from": "USD", "to": "EUR"})
    assert e.value.code == "EINVAL" and "'amount'" in e.value.message
    with pytest.raises(AiosError) as e:
        registry.validate_args(cc, {"amount": 1, "from": "USD", "to": "EUR", "evil": 1})
    assert "'evil'" in e.value.message
    with pytest.raises(AiosError):
        registry.validate_args(cc, ["not", "a", "dict"])
    with pytest.raises(AiosError) as e:
        registry.validate_args(reg.get("arxiv_search"), {"query": "x", "max_results": 500})
    assert "'max_results'" in e.value.message
    # bytes pass where the schema says string (images)
    assert registry.validate_args(reg.get("face_rect"), {"image": b"\x89PNG"})
    with pytest.raises(AiosError) as e:
        registry.validate_args(reg.get("sql_query"), {})
    assert "'query'" in e.value.message


def test_parse_smollm2_tagged_calls():
    text = ('Sure.\n<tool_call>[{"name": "currency_converter", "arguments": {"amount": 5, "from": "USD", '
            '"to": "EUR"}}, {"name": "wolframalpha", "arguments": {"query": "x^2=4"}}]</tool_call>')
    p = parse_tool_calls(text, ["currency_converter", "wolframalpha"])
    assert [c["function"]["name"] for c in p.calls] == ["currency_converter", "wolframalpha"]
    assert json.loads(p.calls[0]["function"]["arguments"]) == {"amount": 5, "from": "USD", "to": "EUR"}
    assert p.calls[0]["type"] == "function" and p.calls[0]["id"] == "call_1"
    assert p.errors == [] and p.content == "Sure."
    # one object per tag, two tags, unclosed last tag, single-quoted python dict
    p = parse_tool_calls("<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>"
                         "<tool_call>{'name': 'b', 'arguments': {'x': True}}")
    assert [c["function"]["name"] for c in p.calls] == ["a", "b"]
    assert json.loads(p.calls[1]["function"]["arguments"]) == {"x": True}


def test_parse_json_fallback_and_malformed():
    p = parse_tool_calls('{"name": "face_rect", "arguments": {"path": "/x.png"}}')
    assert p.calls and p.calls[0]["function"]["name"] == "face_rect"
    p = parse_tool_calls('Here:\n```json\n{"function": {"name": "t", "arguments": "{\\"k\\": 1}"}}\n```')
    assert json.loads(p.calls[0]["function"]["arguments"]) == {"k": 1}
    assert parse_tool_calls("The answer is 4.").calls == []
    assert parse_tool_calls('{"answer": 4}').calls == []          # JSON but not a call
    p = parse_tool_calls("<tool_call>[{name: broken</tool_call>")
    assert p.calls == [] and "not valid JSON" in p.errors[0]
    p = parse_tool_calls('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', ["real"])
    assert p.calls == [] and "no tool named 'nope'" in p.errors[0]
    p = parse_tool_calls('<tool_call>{"name": "real", "arguments": [1]}</tool_call>', ["real"])
    assert "must be an object" in p.errors[0]
    assert "currency_converter" in tools_prompt([{"type": "function", "function": {"name": "currency_converter"}}])


def test_currency_converter_matches_ecb_table(ctx):
    from currency_converter import CurrencyConverter
    cc = CurrencyConverter(fallback_on_missing_rate=True)
    out = compute.currency_converter({"amount": 100, "from": "usd", "to": "JPY"}, ctx)
    assert out["result"] == pytest.approx(cc.convert(100, "USD", "JPY"))
    last = min(cc.bounds["USD"].last_date, cc.bounds["JPY"].last_date)
    assert out["rate_date"] == last.isoformat() and last.isoformat() in out["text"]
    old = compute.currency_converter({"amount": 1, "from": "USD", "to": "EUR", "date": "2010-06-01"}, ctx)
    assert old["rate_date"] == "2010-06-01"
    assert old["result"] == pytest.approx(cc.convert(1, "USD", "EUR", date=__import__("datetime").date(2010, 6, 1)))
    with pytest.raises(AiosError) as e:
        compute.currency_converter({"amount": 1, "from": "USD", "to": "XYZ"}, ctx)
    assert e.value.code == "EINVAL"


def test_wolframalpha_offline_maths(ctx, monkeypatch):
    monkeypatch.delenv("WOLFRAM_APP_ID", raising=False)
    out = compute.wolframalpha({"query": "x^2 - 4 = 0", "op": "solve"}, ctx)
    assert sorted(out["values"], key=float) == ["-2", "2"]
    assert compute.wolframalpha({"query": "2*x*cos(x^2)", "op": "integrate"}, ctx)["result"] == "sin(x**2)"
    assert compute.wolframalpha({"query": "sin(x)^2 + cos(x)^2", "op": "simplify"}, ctx)["result"] == "1"
    ev = compute.wolframalpha({"query": "sqrt(2)"}, ctx)
    assert ev["numeric"].startswith("1.41421356")
    assert compute.wolframalpha({"query": "17*23"}, ctx)["result"] == "391"
    with pytest.raises(AiosError) as e:
        compute.wolframalpha({"query": "solve ))) this"}, ctx)
    assert e.value.code == "EINVAL"


def test_sql_query_read_only_and_time_limit(tmp_path, ctx):
    db = tmp_path / "r.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE r (name TEXT, city TEXT, rating REAL)")
    con.executemany("INSERT INTO r VALUES (?, ?, ?)", [("Thai Palace", "Boston", 4.5), ("Pho", "NYC", 4.1)])
    con.commit()
    con.close()
    out = database.sql_query({"query": "SELECT name, rating FROM r WHERE city = ?", "params": ["Boston"],
                              "db": str(db)}, ctx)
    assert out == {"columns": ["name", "rating"], "rows": [["Thai Palace", 4.5]], "truncated": False}
    with pytest.raises(AiosError) as e:
        database.sql_query({"query": "DELETE FROM r", "db": str(db)}, ctx)
    assert e.value.code == "EPERM"
    t0 = time.monotonic()
    with pytest.raises(AiosError) as e:
        database.sql_query({"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) "
                                     "SELECT count(*) FROM c", "db": str(db), "time_limit": 0.3}, ctx)
    assert e.value.code == "ETIMEDOUT" and time.monotonic() - t0 < 3
    with pytest.raises(AiosError) as e:
        database.sql_query({"query": "SELECT 1", "db": str(tmp_path / "missing.db")}, ctx)
    assert e.value.code == "ENOENT"


def test_face_rect_finds_the_astronaut(astronaut, ctx):
    out = image.face_rect({"image": image.encode_png(astronaut)}, ctx)
    assert len(out["faces"]) >= 1
    f = out["faces"][0]
    # her face is around x 170-270, y 60-170 in the 512x512 image
    assert 150 < f["x"] + f["w"] / 2 < 290 and 50 < f["y"] + f["h"] / 2 < 180


def test_denoising_raises_psnr(astronaut, ctx):
    rng = np.random.default_rng(0)
    noisy = np.clip(astronaut.astype(float) + rng.normal(0, 20, astronaut.shape), 0, 255).astype(np.uint8)
    out = image.image_denoising({"image": image.encode_png(noisy)}, ctx)
    den = cv2.imdecode(np.frombuffer(out["image"], np.uint8), cv2.IMREAD_COLOR)
    assert psnr(astronaut, den) > psnr(astronaut, noisy) + 2


def test_deblurring_raises_interior_psnr(astronaut, ctx, tmp_path):
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 1.5)
    path = tmp_path / "blurred.png"
    path.write_bytes(image.encode_png(blurred))
    out = image.image_deblurring({"path": str(path), "kernel_size": 9, "sigma": 1.5}, ctx)
    deb = cv2.imdecode(np.frombuffer(out["image"], np.uint8), cv2.IMREAD_COLOR)
    inner = (slice(20, -20), slice(20, -20))
    assert psnr(astronaut[inner], deb[inner]) > psnr(astronaut[inner], blurred[inner]) + 1


def test_object_detection_finds_a_person(astronaut, ctx):
    out = image.object_detection({"image": image.encode_png(astronaut)}, ctx)
    assert out["detector"].startswith("OpenCV HOG")
    assert all(o["label"] == "person" for o in out["objects"])
    assert len(out["objects"]) >= 1


def test_bad_images_and_missing_classifier(ctx):
    with pytest.raises(AiosError) as e:
        image.face_rect({"image": b"not an image"}, ctx)
    assert e.value.code == "EINVAL"
    with pytest.raises(AiosError) as e:
        image.face_rect({}, ctx)
    assert e.value.code == "EINVAL"
    import importlib.util
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        with pytest.raises(AiosError) as e:
            image.image_classification({"image": b"x"}, ctx)
        assert e.value.code == "EUNAVAIL" and "install" in e.value.message


def test_network_tools_fail_fast_without_key_or_network(monkeypatch, tmp_path):
    for k in ("WORDSAPI_KEY", "GOOGLE_API_KEY", "GOOGLE_CSE_ID", "BING_SUBSCRIPTION_KEY"):
        monkeypatch.delenv(k, raising=False)
    ctx = ToolContext(scratch=tmp_path, timeout=5.0)
    for fn, args, var in [(web.words_api, {"word": "x"}, "WORDSAPI_KEY"),
                          (web.google_search, {"query": "x"}, "GOOGLE_API_KEY"),
                          (web.bing_search, {"query": "x"}, "BING_SUBSCRIPTION_KEY")]:
        with pytest.raises(AiosError) as e:
            fn(args, ctx)
        assert e.value.code == "EUNAVAIL" and var in e.value.message
    # nothing listens on port 1: refused at once, one sentence, no traceback
    closed = ToolContext(scratch=tmp_path, timeout=5.0, url="http://127.0.0.1:1")
    t0 = time.monotonic()
    with pytest.raises(AiosError) as e:
        web.wikipedia_query({"query": "x"}, closed)
    assert e.value.code == "EUNAVAIL" and "unreachable" in e.value.message
    assert time.monotonic() - t0 < 2


def test_worker_env_is_scrubbed():
    env = {"AIOS_TOKEN": "t", "AIOS_AID": "3", "AIOS_CONFIG": "{}", "GITHUB_TOKEN": "g", "AWS_SECRET_ACCESS_KEY": "s",
           "GOOGLE_API_KEY": "k", "AIOS_TOOL_URL_WIKIPEDIA_QUERY": "http://127.0.0.1:9", "PATH": "/bin"}
    out = sandbox.scrub_env(env, {"GOOGLE_API_KEY"})
    assert set(out) >= {"GOOGLE_API_KEY", "AIOS_TOOL_URL_WIKIPEDIA_QUERY", "PATH"}
    assert not {"AIOS_TOKEN", "AIOS_AID", "AIOS_CONFIG", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY"} & set(out)
    assert out["OPENBLAS_NUM_THREADS"] == "1"


def test_plugin_module_loads_and_bad_plugin_is_reported(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    r = registry.build({"plugins": ["tests.tooldefs", "no_such_module_xyz"]})
    assert "test_sleep" in r.tools and "tests.tooldefs" in r.modules
    assert any("no_such_module_xyz" in e for e in r.errors)
