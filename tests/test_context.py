"""The context manager's pure logic: message checks, truncation, the snapshot store's eviction."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from aiosd import context as cx
from aiosd.errors import AiosError


def test_check_messages_rejects_bad_shapes() -> None:
    for bad in ([], "hi", [1], [{"role": "robot", "content": "x"}], [{"role": "user", "content": None}]):
        with pytest.raises(AiosError) as e:
            cx.check_messages(bad)
        assert e.value.code == "EINVAL"
    assert cx.check_messages([{"role": "user", "content": "x", "junk": 1}]) == [{"role": "user", "content": "x"}]


def test_truncate_drops_oldest_turns_but_keeps_system_and_last() -> None:
    msgs = [{"role": "system", "content": "s"}] + [{"role": "user", "content": str(i)} for i in range(6)]
    out = cx.truncate(msgs, lambda ms: len(ms) <= 3)
    assert [m["content"] for m in out] == ["s", "4", "5"]
    assert cx.truncate(msgs[:2], lambda ms: False) == msgs[:2]   # nothing droppable: left as is


@dataclass
class FakeSnap:   # the shape of an engine KvSnapshot that the store reads
    tokens: list
    kv: torch.Tensor | None
    n_cached: int = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


def test_store_owner_check_lru_spill_or_drop() -> None:
    spilled: dict[str, bytes] = {}
    store = cx.SnapshotStore(budget=4000, spill=spilled.__setitem__, fetch=lambda s: spilled.pop(s, None),
                             disk_bytes_per_s=1e5, prefill_tokens_per_s=100.0, discard=spilled.pop)
    a = store.put(1, FakeSnap(list(range(50)), torch.ones(500), 50), {})      # 2000 bytes, costly to recompute
    b = store.put(1, FakeSnap([1], torch.ones(500), 1), {})                   # 2000 bytes, cheap to recompute
    c = store.put(2, FakeSnap(list(range(50)), torch.ones(500), 50), {})      # over budget: a leaves
    assert store.entries[a].where == "storage" and a in spilled
    with pytest.raises(AiosError) as e:
        store.get(a, aid=2)
    assert e.value.code == "EACCES"
    assert torch.equal(store.get(a, aid=1).snap.kv, torch.ones(500))           # read back from storage
    assert a not in spilled  # taken out of storage: spilled anew if it must leave again
    assert store.entries[b].where == "dropped" and store.entries[b].snap.kv is None
    assert store.ram_bytes <= store.budget and c in store.entries
    with pytest.raises(AiosError) as e:
        store.get("nope", aid=1)
    assert e.value.code == "ENOENT"
    d = store.put(2, FakeSnap(list(range(50)), torch.ones(500), 50), {})      # c, least recently used, leaves
    assert store.entries[c].where == "storage" and c in spilled
    store.drop_agent(1)
    assert set(store.entries) == {c, d}
    store.drop_agent(2)  # a spilled snapshot whose agent is gone leaves storage too
    assert not store.entries and spilled == {}
