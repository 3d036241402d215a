"""Catching a generation in flight from tests: snapshot it from a second connection of the agent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from libaios.client import Client
from libaios.client import AiosError


def snapshot_midway(home: Path, aid: int, start: Callable[[], dict]) -> tuple[dict, dict]:
    """(the snapshot, the reply of the generation it cut short): `start` runs the agent's
    llm_chat in a thread while a second connection of the same agent calls gen_snapshot until
    the request is in. Skips the test if the generation ended before it could be caught."""
    twin = Client(home)
    twin.syscall("set_aid", {"aid": aid})
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=start()))
    t.start()
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
    if snap is None:
        pytest.skip("the generation finished before it could be snapshotted")
    return snap, box["r"]
