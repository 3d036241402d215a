"""The llama.cpp engine in-process with the real GGUF: batching identity, snapshots, sampling, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")

from aiosd.config import Config  # noqa: E402
from aiosd.engines import choose  # noqa: E402
from aiosd.errors import AiosError  # noqa: E402
from aiosd.model import default_gguf  # noqa: E402

N = 24


@pytest.fixture(scope="module")
def eng():
    from aiosd.engine_llamacpp import LlamaCppEngine
    # one thread: the numerics do not depend on it, and the shared test machine is busy
    e = LlamaCppEngine(default_gguf(), n_seq_max=16, n_ctx_seq=512, n_threads=1)
    yield e
    e.close()


def prompt(eng, i: int) -> list[int]:
    return eng.encode_chat([{"role": "user", "content": f"Tell me one fact about the number {i}."}])


def run(eng, seqs, chunk: int = 512, steps: int | None = None) -> dict[int, list[int]]:
    """Step every live sequence together (prefill chunks and decodes mixed) until all finish."""
    out = {s.rid: [] for s in seqs}
    live = list(seqs)
    while live and steps != 0:
        for s, new, fin in eng.step([(s, chunk if s.prefill_left else 1) for s in live]):
            out[s.rid] += new
            if fin:
                live.remove(s)
        steps = None if steps is None else steps - 1
    return out


@pytest.fixture(scope="module")
def solo(eng):
    return run(eng, [eng.add(0, prompt(eng, 0), N)])[0]


def test_chat_template_and_text_round_trip(eng):
    ids = prompt(eng, 3)
    text = eng.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert "Tell me one fact about the number 3.<|im_end|>" in text
    s = "héllo wörld 日本 42"
    assert eng.decode(eng.tokenizer.encode(s)) == s


def test_batched_with_15_others_is_token_identical(eng, solo):
    seqs = [eng.add(i, prompt(eng, i), N) for i in range(16)]
    # the others start staggered so that prefill chunks and decodes share steps
    first = run(eng, seqs[:1], steps=3)
    rest = run(eng, seqs, chunk=5)
    assert first[0] + rest[0] == solo
    # a prompt whose chunks shared steps with others' decodes: the same as its solo run, same chunks
    assert rest[5] == run(eng, [eng.add(5, prompt(eng, 5), N)], chunk=5)[5]
    assert len({tuple(v) for v in rest.values()}) > 8  # the others really generated their own text
    assert not eng.holders  # finished sequences left the cache


@pytest.mark.parametrize("k", [1, 7, 31])
def test_snapshot_restore_into_another_seq_id(eng, k):
    n = k + 8
    full = run(eng, [eng.add(0, prompt(eng, 0), n)])[0]
    seq = eng.add(1, prompt(eng, 0), n)
    head = run(eng, [seq], steps=k)[1]  # the prefill step samples the first token
    assert len(head) == k == len(seq.generated)
    snap = eng.snapshot(seq)
    assert snap.nbytes > 0
    old_slot = seq.slot
    eng.drop(seq)
    other = eng.add(2, prompt(eng, 5), n)  # takes the freed sequence id
    run(eng, [other], steps=2)
    back = eng.restore(snap, rid=3)
    tail = run(eng, [back, other])
    assert back.slot is None and other.slot is None
    assert head + tail[3] == full
    assert old_slot is not None


def test_snapshot_without_kv_recomputes(eng):
    full = run(eng, [eng.add(0, prompt(eng, 1), 16)])[0]
    seq = eng.add(1, prompt(eng, 1), 16)
    head = run(eng, [seq], steps=8)[1]
    snap = eng.snapshot(seq, keep_kv=False)
    eng.drop(seq)
    assert snap.kv is None and snap.nbytes == 0
    back = eng.restore(snap, rid=2)
    assert head + run(eng, [back])[2] == full


def test_more_requests_than_sequence_ids_swap_to_host():
    from aiosd.engine_llamacpp import LlamaCppEngine
    small = LlamaCppEngine(default_gguf(), n_seq_max=2, n_ctx_seq=256, n_threads=1)
    try:
        solos = [run(small, [small.add(i, prompt(small, i), 12)])[i] for i in range(4)]
        seqs = [small.add(i, prompt(small, i), 12) for i in range(4)]
        out = {i: [] for i in range(4)}
        live = list(seqs)
        while live:  # round robin, two at a time, three steps each: the others wait out of the cache
            pair = live[:2]
            for _ in range(3):
                for s, new, fin in small.step([(s, 64 if s.prefill_left else 1) for s in pair if s in live]):
                    out[s.rid] += new
                    if fin:
                        live.remove(s)
            live = [s for s in live if s not in pair] + [s for s in pair if s in live]
        assert [out[i] for i in range(4)] == solos
    finally:
        small.close()


def test_temperature_seed_reproducible_and_in_snapshot(eng):
    def sample(seed, k=None):
        s = eng.add(0, prompt(eng, 2), 16, temperature=0.8, top_p=0.9, seed=seed)
        if k is None:
            return run(eng, [s])[0]
        head = run(eng, [s], steps=1 + k)[0]
        snap = eng.snapshot(s)
        eng.drop(s)
        back = eng.restore(snap, 1)
        return head + run(eng, [back])[1]

    a = sample(7)
    assert a == sample(7) == sample(7, k=5)
    assert any(sample(seed) != a for seed in (8, 9, 10))


def test_bad_input_is_einval(eng):
    good = prompt(eng, 0)
    for args in ([], [eng.n_vocab], [-1], ["x"]):
        with pytest.raises(AiosError) as e:
            eng.add(0, args, 4)
        assert e.value.code == "EINVAL"
    for kw in ({"max_tokens": 0}, {"max_tokens": 10_000}, {"max_tokens": 4, "top_p": 0.0},
               {"max_tokens": 4, "temperature": -1.0}):
        with pytest.raises(AiosError) as e:
            eng.add(0, good, **kw)
        assert e.value.code == "EINVAL"
    seq = eng.add(0, good, 4)
    run(eng, [seq], steps=2)
    snap = eng.snapshot(seq)
    eng.drop(seq)
    from dataclasses import replace
    for bad in (replace(snap, model="other"), replace(snap, kv=torch.zeros(2, 2))):
        with pytest.raises(AiosError) as e:
            eng.restore(bad, 1)
        assert e.value.code == "EINVAL"
    garbage = replace(snap, kv=torch.zeros(64, dtype=torch.uint8))
    back = eng.restore(garbage, 2)
    with pytest.raises(AiosError) as e:
        eng.step([(back, 1)])
    assert e.value.code == "EIO"
    eng.drop(back)
    assert run(eng, [eng.add(0, prompt(eng, 0), N)])[0]  # the engine still serves


def test_choose_engine(monkeypatch, tmp_path):
    assert choose(Config(model="smollm2", engine="auto", device="cpu")) == "llamacpp"
    assert choose(Config(model=str(tmp_path), engine="auto", device="cpu")) == "transformers"
    assert choose(Config(model="smollm2", engine="auto", device="cuda")) == "transformers"
    assert choose(Config(model="smollm2", engine="transformers")) == "transformers"
    for cfg, code in ((Config(engine="vllm"), "EINVAL"), (Config(model=str(tmp_path), engine="llamacpp"), "EINVAL")):
        with pytest.raises(AiosError) as e:
            choose(cfg)
        assert e.value.code == code
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    assert choose(Config(model="smollm2", engine="auto", device="cpu")) == "transformers"
    with pytest.raises(AiosError) as e:
        choose(Config(model="smollm2", engine="llamacpp", device="cpu"))
    assert e.value.code == "EUNAVAIL" and "llama-cpp-python" in e.value.message


SHARED = ("You are the assistant of a small research team. Answer in one sentence, in plain words, "
          "without lists. ") * 3


def shared_prompt(eng, i: int, turns: int = 0) -> list[int]:
    msgs = [{"role": "system", "content": SHARED}]
    for t in range(turns):  # an earlier exchange: the next request of one agent extends its last prompt
        msgs += [{"role": "user", "content": f"Earlier question {t}."},
                 {"role": "assistant", "content": f"Answer {t}."}]
    return eng.encode_chat(msgs + [{"role": "user", "content": f"Name one property of the number {i}."}])


def kv_of(state: bytes) -> tuple[list[int], bytes]:
    """(positions, K/V bytes) of a one-sequence llama.cpp state, without the sequence id and
    stream it sat in. Layout: magic, seq id, n_stream, then per stream its n_cells and, if
    any, per cell (pos, 1, seq id) and the K/V data; only the sequence's own stream has cells."""
    magic, seq_id, n_stream = np.frombuffer(state[:12], dtype=np.int32)
    ints = np.frombuffer(state[12:12 + 4 * int(n_stream)], dtype=np.int32)
    slot = int(np.flatnonzero(ints)[0])  # streams before it: just their n_cells = 0
    count, start = int(ints[slot]), 12 + 4 * slot + 4
    cells = np.frombuffer(state[start:start + 12 * count], dtype=np.int32).reshape(-1, 3)
    assert (cells[:, 1] == 1).all() and (cells[:, 2] == seq_id).all()
    tail = len(state) - 4 * (int(n_stream) - 1 - slot)  # streams after it: n_cells = 0
    assert not any(state[tail:])
    return cells[:, 0].tolist(), state[start + cells.nbytes:tail]


