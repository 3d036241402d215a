"""PrefixStore (the llama.cpp engine's prompt prefixes): lookup in whole blocks, chains, LRU budget."""

from __future__ import annotations

import pytest

from aiosd.llama_cpp_prefix import PrefixStore, common_prefix


def test_longest_whole_blocks_never_past_the_limit():
    st = PrefixStore(block=4, budget=1 << 20)
    st.add(list(range(12)), b"A" * 10)
    assert st.longest(list(range(12)) + [99], 12) == (12, b"A" * 10)
    assert st.longest(list(range(12)) + [99], 11) == (8, b"A" * 10)  # limit: the last prompt token
    assert st.longest([0, 1, 2, 3, 4, 5, 9, 9, 9], 8) == (4, b"A" * 10)  # 6 shared: one whole block
    assert st.longest([0, 1, 2, 9], 4) == (0, None)
    assert st.longest([7] * 20, 19) == (0, None)


def test_a_longer_state_of_a_chain_replaces_the_shorter_and_covers_it():
    st = PrefixStore(block=2, budget=1 << 20)
    st.add([1, 2], b"s")
    st.add([1, 2, 3, 4], b"long")
    assert len(st) == 1 and st.covers([1, 2]) and st.covers([1, 2, 3, 4]) and not st.covers([1, 2, 3, 5])
    st.add([1, 2, 5, 6], b"other")  # a branch: both kept
    assert len(st) == 2
    assert st.longest([1, 2, 5, 6, 7], 4) == (4, b"other")
    assert st.longest([1, 2, 3, 4, 7], 4) == (4, b"long")


def test_lru_under_the_byte_budget_and_off_at_zero():
    st = PrefixStore(block=1, budget=3 * (100 + 4))
    for t in range(4):
        st.add([t], bytes(100))
    assert len(st) == 3 and st.longest([0, 5], 1) == (0, None)  # the oldest went
    st.longest([1, 5], 1)  # used: now the newest
    st.add([9], bytes(100))
    assert st.longest([1, 5], 1)[0] == 1 and st.longest([2, 5], 1)[0] == 0
    off = PrefixStore(block=1, budget=0)
    off.add([1], b"x")
    assert len(off) == 0 and off.longest([1, 2], 1) == (0, None)
    two = PrefixStore(block=2, budget=100)
    two.add([1, 2, 3], b"x")  # not whole blocks: refused
    assert len(two) == 0 and two.longest([1], 1) == (0, None)
    with pytest.raises(ValueError):
        PrefixStore(block=0)


def test_common_prefix():
    import numpy as np

    assert common_prefix(np.array([1, 2, 3]), np.array([1, 2, 4, 5])) == 2
    assert common_prefix(np.array([1, 2]), np.array([1, 2, 3])) == 2
    assert common_prefix(np.array([], dtype=int), np.array([1])) == 0
