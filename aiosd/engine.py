"""The generation engine: sequences, their KV caches, one batched step, sampling, snapshots.

The interface every engine offers (a llama.cpp engine can sit behind the same one):

    eng = Engine(model_dir, device="cpu", dtype="float32")
    eng.tokenizer                      # a transformers tokenizer with the model's chat template
    seq = eng.add(rid, prompt_ids, max_tokens=..., temperature=..., top_p=..., seed=...)
    events = eng.step([(seq, n_tokens), ...])  # -> [(seq, new_token_ids, finished)]
    snap = eng.snapshot(seq)           # KvSnapshot: KV slice + tokens + sampler RNG, on the host
    seq = eng.restore(snap, rid)       # a new sequence that continues exactly where snap stopped
    eng.drop(seq)                      # free its cache

`step` runs what the scheduler picked: for each sequence, `n_tokens` of the tokens it has not
fed yet (a prefill chunk, or 1 to decode). A sequence that has fed all its tokens samples its
next one. Which sequences run, and how many tokens, is aiosd.scheduler's business, not ours.
Greedy output is token-identical whatever else runs in the same step (see aiosd.llama).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aiosd.llama import Llama, host_empty

BLOCK = 32     # prefix reuse granularity and attention block of prefill, in tokens
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Seq:
    rid: int
    tokens: list[int]                  # prompt + generated so far
    n_prompt: int
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    n_cached: int = 0                  # tokens whose K/V are in `cache`
    cache: torch.Tensor | None = None
    generator: torch.Generator | None = None
    replay: list[int] = field(default_factory=list)  # recompute: tokens to re-feed, not re-sample
    finish_reason: str | None = None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.n_prompt:]

    @property
    def prefill_left(self) -> int:
        """Prompt tokens not fed yet; 0 once the sequence decodes one token per step."""
        return max(0, self.n_prompt - self.n_cached)

    @property
    def capacity(self) -> int:
        return self.n_prompt + self.max_tokens


@dataclass
class KvSnapshot:
    tokens: list[int]
    n_prompt: int
    n_cached: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    rng_state: bytes | None
    model: str
    kv: torch.Tensor | None            # [layers, 2, kv_heads, n_cached, head_dim] or None (dropped)
    region: Any = None                 # kv's place in the worker's shared-memory arena (aiosd.kv_shm)

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


class Engine:
    def __init__(self, model_dir: Path | str, device: str = "auto", dtype: str = "float32",
                 min_rows: int = -1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model_dir = Path(model_dir)
        self.model_id = self.model_dir.name
        self.model = Llama(self.model_dir, device, DTYPES.get(dtype, torch.float32), min_rows)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        eos = self.model.config.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.max_context = self.model.max_pos
        # prefix reuse at the granularity of BLOCK tokens, whatever the prefill chunk: step()
        # cuts every prefill segment at absolute multiples of BLOCK (one attention call per
        # block), so a block's K/V depend only on the tokens up to its end, never on how the
        # prompt was chunked or what else ran. (unit, hash of the tokens up to a unit's end) ->
        # that unit's K/V; reusing them gives the very bytes a recompute would.
        self.block = BLOCK
        self.prefix_bytes = 0            # LRU budget; 0: off (the llm worker sets cfg's)
        self.prefixes: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.prefix_used = 0
        self.reused_tokens = 0

    def encode_chat(self, messages: list[dict], tools: list | None = None) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                 tokenize=True)
        if not isinstance(out, list):  # a BatchEncoding in transformers 5
            out = out["input_ids"]
        return list(out)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, rid: int, prompt: list[int], max_tokens: int, temperature: float = 0.0,
            top_p: float = 1.0, seed: int | None = None) -> Seq:
        seq = Seq(rid, list(prompt), len(prompt), max_tokens, temperature, top_p, seed)
        seq.generator = sampler_generator(temperature, seed)
        return seq

    def _ensure_cache(self, seq: Seq) -> None:
        if seq.cache is None:
            seq.cache = self.model.new_cache(seq.capacity)

    def step(self, plan: list[tuple[Seq, int]]) -> list[tuple[Seq, list[int], bool]]:
        segments, feeding, last = [], [], []
        for seq, n in plan:
            self._ensure_cache(seq)
            if seq.n_cached < seq.n_prompt:  # a prefill chunk never runs past the prompt
                toks = seq.tokens[seq.n_cached:min(seq.n_cached + n, seq.n_prompt)]
            else:
                toks = seq.tokens[seq.n_cached:seq.n_cached + 1]
            segments += self._blocks(seq.cache, toks, seq.n_cached)
            last.append(len(segments) - 1)
            feeding.append((seq, len(toks)))
        if not segments:
            return []
        logits = self.model.forward(segments)
        events: list[tuple[Seq, list[int], bool]] = []
        for (seq, n), i in zip(feeding, last, strict=True):
            events.append(advance(seq, n, lambda s=seq, i=i: self._sample(s, logits[i]), self.eos_ids))
        return events

    def _blocks(self, cache: torch.Tensor, toks: list[int], start: int) -> list[tuple]:
        """A prefill segment cut at absolute multiples of self.block; the forward runs a
        request's segments in order, each attending to the K/V its predecessors wrote."""
        out, i, b = [], 0, self.block
        while i < len(toks):
            end = min(len(toks), (start + i) // b * b + b - start)
            out.append((cache, toks[i:end], start + i))
            i = end
        return out

    def _sample(self, seq: Seq, logits: torch.Tensor) -> int:
        if seq.temperature <= 0 or seq.generator is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / seq.temperature, dim=-1)
        if seq.top_p < 1.0:
            sp, idx = torch.sort(probs, descending=True)
            keep = torch.cumsum(sp, 0) - sp < seq.top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter_(0, idx[keep], sp[keep])
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def snapshot(self, seq: Seq, keep_kv: bool = True, region_for=None) -> KvSnapshot:
        """The state of seq on the host. `region_for(shape, dtype)` (the llm worker's snapshot
        store) gives a place in its shared-memory arena shaped like the whole cache, so that
        restore can map it copy-on-write; without one (or None from it) private memory."""
        kv, region = None, None
        if keep_kv and seq.cache is not None and seq.n_cached:
            part = seq.cache[:, :, :, :seq.n_cached]
            region = region_for(tuple(seq.cache.shape), seq.cache.dtype) if region_for else None
            if region is not None:
                kv = region.tensor()[:, :, :, :seq.n_cached].copy_(part)
            else:
                kv = host_empty(tuple(part.shape), part.dtype).copy_(part)
        rng = bytes(seq.generator.get_state().numpy().tobytes()) if seq.generator is not None else None
        n_cached = seq.n_cached if kv is not None else 0
        return KvSnapshot(list(seq.tokens), seq.n_prompt, n_cached, seq.max_tokens, seq.temperature,
                          seq.top_p, seq.seed, rng, self.model_id, kv, region)

    def restore(self, snap: KvSnapshot, rid: int) -> Seq:
        seq = Seq(rid, list(snap.tokens), snap.n_prompt, snap.max_tokens, snap.temperature, snap.top_p,
                  snap.seed)
        if snap.rng_state is not None:
            seq.generator = torch.Generator(device="cpu")
            seq.generator.set_state(torch.frombuffer(bytearray(snap.rng_state), dtype=torch.uint8))
        if snap.kv is not None:
            region = snap.region
            if region is not None and self.device == "cpu" and region.shape[3] == seq.capacity \
                    and region.dtype == self.model.dtype:
                seq.cache = region.adopt()   # copy-on-write: no copy now, the snapshot stays intact
            else:
                self._ensure_cache(seq)
                assert seq.cache is not None
                seq.cache[:, :, :, :snap.n_cached] = snap.kv.to(seq.cache.device)
            seq.n_cached = snap.n_cached
        elif len(snap.tokens) > snap.n_prompt:
            # recompute: feed the prompt in chunks, then re-feed the generated tokens one by one,
            # the way they were first computed, so the cache comes out bit for bit the same
            seq.tokens = list(snap.tokens[:snap.n_prompt + 1])
            seq.replay = list(snap.tokens[snap.n_prompt + 1:])
        return seq

    def unit(self, chunk: int) -> int:
        """Tokens reused at a time: a block when chunks are made of whole blocks (then where a
        chunk starts changes nothing), else a whole chunk (whose blocks depend on the chunking)."""
        return self.block if chunk % self.block == 0 else chunk

    @staticmethod
    def _prefix_key(tokens: list[int], end: int, unit: int) -> tuple:
        import numpy as np
        return unit, hashlib.blake2b(np.asarray(tokens[:end], dtype=np.int64).tobytes(), digest_size=16).digest()

    def reuse_prefix(self, seq: Seq, chunk: int) -> int:
        """Copy the cached K/V of the prompt's leading whole units into seq's cache; the tokens
        skipped. The last prompt token is always fed: its logits give the first sample."""
        unit = self.unit(chunk)
        if not self.prefix_bytes or chunk < 1 or seq.n_cached % unit or seq.replay:
            return 0
        start = seq.n_cached
        while seq.n_cached + unit <= seq.n_prompt - 1:
            key = self._prefix_key(seq.tokens, seq.n_cached + unit, unit)
            kv = self.prefixes.get(key)
            if kv is None:
                break
            self._ensure_cache(seq)
            assert seq.cache is not None
            seq.cache[:, :, :, seq.n_cached:seq.n_cached + unit] = kv
            self.prefixes.move_to_end(key)
            seq.n_cached += unit
        self.reused_tokens += seq.n_cached - start
        return seq.n_cached - start

    def chunk_key(self, seq: Seq, chunk: int) -> tuple | None:
        """The cache key of the first reusable unit of the chunk seq feeds next, if any: a
        request that computes the same one in this step makes seq wait a step and reuse it."""
        unit = self.unit(chunk)
        end = seq.n_cached + unit
        if seq.n_cached % unit or end > seq.n_prompt - 1:
            return None
        return self._prefix_key(seq.tokens, end, unit)

    def remember_prefix(self, seq: Seq, start: int, chunk: int) -> None:
        """Keep the K/V of the whole prompt units seq fed from `start` in its last step (LRU,
        prefix_bytes)."""
        unit = self.unit(chunk)
        if not self.prefix_bytes or seq.cache is None:
            return
        at = -(-start // unit) * unit
        while at + unit <= min(seq.n_cached, seq.n_prompt):
            self._keep(seq, at, unit)
            at += unit

    def _keep(self, seq: Seq, at: int, unit: int) -> None:
        assert seq.cache is not None
        key = self._prefix_key(seq.tokens, at + unit, unit)
        if key in self.prefixes:
            self.prefixes.move_to_end(key)
            return
        part = seq.cache[:, :, :, at:at + unit]
        kv = host_empty(tuple(part.shape), part.dtype, part.device).copy_(part)
        self.prefixes[key] = kv
        self.prefix_used += kv.numel() * kv.element_size()
        while self.prefix_used > self.prefix_bytes and self.prefixes:
            _, old = self.prefixes.popitem(last=False)
            self.prefix_used -= old.numel() * old.element_size()

    def drop(self, seq: Seq) -> None:
        seq.cache = None


def sampler_generator(temperature: float, seed: int | None) -> torch.Generator | None:
    """A request's own RNG (its state goes into snapshots); None for greedy decoding."""
    if temperature <= 0:
        return None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(7), "little"))
    return gen


def advance(seq: Seq, n_fed: int, pick, eos_ids) -> tuple[Seq, list[int], bool]:
    """A sequence's event after a step fed n_fed of its tokens: mid-prefill, a replayed token
    (recompute after a dropped snapshot), or a sampled one (`pick()`), ending on EOS or length.
    Both engines share it, so a request finishes the same way whichever engine serves it."""
    seq.n_cached += n_fed
    if seq.n_cached < len(seq.tokens):
        return seq, [], False  # mid-prefill: nothing to sample yet
    if seq.replay:
        seq.tokens.append(seq.replay.pop(0))
        return seq, [], False
    tok = pick()
    if tok in eos_ids:
        seq.finish_reason = "stop"
        return seq, [], True
    seq.tokens.append(tok)
    done = len(seq.tokens) - seq.n_prompt >= seq.max_tokens
    if done:
        seq.finish_reason = "length"
    return seq, [tok], done
