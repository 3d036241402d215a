"""Snapshots in the llm worker's shared-memory arena (aiosd.kv_shm) and prefix reuse by blocks:
the arena's bookkeeping, the store on top of it, and the real model resuming token-identically
from a copy-on-write mapping; prefix reuse finer than the prefill chunk, identical to no reuse."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from aiosd import context as cx
from aiosd import kv_shm
from aiosd.config import Config
from aiosd.engine import Engine
from aiosd.model import resolve
from aiosd.runner import Runner
from aiosd.scheduler import Scheduler

PREFIX = kv_shm.PREFIX + f"test{os.getpid()}-"


@pytest.fixture
def arena():
    a = kv_shm.Arena(PREFIX, 1 << 20)
    yield a
    a.close()


def test_arena_regions_are_reused_and_coalesced(arena):
    shape = (2, 2, 1, 64, 16)  # 16 KiB of float32
    a = arena.alloc(shape, torch.float32)
    b = arena.alloc(shape, torch.float32)
    assert (a.off, b.off) == (0, a.nbytes) and arena.used() == 2 * a.nbytes
    a.release()
    b.release()
    assert arena.free == [(0, arena.size)]
    assert arena.alloc((1 << 30,), torch.uint8) is None  # larger than the arena


def test_copy_on_write_leaves_the_snapshot_intact_and_pins_its_region(arena):
    r = arena.alloc((4, 1024), torch.float32)
    r.tensor().fill_(1.0)
    live = r.adopt()
    live[0].fill_(7.0)  # the restored request writes
    assert float(r.tensor()[0, 0]) == 1.0 and float(live[1, 0]) == 1.0
    r.release()  # the store drops the snapshot...
    assert arena.alloc((4, 1024), torch.float32).off != r.off  # ...but the request still reads it
    del live
    gc.collect()
    assert arena.alloc((4, 1024), torch.float32).off == r.off


def test_segment_leaves_no_name_and_stale_ones_are_cleaned_by_prefix(tmp_path):
    prefix = kv_shm.home_prefix(tmp_path)
    assert prefix == kv_shm.home_prefix(tmp_path / ".") and prefix != kv_shm.home_prefix(tmp_path / "x")
    a = kv_shm.Arena(prefix, 1 << 16)
    try:
        assert os.path.basename(a.path).startswith(prefix) and not os.path.exists(a.path)
        with open(f"/proc/{os.getpid()}/maps") as f:  # mapped, unlinked: gone with the process
            assert f"{a.path} (deleted)" in f.read()
        r = a.alloc((16,), torch.float32)
        r.tensor().fill_(3.0)
        assert float(r.adopt()[5]) == 3.0  # copy-on-write maps still come from its fd
    finally:
        a.close()
    stale = [os.path.join(kv_shm.SHM_DIR, prefix + "12345"), os.path.join(kv_shm.SHM_DIR, prefix + "x")]
    mine = os.path.join(kv_shm.SHM_DIR, kv_shm.home_prefix(tmp_path / "x") + "1")
    for p in (*stale, mine):
        open(p, "wb").close()
    try:
        assert kv_shm.clean_stale(prefix) == 2  # what a starting worker does first
        assert not any(os.path.exists(p) for p in stale) and os.path.exists(mine)
    finally:
        os.unlink(mine)


def test_store_makes_room_in_the_arena_and_places_foreign_bytes():
    spilled: dict[str, bytes] = {}
    arena = kv_shm.Arena(PREFIX, 3 * 4096)
    store = cx.SnapshotStore(
        budget=3 * 4096,
        spill=spilled.__setitem__,
        fetch=spilled.get,
        disk_bytes_per_s=1e9,
        prefill_tokens_per_s=1.0,
        arena=arena,
    )
    try:
        blob = lambda v: cx_snap(torch.full((4096,), v, dtype=torch.uint8))  # noqa: E731
        ids = [store.put(1, blob(i), {}) for i in range(3)]
        assert all(store.entries[s].snap.region is not None for s in ids) and arena.used() == 3 * 4096
        late = store.put(1, blob(9), {})  # a 4th: the oldest spills to storage
        assert store.entries[ids[0]].where == "storage" and store.entries[late].snap.region is not None
        back = store.get(ids[0], aid=1).snap  # read back: into the arena again
        assert back.region is not None and int(back.kv[0]) == 0
        assert store.ram_bytes <= store.budget
    finally:
        store.close()
    assert arena.closed


def test_a_cache_read_back_from_storage_is_placed_shaped_like_the_cache_it_restores_into():
    spilled: dict[str, bytes] = {}
    store = cx.SnapshotStore(
        budget=4096,
        spill=spilled.__setitem__,
        fetch=spilled.get,
        disk_bytes_per_s=1e9,
        prefill_tokens_per_s=1.0,
        arena=kv_shm.Arena(PREFIX, 4096),
    )
    try:
        from aiosd.engine import KvSnapshot

        kv = torch.arange(2 * 2 * 4 * 8, dtype=torch.float32).view(1, 2, 2, 4, 8)  # 4 positions of 8
        snap = KvSnapshot([1, 2, 3, 4], 3, 4, 5, 0.0, 1.0, None, None, "m", kv.clone())
        first = store.put(1, snap, {})  # private K/V are moved into the arena, cache-shaped
        assert store.entries[first].snap.region.shape == (1, 2, 2, 8, 8)
        a = store.put(1, cx_snap(torch.zeros(4096, dtype=torch.uint8)), {})  # needs the room: first spills
        assert store.entries[first].where == "storage" and store.entries[first].snap.kv is None
        back = store.get(first, aid=1).snap  # read back: `a` spills to make room
        assert store.entries[a].where == "storage" and back.region is not None
        assert back.region.shape == (1, 2, 2, 8, 8) and torch.equal(back.kv, kv)
    finally:
        store.close()


def cx_snap(kv: torch.Tensor):
    """A llama.cpp-style snapshot: its K/V are opaque bytes."""
    from aiosd.engine import KvSnapshot

    return KvSnapshot([1, 2, 3], 2, 3, 8, 0.0, 1.0, None, None, "m", kv)


# ---- the real model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def eng():
    torch.set_num_threads(1)  # the shared test box is busy; min_rows is probed for this setting
    return Engine(resolve(Config()), device="cpu")


def prompt(eng, text: str) -> list[int]:
    return eng.encode_chat([{"role": "user", "content": text}])


def generate(eng, seqs, chunk: int, **kw) -> dict[int, list[int]]:
    r = Runner(eng, Scheduler("fifo", prefill_chunk=chunk, **kw))
    for s in seqs:
        r.submit(s, aid=s.rid)
    return r.run_all()


def feed(eng, seq, k: int) -> None:
    """Run seq alone until it has generated k tokens."""
    while len(seq.generated) < k and seq.finish_reason is None:
        eng.step([(seq, 64 if seq.prefill_left else 1)])
    assert len(seq.generated) == k, "finished before k tokens"


def test_restore_maps_the_arena_copy_on_write_and_resumes_identically(eng):
    p = prompt(eng, "Count from one to twenty in words.")
    whole = generate(eng, [eng.add(1, p, 20)], 64)[1]
    store = cx.SnapshotStore(1 << 28, arena=kv_shm.Arena(PREFIX, 1 << 28))
    try:
        seq = eng.add(2, p, 20, temperature=0.8, seed=3)
        sampled = generate(eng, [eng.add(3, p, 20, temperature=0.8, seed=3)], 64)[3]
        feed(eng, seq, 3)
        sid = store.put(1, eng.snapshot(seq, region_for=store.reserve), {})
        eng.drop(seq)
        snap = store.get(sid, 1).snap
        assert snap.region is not None and snap.kv.data_ptr() == snap.region.tensor().data_ptr()
        twice = [eng.restore(snap, rid) for rid in (4, 5)]  # a snapshot restores more than once
        assert store.arena.pins == {snap.region.off: 2}
        assert generate(eng, twice, 64) == {4: sampled, 5: sampled}
        greedy = eng.add(6, p, 20)
        feed(eng, greedy, 7)
        sid = store.put(1, eng.snapshot(greedy, region_for=store.reserve), {})
        assert generate(eng, [eng.restore(store.get(sid, 1).snap, 7)], 64)[7] == whole
    finally:
        store.close()


SHARED = ("You are the assistant of a small research team. Answer in one sentence, in plain words, without lists. ") * 5


def test_prefix_reuse_by_blocks_finer_than_the_chunk_is_token_identical(eng):
    """Chunks of 64, blocks of 32: the whole shared part is reused (not only whole chunks),
    and the output is the same token for token as without reuse, alone, batched or seeded."""
    chunk, n = 64, 8
    ps = [
        eng.encode_chat(
            [
                {"role": "system", "content": SHARED},
                {"role": "user", "content": f"Name one property of the number {i}."},
            ]
        )
        for i in range(3)
    ]
    shared = next(i for i, (a, b) in enumerate(zip(ps[0], ps[1], strict=False)) if a != b)
    assert shared % chunk >= eng.block, "the prompt should share a partial chunk past whole chunks"
    eng.prefix_bytes, eng.prefixes, eng.prefix_used = 0, type(eng.prefixes)(), 0
    plain = {i: generate(eng, [eng.add(i, ps[i], n)], chunk)[i] for i in range(3)}
    seeded = generate(eng, [eng.add(9, ps[2], n, temperature=0.8, seed=5)], chunk)[9]
    eng.prefix_bytes = 64 << 20
    try:
        assert generate(eng, [eng.add(0, ps[0], n)], chunk)[0] == plain[0]  # fills the cache
        before = eng.reused_tokens
        assert generate(eng, [eng.add(i, ps[i], n) for i in (1, 2)], chunk, max_batch_tokens=96) == {
            1: plain[1],
            2: plain[2],
        }
        assert eng.reused_tokens - before == 2 * (shared // eng.block * eng.block)
        assert generate(eng, [eng.add(9, ps[2], n, temperature=0.8, seed=5)], chunk)[9] == seeded
    finally:
        eng.prefix_bytes = 0


def test_prefill_cut_into_blocks_computes_what_one_segment_does(eng):
    """The forward runs a request's block segments in order (each attends to the K/V the
    previous ones wrote): the logits match one whole-chunk segment up to float rounding."""
    p = prompt(eng, "Why is the sky blue? Explain like I am five, in two sentences please.")
    whole = eng.model.forward([(eng.model.new_cache(len(p)), p, 0)])[0]
    cache = eng.model.new_cache(len(p))
    blocks = eng._blocks(cache, p, 0)
    assert len(blocks) == -(-len(p) // eng.block)
    assert torch.allclose(eng.model.forward(blocks)[-1], whole, atol=1e-3)
