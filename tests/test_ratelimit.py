"""Rates and ceilings: the syscall token bucket, the per-agent LLM limits, alloc ceilings
and what a parent may give a child. Pure logic with a fake clock, no sockets."""

from __future__ import annotations

import pytest

from aiosd.errors import AiosError
from aiosd.limits import LlmLimits, check_alloc, check_child
from aiosd.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_burst_then_rate():
    clk = Clock()
    b = TokenBucket(rate=10, burst=5, clock=clk)
    assert all(b.take() for _ in range(5))
    assert not b.take()
    clk.t += 0.1                      # one token back
    assert b.take() and not b.take()
    clk.t += 100                      # never more than the burst
    assert sum(b.take() for _ in range(50)) == 5


def test_bucket_large_take():
    clk = Clock()
    b = TokenBucket(rate=1, burst=10, clock=clk)
    assert not b.take(11)
    assert b.take(10)


def busy(fn) -> str:
    with pytest.raises(AiosError) as exc:
        fn()
    return exc.value.code


def test_max_queued_llm_per_agent():
    lim = LlmLimits(max_queued=2)
    lim.admit(1)
    lim.admit(1)
    assert busy(lambda: lim.admit(1)) == "EBUSY"
    lim.admit(2)                      # another agent is not affected
    lim.done(1)
    lim.admit(1)
    lim.done(1)
    lim.done(1)
    lim.done(1)                       # more done() than admit() never goes negative
    assert 1 not in lim.inflight


def test_token_budget_sliding_minute():
    clk = Clock()
    lim = LlmLimits(max_queued=0, tokens_per_min=100, clock=clk)
    lim.admit(1)
    lim.charge(1, 80)
    lim.done(1)
    lim.admit(1)                      # 80 < 100: admitted, may overshoot
    lim.charge(1, 50)
    lim.done(1)
    assert lim.used(1) == 130
    assert busy(lambda: lim.admit(1)) == "EBUSY"
    lim.admit(2)                      # others keep their own budget
    clk.t += 30
    assert busy(lambda: lim.admit(1)) == "EBUSY"
    clk.t += 31                       # the first charges left the window
    assert lim.used(1) == 0
    lim.admit(1)
    lim.forget(1)
    assert lim.used(1) == 0 and 1 not in lim.inflight


def test_no_budget_admits_all_and_a_budget_set_later_counts_the_last_minute():
    clk = Clock()
    lim = LlmLimits(max_queued=0, tokens_per_min=0, clock=clk)
    for _ in range(1000):
        lim.admit(1)
        lim.charge(1, 10_000)
        clk.t += 1.0
    assert len(lim.spent[1]) <= 61          # only the last minute is kept
    lim.tokens_per_min = 100                # sys_set llm_tokens_per_min=100
    assert busy(lambda: lim.admit(1)) == "EBUSY"


def test_alloc_ceiling():
    check_alloc("mem_alloc", 100, 100, 0)
    check_alloc("sto_alloc", 10, 0, 10)
    assert busy(lambda: check_alloc("mem_alloc", 101, 100, 1 << 40)) == "ENOMEM"
    assert busy(lambda: check_alloc("sto_alloc", 11, 1 << 40, 10)) == "ENOSPC"


def test_child_gets_no_more_than_its_parent():
    name, tools, mem, sto = check_child("math", ["calculator"], (100, 200), "helper", None, None, None)
    assert (name, tools, mem, sto) == ("math.helper", ["calculator"], 100, 200)
    # a child cannot take another agent's name (names own storage, audit, keys)
    assert check_child("math", None, (1, 1), "rec", None, None, None)[0] == "math.rec"
    assert check_child("math", None, (1, 1), "math", None, None, None)[0] == "math"
    assert check_child("math", None, (1, 1), "math.x", None, None, None)[0] == "math.x"
    assert check_child("math", None, (1, 1), "mathx", None, None, None)[0] == "math.mathx"
    assert check_child("math", None, (1, 1), "x", ["web_search"], None, None)[1] == ["web_search"]
    assert busy(lambda: check_child("math", ["calculator"], (1, 1), "x", ["web_search"], None, None)) == "EPERM"
    assert busy(lambda: check_child("math", None, (100, 100), "x", None, 101, None)) == "EPERM"
    assert busy(lambda: check_child("math", None, (100, 100), "x", None, None, 101)) == "EPERM"
