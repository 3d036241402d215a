"""The llama.cpp engine: aiosd.engine's interface over llama-cpp-python's low-level API.

    eng = LlamaCppEngine(gguf_path, n_seq_max=32, n_ctx_seq=2048, n_threads=None)
    # then exactly as aiosd.engine.Engine: tokenizer, encode_chat, decode, add, step,
    # snapshot, restore, drop; Seq and KvSnapshot are that module's (KvSnapshot.kv holds
    # llama.cpp's per-sequence state bytes as a uint8 tensor)

Each request runs under its own llama.cpp sequence id. A step is one `llama_batch` and one
`llama_decode` for the decode tokens of every running request, plus one per prefill chunk:
llama.cpp splits a batch that mixes a chunk with decode tokens into ubatches of equal shares
per sequence, and the chunk's tokens then come out differently than in a solo run (measured:
the greedy text changed), so a chunk always runs as it would alone.
The KV cache is not unified (`kv_unified=False`): every sequence id has its own stream of
`n_ctx_seq` cells, so where a request's keys sit, and hence its numerics, do not depend on
what else runs; greedy output is token-identical solo or batched.

Sequence ids are a pool of `n_seq_max` slots, not one per request: a request that is
preempted (rr, priority, a suspended agent) keeps its slot until a running request needs one,
then its state is copied to host memory (`llama_state_seq_get_data`) and put back into any
free slot when it runs again, so the scheduler may hold more requests than there are slots.
A finished request leaves the cache at once.

Prompt prefixes are reused as llama-cpp-python's `Llama` reuses the prompt it shares with the
previous request, but token-identically: every prompt is fed in decodes that end at multiples
of `prefix_block` tokens (a chunk [a, b) of the scheduler's runs as [a, next multiple), ...,
[last multiple, b)), whether reuse is on or not, and the state of a prompt's longest whole-block
prefix (below its last token, whose logits give the first sample) goes into a PrefixStore.
A new prompt starts from the stored state of the most whole blocks it shares with one, trimmed
with `llama_memory_seq_rm`; its later blocks are fed as they would be without reuse. Each K/V
entry is thus computed by a decode of the same tokens at the same positions over the same
cache in both cases (tested: same tokens and same state bytes, reuse on or off, solo or
batched). The scheduler's `prefill_chunk` must be a multiple of the block for reuse to apply.

Sampling is aiosd.engine's: the logits go through the same torch code with the same
per-request torch.Generator, so temperature, top_p and seed mean the same on both engines.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L
import numpy as np
import torch

from aiosd.engine import Engine, KvSnapshot, Seq, advance, sampler_generator
from aiosd.errors import AiosError
from aiosd.gguf_tokenizer import GgufTokenizer
from aiosd.llama_cpp_prefix import PrefixStore

_LOG_CB = L.llama_log_callback(lambda level, text, data: None)  # module-level: must outlive C calls


@dataclass
class LSeq(Seq):
    slot: int | None = None            # llama.cpp sequence id while its KV is in the cache
    swapped: bytes | None = None       # its KV state while it waits out of the cache
    used: int = 0                      # step counter of its last run, for choosing whom to swap
    aligned: bool = True               # every prefill decode ended on a block: its prefix may be kept


class LlamaCppEngine:
    def __init__(self, model_path: Path | str, n_seq_max: int = 32, n_ctx_seq: int = 2048,
                 n_threads: int | None = None, max_batch_tokens: int = 512,
                 flash_attn: bool = False, quiet: bool = True, prefix_block: int = 16):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise AiosError("ENOENT", f"GGUF model {self.model_path} not found")
        if quiet:
            L.llama_log_set(_LOG_CB, ctypes.c_void_p(0))
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(self.model_path).encode(), mp)
        if not self.model:
            raise AiosError("EIO", f"llama.cpp could not load {self.model_path}")
        self.model_id = self.model_path.stem
        self.tokenizer = GgufTokenizer(self.model)
        self.n_vocab = self.tokenizer.vocab_size
        n_train = L.llama_model_n_ctx_train(self.model)
        self.n_seq_max = max(1, min(int(n_seq_max), L.llama_max_parallel_sequences()))
        # cells are allocated in steps of 256 per stream; never more than the model was trained on
        self.max_context = min(n_train, max(256, -(-int(n_ctx_seq) // 256) * 256))
        self.n_batch = max(int(max_batch_tokens), self.n_seq_max, 32)
        cp = L.llama_context_default_params()
        cp.n_ctx = self.max_context * self.n_seq_max
        cp.n_seq_max = self.n_seq_max
        cp.n_batch = cp.n_ubatch = self.n_batch
        threads = int(n_threads or os.cpu_count() or 1)
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = False
        # as llama-cpp-python's Llama: on a CPU the fused kernel buys nothing for a model this small
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise AiosError("EIO", f"llama.cpp could not create a context for {self.model_path}")
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.free_slots = list(range(self.n_seq_max - 1, -1, -1))
        self.holders: dict[int, LSeq] = {}
        self.eos_ids = {t for t in range(self.n_vocab) if self.tokenizer.is_eog(t)} or {self.tokenizer.eos_token_id}
        self._steps = 0
        self.prefixes = PrefixStore(prefix_block)   # budget 0: off until the llm worker sets prefix_bytes
        self.block = prefix_block
        self.reused_tokens = 0

    # text <-> tokens, as aiosd.engine.Engine
    def encode_chat(self, messages: list[dict], tools: list | None = None) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, rid: int, prompt: list[int], max_tokens: int, temperature: float = 0.0,
            top_p: float = 1.0, seed: int | None = None) -> LSeq:
        if not prompt:
            raise AiosError("EINVAL", "empty prompt")
        if any(not isinstance(t, int) or not 0 <= t < self.n_vocab for t in prompt):
            raise AiosError("EINVAL", f"prompt token ids must be integers in [0, {self.n_vocab})")
        if max_tokens < 1:
            raise AiosError("EINVAL", "max_tokens must be at least 1")
        if len(prompt) + max_tokens > self.max_context:
            raise AiosError("EINVAL", f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds "
                            f"the {self.max_context}-token context")
        if temperature < 0 or not 0 < top_p <= 1:
            raise AiosError("EINVAL", "temperature must be >= 0 and top_p in (0, 1]")
        seq = LSeq(rid, list(prompt), len(prompt), max_tokens, temperature, top_p, seed)
        seq.generator = sampler_generator(temperature, seed)
        return seq

    # the cache: slots, swapping
    def _swap_out(self, seq: LSeq) -> None:
        seq.swapped = self._get_state(seq) if seq.n_cached else None
        self._release(seq)

    def _release(self, seq: LSeq) -> None:
        if seq.slot is not None:
            L.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
            self.holders.pop(seq.slot, None)
            self.free_slots.append(seq.slot)
            seq.slot = None

    def _ensure_slot(self, seq: LSeq, busy: set[int]) -> None:
        if seq.slot is not None:
            return
        if not self.free_slots:
            idle = [s for s in self.holders.values() if id(s) not in busy]
            if not idle:
                raise AiosError("EBUSY", f"more than {self.n_seq_max} sequences in one step")
            self._swap_out(min(idle, key=lambda s: s.used))
        seq.slot = self.free_slots.pop()
        self.holders[seq.slot] = seq
        L.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
        if seq.swapped is not None:
            self._set_state(seq.slot, seq.swapped)
            seq.swapped = None
            # a stored prefix's state may hold more tokens than the prompt shares with it
            L.llama_memory_seq_rm(self.mem, seq.slot, seq.n_cached, -1)

    def _get_state(self, seq: LSeq) -> bytes:
        size = L.llama_state_seq_get_size(self.ctx, seq.slot)
        buf = (ctypes.c_uint8 * size)()
        n = L.llama_state_seq_get_data(self.ctx, buf, size, seq.slot)
        return bytes(memoryview(buf)[:n])

    def _set_state(self, slot: int, data: bytes) -> None:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if L.llama_state_seq_set_data(self.ctx, buf, len(data), slot) == 0:
            raise AiosError("EIO", "llama.cpp refused the sequence state (another model or context size?)")

    # one step
    def step(self, plan: list[tuple[Seq, int]]) -> list[tuple[Seq, list[int], bool]]:
        if not plan:
            return []
        self._steps += 1
        busy = {id(s) for s, _ in plan}
        feeds: list[tuple[LSeq, int, int]] = []
        for seq, n in plan:
            self._ensure_slot(seq, busy)
            seq.used = self._steps
            if seq.n_cached < seq.n_prompt:  # a prefill chunk never runs past the prompt
                end = min(seq.n_cached + max(1, n), seq.n_prompt)
                if end < seq.n_prompt and end % self.block:
                    seq.aligned = False
            else:
                end = seq.n_cached + 1
            feeds.append((seq, seq.n_cached, end))
        # decode tokens share one llama_decode; each prefill chunk gets one of its own, because
        # llama.cpp splits a batch that mixes them (one ubatch per equal share of tokens per
        # sequence) and a chunk's numerics then depend on the others: measured, tokens differ
        decodes = [f for f in feeds if f[1] >= f[0].n_prompt]
        logits = self._decode(decodes) if decodes else {}
        for seq, start, end in feeds:
            if start < seq.n_prompt:
                logits.update(self._prefill(seq, start, end))
        events: list[tuple[Seq, list[int], bool]] = []
        for seq, start, end in feeds:
            event = advance(seq, end - start, lambda s=seq: self._pick(s, logits[id(s)]), self.eos_ids)
            if event[2]:
                self._release(seq)  # a finished request leaves the cache at once
            events.append(event)
        return events

    def _pick(self, seq: LSeq, row: np.ndarray) -> int:
        if seq.temperature <= 0 or seq.generator is None:
            return int(np.argmax(row))  # as torch.argmax: the first of equal maxima
        return Engine._sample(self, seq, torch.from_numpy(row))  # type: ignore[arg-type]

    def _prefill(self, seq: LSeq, start: int, end: int) -> dict[int, np.ndarray]:
        """Feed prompt tokens [start, end) in decodes that end on block multiples; keep the
        state at the prompt's last whole block below its last token, and at a chunk's end."""
        out: dict[int, np.ndarray] = {}
        keep_at = (seq.n_prompt - 1) // self.block * self.block
        a = start
        while a < end:
            b = min(end, (a // self.block + 1) * self.block)
            out.update(self._decode([(seq, a, b)]))
            if b in (keep_at, end) and 0 < b < seq.n_prompt and not b % self.block \
                    and self.prefixes.budget and seq.aligned and not seq.replay:
                self._remember(seq, b)
            a = b
        return out

    def _decode(self, feeds: list[tuple[LSeq, int, int]]) -> dict[int, np.ndarray]:
        """Feed each sequence's tokens [start, end); the logits of each one's last token if it
        samples next."""
        out: dict[int, np.ndarray] = {}
        b = self.batch
        i = 0
        pending: list[tuple[int, LSeq]] = []
        flat = [(seq, p, seq.tokens[p], p + 1 == end) for seq, start, end in feeds for p in range(start, end)]
        for k, (seq, pos, tok, last) in enumerate(flat):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq.slot
            wants = last and pos + 1 == len(seq.tokens) and not seq.replay
            b.logits[i] = wants
            if wants:
                pending.append((i, seq))
            i += 1
            if i == self.n_batch or k + 1 == len(flat):  # more tokens than n_batch: several decodes
                b.n_tokens = i
                rc = L.llama_decode(self.ctx, b)
                if rc != 0:
                    raise AiosError("EIO", f"llama_decode failed ({rc})")
                for row, s in pending:
                    ptr = L.llama_get_logits_ith(self.ctx, row)
                    out[id(s)] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
                pending, i = [], 0
        return out

    # prompt prefixes: the Runner's interface (aiosd.runner), as aiosd.engine.Engine's
    @property
    def prefix_bytes(self) -> int:
        return self.prefixes.budget

    @prefix_bytes.setter
    def prefix_bytes(self, budget: int) -> None:
        self.prefixes.budget = int(budget)
        if not budget:
            self.prefixes.clear()

    def reuse_prefix(self, seq: Seq, chunk: int) -> int:
        """Start seq from the stored state of the most whole blocks of its prompt (never its
        last token); the tokens skipped. The state is loaded when seq next gets a slot."""
        assert isinstance(seq, LSeq)
        if not self.prefixes.budget or chunk % self.block or seq.replay or not seq.aligned:
            return 0
        n, state = self.prefixes.longest(seq.tokens, seq.n_prompt - 1)
        if n <= seq.n_cached or state is None:
            return 0
        self._release(seq)  # whatever it held is a shorter prefix of the same bytes
        skipped = n - seq.n_cached
        seq.swapped, seq.n_cached = state, n
        self.reused_tokens += skipped
        return skipped

    def chunk_key(self, seq: Seq, chunk: int) -> bytes | None:
        """The prompt's next whole block (the tokens up to its end), if seq computes one now:
        the Runner holds back a request whose next block another one is computing."""
        end = seq.n_cached + self.block
        if not self.prefixes.budget or seq.n_cached % self.block or end > seq.n_prompt - 1 or seq.replay:
            return None
        return np.asarray(seq.tokens[:end], dtype=np.int32).tobytes()

    def remember_prefix(self, seq: Seq, start: int, chunk: int) -> None:
        """Nothing: step keeps prefixes itself, at block ends the Runner does not see."""

    def _remember(self, seq: LSeq, n: int) -> None:
        if not self.prefixes.covers(seq.tokens[:n]):
            self.prefixes.add(seq.tokens[:n], self._get_state(seq))

    # snapshots
    def snapshot(self, seq: Seq, keep_kv: bool = True) -> KvSnapshot:
        assert isinstance(seq, LSeq)
        data = None
        if keep_kv and seq.n_cached:
            data = self._get_state(seq) if seq.slot is not None else seq.swapped
        kv = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else None
        rng = bytes(seq.generator.get_state().numpy().tobytes()) if seq.generator is not None else None
        return KvSnapshot(list(seq.tokens), seq.n_prompt, seq.n_cached if kv is not None else 0, seq.max_tokens,
                          seq.temperature, seq.top_p, seq.seed, rng, self.model_id, kv)

    def restore(self, snap: KvSnapshot, rid: int) -> LSeq:
        if snap.model != self.model_id:
            raise AiosError("EINVAL", f"snapshot of model {snap.model!r}, this engine serves {self.model_id!r}")
        if snap.kv is not None and (snap.kv.dtype != torch.uint8 or snap.kv.dim() != 1):
            raise AiosError("EINVAL", "snapshot holds another engine's KV cache")
        seq = LSeq(rid, list(snap.tokens), snap.n_prompt, snap.max_tokens, snap.temperature, snap.top_p,
                   snap.seed)
        if snap.rng_state is not None:
            seq.generator = torch.Generator(device="cpu")
            seq.generator.set_state(torch.frombuffer(bytearray(snap.rng_state), dtype=torch.uint8))
        if snap.kv is not None:
            seq.swapped = snap.kv.numpy().tobytes()  # loaded into a slot when it next runs
            seq.n_cached = snap.n_cached
            seq.aligned = False  # how its prefill was fed is not recorded: keep no prefix of it
        elif len(snap.tokens) > snap.n_prompt:
            # recompute as aiosd.engine does: prompt in chunks, generated tokens one by one
            seq.tokens = list(snap.tokens[:snap.n_prompt + 1])
            seq.replay = list(snap.tokens[snap.n_prompt + 1:])
        return seq

    def drop(self, seq: Seq) -> None:
        assert isinstance(seq, LSeq)
        self._release(seq)
        seq.swapped = None

    def close(self) -> None:
        if getattr(self, "ctx", None):
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            L.llama_model_free(self.model)
            self.ctx = self.model = None
