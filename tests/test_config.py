"""Settings are checked where they come in (config.toml, AIOS_* variables, flags): a wrong type
or a value out of range is EINVAL naming the setting and its source, not a daemon that starts
and then misbehaves."""

from __future__ import annotations

import os

import pytest

from aiosd.config import CHOICES, Config, check_value, load
from aiosd.errors import AiosError


def einval(fn, *args, **kw) -> str:
    with pytest.raises(AiosError) as exc:
        fn(*args, **kw)
    assert exc.value.code == "EINVAL"
    return exc.value.message


def test_defaults_pass_their_own_checks(tmp_path, monkeypatch):
    for k in [k for k in os.environ if k.startswith("AIOS_")]:
        monkeypatch.delenv(k)
    cfg = load(home=tmp_path)
    assert cfg.scheduler == Config().scheduler and cfg.storage_sync == "full"


@pytest.mark.parametrize("source", ["toml", "env", "flag"])
def test_each_source_is_checked_and_named(tmp_path, monkeypatch, source):
    if source == "toml":
        (tmp_path / "config.toml").write_text('storage_sync = "nosuch"\n')
        msg = einval(load, home=tmp_path)
        assert str(tmp_path / "config.toml") in msg
    elif source == "env":
        monkeypatch.setenv("AIOS_STORAGE_SYNC", "nosuch")
        assert "AIOS_STORAGE_SYNC" in einval(load, home=tmp_path)
    else:
        assert "--storage-sync" in einval(load, {"storage_sync": "nosuch"}, home=tmp_path)


@pytest.mark.parametrize("key,value,words", [
    ("scheduler", "lottery", "fifo, rr, priority"),
    ("max_batch", 0, "above 0"),
    ("quantum", -1, "above 0"),
    ("heartbeat_s", 0.0, "above 0"),
    ("memory_quota", -5, "0 or more"),
    ("memory_policy", "forget", "evict, fail"),
    ("http", "localhost:0", "port from 1 to 65535"),
    ("http", "example.com:80", "not an IP address"),
    ("managers", "storage,bogus", "storage, memory, tools, llm, gateway"),
])
def test_out_of_range_values_are_refused(tmp_path, key, value, words):
    msg = einval(load, {key: value}, home=tmp_path)
    assert key in msg and words in msg


def test_wrong_types_and_broken_toml_are_einval(tmp_path, monkeypatch):
    monkeypatch.setenv("AIOS_MAX_BATCH", "lots")
    assert "max_batch must be an int" in einval(load, home=tmp_path)
    monkeypatch.delenv("AIOS_MAX_BATCH")
    (tmp_path / "config.toml").write_text("quantum = [\n")
    assert "config.toml" in einval(load, home=tmp_path)


def test_values_that_mean_unlimited_and_named_gpus_are_allowed():
    check_value("rlimit_cpu", 0)
    check_value("llm_tokens_per_min", 0)
    check_value("device", "cuda:1")
    einval(check_value, "device", "tpu")
    assert all(isinstance(v, tuple) and v for v in CHOICES.values())
