"""Catching a generation in flight from tests: snapshot it from a second connection of the agent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from libaios.client import Client
from libaios.client import AiosError


def snapshot_midway(home: Path, aid: int, start: Callable[[], dict]) -> tuple[dict, dict]:
    """(the snapshot, the reply of the generation it cut short): `start` runs the agent's
    llm_chat in a thread while a second connection of the same agent calls gen_snapshot until
    the request is in. Skips the test if the generation ended before it could be caught."""
    snap, reply = try_snapshot_midway(home, aid, start)
    if snap is None:
        pytest.skip("the generation finished before it could be snapshotted")
    return snap, reply


def try_snapshot_midway(home: Path, aid: int, start: Callable[[], dict],
                        delay: float = 0.0) -> tuple[dict | None, dict]:
    """snapshot_midway's attempt, first snapshot `delay` s after the start; None if it missed."""
    twin = Client(home)
    twin.syscall("set_aid", {"aid": aid})
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=start()))
    t.start()
    time.sleep(delay)
    snap = None
    try:
        while snap is None and t.is_alive():
            try:
                snap = twin.syscall("gen_snapshot", {}, timeout=60)
            except AiosError as e:
                assert e.code == "ENOENT"  # not submitted yet
        t.join()
    finally:
        twin.close()
    return snap, box["r"]


def concurrent_texts(home: Path, prompts: list[str], max_tokens: int) -> dict[int, str]:
    """The greedy text of each prompt, all sent at once, each from its own connection (as that
    many agents would): {index: text}."""
    out: dict[int, str] = {}

    def one(i: int) -> None:
        c = Client(home)
        try:
            out[i] = c.syscall("llm_chat", {"messages": [{"role": "user", "content": prompts[i]}],
                                            "max_tokens": max_tokens}, timeout=300)["text"]
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out
