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

import torch

from aiosd.llama import Llama, host_empty

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
        # prefix reuse: (chunk size, hash of the tokens up to a chunk boundary) -> that chunk's K/V.
        # Prefill chunks start at multiples of the chunk size, so a chunk's K/V depend only on
        # the tokens up to its end: reusing whole chunks gives the very bytes a recompute would.
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
        segments, feeding = [], []
        for seq, n in plan:
            self._ensure_cache(seq)
            if seq.n_cached < seq.n_prompt:  # a prefill chunk never runs past the prompt
                toks = seq.tokens[seq.n_cached:min(seq.n_cached + n, seq.n_prompt)]
            else:
                toks = seq.tokens[seq.n_cached:seq.n_cached + 1]
            segments.append((seq.cache, toks, seq.n_cached))
            feeding.append(seq)
        if not segments:
            return []
        logits = self.model.forward(segments)
        events: list[tuple[Seq, list[int], bool]] = []
        for i, seq in enumerate(feeding):
            events.append(advance(seq, len(segments[i][1]), lambda s=seq, i=i: self._sample(s, logits[i]),
                                  self.eos_ids))
        return events

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

    def snapshot(self, seq: Seq, keep_kv: bool = True) -> KvSnapshot:
        kv = None
        if keep_kv and seq.cache is not None and seq.n_cached:
            part = seq.cache[:, :, :, :seq.n_cached]
            kv = host_empty(tuple(part.shape), part.dtype).copy_(part)
        rng = bytes(seq.generator.get_state().numpy().tobytes()) if seq.generator is not None else None
        n_cached = seq.n_cached if kv is not None else 0
        return KvSnapshot(list(seq.tokens), seq.n_prompt, n_cached, seq.max_tokens, seq.temperature,
                          seq.top_p, seq.seed, rng, self.model_id, kv)

    def restore(self, snap: KvSnapshot, rid: int) -> Seq:
        seq = Seq(rid, list(snap.tokens), snap.n_prompt, snap.max_tokens, snap.temperature, snap.top_p,
                  snap.seed)
        if snap.rng_state is not None:
            seq.generator = torch.Generator(device="cpu")
            seq.generator.set_state(torch.frombuffer(bytearray(snap.rng_state), dtype=torch.uint8))
        if snap.kv is not None:
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

    @staticmethod
    def _prefix_key(tokens: list[int], end: int, chunk: int) -> tuple:
        import numpy as np
        return chunk, hashlib.blake2b(np.asarray(tokens[:end], dtype=np.int64).tobytes(), digest_size=16).digest()

    def reuse_prefix(self, seq: Seq, chunk: int) -> int:
        """Copy the cached K/V of the prompt's leading whole chunks into seq's cache; the tokens
        skipped. The last prompt token is always fed: its logits give the first sample."""
        if not self.prefix_bytes or chunk < 1 or seq.n_cached % chunk or seq.replay:
            return 0
        start = seq.n_cached
        while seq.n_cached + chunk <= seq.n_prompt - 1:
            kv = self.prefixes.get(self._prefix_key(seq.tokens, seq.n_cached + chunk, chunk))
            if kv is None:
                break
            self._ensure_cache(seq)
            assert seq.cache is not None
            seq.cache[:, :, :, seq.n_cached:seq.n_cached + chunk] = kv
            self.prefixes.move_to_end(self._prefix_key(seq.tokens, seq.n_cached + chunk, chunk))
            seq.n_cached += chunk
        self.reused_tokens += seq.n_cached - start
        return seq.n_cached - start

    def chunk_key(self, seq: Seq, chunk: int) -> tuple | None:
        """The cache key of the reusable prompt chunk seq feeds next, if it feeds one."""
        end = seq.n_cached + chunk
        if seq.n_cached % chunk or end > seq.n_prompt - 1:
            return None
        return self._prefix_key(seq.tokens, end, chunk)

    def remember_prefix(self, seq: Seq, start: int, chunk: int) -> None:
        """Keep the K/V of the whole prompt chunk seq just fed at `start` (LRU, prefix_bytes)."""
        end = start + chunk
        if not self.prefix_bytes or start % chunk or end > seq.n_prompt or seq.cache is None:
            return
        key = self._prefix_key(seq.tokens, end, chunk)
        if key in self.prefixes:
            self.prefixes.move_to_end(key)
            return
        part = seq.cache[:, :, :, start:end]
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
