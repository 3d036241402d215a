"""The kernel's memory of connections acting as agents (set_aid) stays bounded: ROUTER
reports no closed connection, so without a bound a long-running gateway grows it forever.
One Kernel object in this process, no daemon: pure bookkeeping."""

from __future__ import annotations

import os

from aiosd import config, kernel_calls
from aiosd.access import ROOT
from aiosd.kernel import Kernel


def test_past_the_cap_connections_of_ended_agents_go_oldest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_calls, "IMPERSONATING_CAP", 8)
    k = Kernel(config.load({"managers": []}, home=str(tmp_path)))
    rows = []
    for i in range(4):
        row = k.table.create(f"a{i}", ["x"])
        k.table.started(row, os.getpid())
        rows.append(row)
    live, ended = rows[:2], rows[2:]

    def act_as(ident: bytes, row) -> None:
        k.k_set_aid(ROOT, {"aid": row.aid}, None, (ident, 1, 0.0))

    for i in range(4):  # the oldest: four connections acting as agents that will end
        act_as(b"old%d" % i, ended[i % 2])
    for i in range(4):
        act_as(b"live%d" % i, live[i % 2])
    for row in ended:
        k.table.finish(row, 0)
    assert len(k.impersonating) == 8
    act_as(b"new", live[0])  # the ninth: over the cap, ended agents' connections go
    assert list(k.impersonating) == [b"live0", b"live1", b"live2", b"live3", b"new"]
    assert k.aid_of(b"live2", b"root") == live[0].aid
    assert k.aid_of(b"old0", b"root") == 0  # forgotten: root by its own token again
    for i in range(8):  # only live agents' connections: none may be forgotten
        act_as(b"more%d" % i, live[1])
    assert len(k.impersonating) == 13