def through_runner(eng, prompts: dict[int, list[int]], n: int, chunk: int, max_batch: int = 16,
                   k: int = 3) -> tuple[dict, dict]:
    """Every prompt at once through the worker's own Runner and a fifo Scheduler: each one's
    generated tokens, and its KV state bytes after its first k tokens."""
    from aiosd.runner import Runner
    from aiosd.scheduler import Scheduler
    r = Runner(eng, Scheduler("fifo", max_batch, 512, chunk))
    seqs = [eng.add(i, p, n) for i, p in prompts.items()]
    for s in seqs:
        r.submit(s)
    out, states = {}, {}
    while r.busy():
        for s, _, done in r.step():
            if len(s.generated) == k and s.rid not in states:
                states[s.rid] = kv_of(bytes(eng.snapshot(s).kv.numpy()))
            if done:
                out[s.rid] = list(s.generated)
                r.remove(s.rid)
    return out, states


@pytest.mark.parametrize("chunk", [16, 256])
def test_prefix_reuse_is_token_and_byte_identical(eng, chunk):
    """Prompts sharing a system prompt, and a later turn that extends one, start from stored
    prefix states: the same tokens and the same KV bytes as without reuse, alone or batched."""
    prompts = {i: shared_prompt(eng, i) for i in range(6)} | {6: shared_prompt(eng, 2, turns=2)}
    assert eng.prefix_bytes == 0
    start = eng.reused_tokens
    plain = {i: through_runner(eng, {i: p}, 16, chunk) for i, p in prompts.items()}
    solo = {i: v[0][i] for i, v in plain.items()}
    solo_state = {i: v[1][i] for i, v in plain.items()}
    assert len(set(map(tuple, solo.values()))) > 4 and eng.reused_tokens == start
    eng.prefix_bytes = 64 << 20
    try:
        # one after another: each reuses what the ones before left
        for i, p in prompts.items():
            before = eng.reused_tokens
            got, state = through_runner(eng, {i: p}, 16, chunk)
            assert got[i] == solo[i] and state[i] == solo_state[i], i
            if i:
                assert eng.reused_tokens - before >= len(eng.encode_chat([{"role": "system", "content": SHARED}])) - 16
        eng.prefixes.clear()
        # all at once on an empty store: the first computes the shared blocks, the others reuse them
        before = eng.reused_tokens
        got, state = through_runner(eng, prompts, 16, chunk)
        assert got == solo and state == solo_state
        assert eng.reused_tokens - before >= 5 * 64
        assert not eng.holders
    finally:
        eng.prefix_bytes = 0


def test_prefix_reuse_needs_chunks_of_whole_blocks(eng):
    prompts = {i: shared_prompt(eng, i) for i in range(2)}
    solo = {i: through_runner(eng, {i: p}, 8, 24)[0][i] for i, p in prompts.items()}
    eng.prefix_bytes = 64 << 20
    try:
        before = eng.reused_tokens
        assert through_runner(eng, prompts, 8, 24)[0] == solo  # 24 is not a multiple of 16: no reuse
        assert eng.reused_tokens == before and len(eng.prefixes) == 0
    finally:
        eng.prefix_bytes = 0
