"""Pure memory logic: records, keys, quota accounting, LRU eviction and swap-in."""

from __future__ import annotations

import pytest

from aiosd.errors import AiosError
from aiosd.memory_store import OVERHEAD, AgentMemory, MemoryStore, record_size


def rec_bytes(n: int) -> int:
    return record_size({"content": "x" * n, "role": "user"})


def mem(quota: int, policy: str = "evict") -> AgentMemory:
    return AgentMemory(1, quota, policy)


def test_append_read_last_range_key():
    m = mem(1 << 20)
    ids = [m.write(f"r{i}")[0] for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert m.select(last=2) == [4, 5]
    assert m.select(start=2, end=4) == [2, 3]
    assert m.select() == ids
    kid, _ = m.write("blue", key="colour")
    assert m.select(key="colour") == [kid]
    again, _ = m.write("green", key="colour")  # setting a key replaces its record
    assert again == kid and m.resident[kid]["content"] == "green" and len(m.ids) == 6
    with pytest.raises(AiosError) as e:
        m.select(key="nope")
    assert e.value.code == "ENOENT"


def test_quota_accounting_exact():
    m = mem(1 << 20)
    m.write("x" * 100)
    m.write("y" * 50, key="k")
    assert m.used == rec_bytes(100) + rec_bytes(50) + 1
    m.clear(key="k")
    assert m.used == rec_bytes(100)
    m.clear(everything=True)
    assert m.used == 0 and m.ids == [] and m.keys == {}


def test_fail_policy_is_enomem_and_changes_nothing():
    m = mem(3 * rec_bytes(100), "fail")
    for _ in range(3):
        m.write("x" * 100)
    with pytest.raises(AiosError) as e:
        m.write("x" * 100)
    assert e.value.code == "ENOMEM"
    assert len(m.ids) == 3 and m.used == 3 * rec_bytes(100)


def test_record_bigger_than_quota_is_enomem_even_when_evicting():
    m = mem(rec_bytes(10))
    with pytest.raises(AiosError) as e:
        m.write("x" * 1000)
    assert e.value.code == "ENOMEM"


def test_eviction_order_is_least_recently_used():
    m = mem(3 * rec_bytes(100))
    a, _ = m.write("a" * 100)
    b, _ = m.write("b" * 100)
    c, _ = m.write("c" * 100)
    m.fetch([a])  # a is now the most recently used
    d, out = m.write("d" * 100)
    assert [r["id"] for r in out] == [b]
    e, out = m.write("e" * 100)
    assert [r["id"] for r in out] == [c]
    assert list(m.resident) == [a, d, e]
    assert m.ids == [a, b, c, d, e] and m.swapped_out() == [b, c]
    assert m.used <= m.quota


def test_fetch_reports_missing_and_swap_in_evicts_others():
    m = mem(2 * rec_bytes(100))
    recs = {}
    for ch in "abcd":
        rid, out = m.write(ch * 100)
        recs.update({r["id"]: r for r in out})
    assert sorted(recs) == [1, 2]
    found, missing = m.fetch([1, 3])
    assert list(found) == [3] and missing == [1]
    admitted, evicted = m.swap_in([recs[1]], protect={1, 3})
    assert [r["id"] for r in admitted] == [1]
    assert [r["id"] for r in evicted] == [4]  # 3 was protected: it is being read
    assert set(m.resident) == {1, 3}


def test_swap_in_that_cannot_fit_leaves_record_out():
    m = mem(rec_bytes(100))
    m.write("a" * 100)
    _, out = m.write("b" * 100)
    admitted, evicted = m.swap_in(out, protect={1, 2})
    assert admitted == [] and evicted == [] and m.swapped_out() == [1]


def test_shrinking_quota_evicts_or_fails():
    m = mem(1 << 20)
    for _ in range(4):
        m.write("x" * 100)
    out = m.set_quota(2 * rec_bytes(100))
    assert [r["id"] for r in out] == [1, 2]
    f = mem(1 << 20, "fail")
    f.write("x" * 100)
    with pytest.raises(AiosError):
        f.set_quota(10)


def test_clear_record_and_errors():
    m = mem(1 << 20)
    m.write("a")
    m.write("b")
    assert m.clear(record=1) == [1] and m.ids == [2]
    for kwargs in ({"record": 9}, {"key": "k"}):
        with pytest.raises(AiosError) as e:
            m.clear(**kwargs)
        assert e.value.code == "ENOENT"
    with pytest.raises(AiosError) as e:
        m.clear()
    assert e.value.code == "EINVAL"


def test_load_replaces_and_restore():
    m = mem(1 << 20)
    m.write("old")
    records = [{"id": 5, "role": "user", "content": "five", "key": "k", "metadata": {}, "time": 1.0},
               {"id": 2, "role": "assistant", "content": "two", "key": None, "metadata": {}, "time": 0.5}]
    assert m.load(records) == []
    assert m.ids == [2, 5] and m.keys == {"k": 5} and m.next_id == 6
    rid, _ = m.write("next")
    assert rid == 6
    small = mem(max(record_size(r) for r in records))
    out = small.load(records)
    assert [r["id"] for r in out] == [2]
    small.restore(out)  # a failed swap-out: kept over quota, not lost
    assert set(small.resident) == {2, 5} and small.used > small.quota


def test_store_isolates_agents_and_releases():
    s = MemoryStore(1000, "evict")
    s.get(1).write("mine")
    assert s.get(2).ids == [] and s.get(3, quota=77).quota == 77
    assert s.release(1).ids == [1] and s.peek(1) is None
    assert OVERHEAD > 0
