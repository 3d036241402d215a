"""The process table's bookkeeping, without a kernel: states and rows restored after a restart."""

from __future__ import annotations

import signal

from aiosd.proctable import AgentState, ProcessTable


def saved(aid: int, status: str, **kw) -> dict:
    row = {"aid": aid, "name": f"a{aid}", "status": status, "started_at": 1000.0 + aid, "argv": ["x"],
           "pid": 100 + aid, "exit_code": None, "uptime_s": 5.0}
    row.update(kw)
    return row


def test_restored_rows_keep_aids_unique_and_mark_the_agents_that_died_with_their_kernel():
    t = ProcessTable()
    t.restore([saved(3, "EXITED", exit_code=0, ended_at=1010.0), saved(7, "RUNNING"),
               {"aid": "garbage"}], last_aid=9)
    assert t.create("new", ["y"]).aid == 10  # past the highest aid ever given, not just listed
    dead = t.get(7)
    assert dead.status == AgentState.KILLED and dead.exit_code == -signal.SIGKILL
    assert dead.ended_at == 1012.0  # its start plus the uptime last saved
    assert t.get(3).status == AgentState.EXITED and t.get(3).exit_code == 0
    assert [r.aid for r in t.listing(include_exited=True)] == [3, 7, 10]
    assert [r.aid for r in t.listing(include_exited=False)] == [10]
    assert t.ended(107, 0) is None  # a restored row's old pid is not this kernel's child


def test_nothing_saved_starts_at_one():
    t = ProcessTable()
    t.restore([], 0)
    assert t.create("first", ["x"]).aid == 1


def test_the_oldest_ended_rows_leave_past_the_limit_and_live_ones_stay():
    t = ProcessTable(keep_ended=3)
    t.restore([saved(1, "EXITED", exit_code=0), saved(2, "EXITED", exit_code=1)], last_aid=2)
    live = t.create("live", ["x"])
    t.started(live, 555)
    for i in range(3):
        row = t.create(f"short{i}", ["x"])
        t.started(row, 600 + i)
        assert t.ended(600 + i, -signal.SIGTERM) is row
    assert [r.aid for r in t.listing(include_exited=True)] == [live.aid, 4, 5, 6]
    assert t.get(1) is None and t.get(2) is None and t.get(6).status == AgentState.KILLED
    t.finish(live, 127)  # a spawn that failed
    assert live.status == AgentState.EXITED and t.get(4) is None and t.get(live.aid) is live
