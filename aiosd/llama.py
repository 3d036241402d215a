"""Our own forward pass of the Llama architecture (SmolLM2 is one) in plain torch.

Why not transformers' model: the worker needs per-request KV caches it owns (a snapshot is a
copy of a tensor slice, preemption keeps the tensor), and a request's numerics must not depend
on what else is in the batch. One call runs a *flat* batch: the tokens of several requests
concatenated; the linear layers (the FLOPs) run over all rows at once, attention runs per
request over that request's own cache.

Batch invariance: a row's result must not depend on how many rows the matmul has. MKL's sgemm
picks other kernels for small row counts (a row differs when M is 1-3 on one thread, also 5-7 and
9-11 on two), so padding every matmul to a safe row count made one decoding request pay for 4-12
rows. oneDNN's matmul on a weight packed once at load computes each row the same way at every M
(probed: 1..64 rows, 1 and 2 threads) and is as fast as MKL's gemv at M=1, so that is the CPU
path. Which row counts are unsafe is still probed at load, with the kernel actually used; where
any are (another CPU, another library), every matmul is padded to the next safe row count.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class Llama:
    def __init__(self, model_dir: Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 min_rows: int = -1):
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        if cfg.get("model_type") not in ("llama", "mistral", "smollm3", None):
            raise ValueError(f"unsupported architecture {cfg.get('model_type')}")
        self.config = cfg
        self.device, self.dtype = torch.device(device), dtype
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads", self.n_heads)
        self.hidden = cfg["hidden_size"]
        self.head_dim = cfg.get("head_dim") or self.hidden // self.n_heads
        self.eps = float(cfg.get("rms_norm_eps", 1e-5))
        self.max_pos = int(cfg.get("max_position_embeddings", 2048))
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        sd = {}
        for f in sorted(Path(model_dir).glob("*.safetensors")):
            sd.update(load_file(str(f)))
        w = {k.removeprefix("model."): v.to(device=self.device, dtype=dtype) for k, v in sd.items()}
        self.embed = w["embed_tokens.weight"]
        self.lm_head = Linear(w.get("lm_head.weight", self.embed) if not cfg.get("tie_word_embeddings")
                              else self.embed)
        self.norm = w["norm.weight"]
        self.layers = []
        for i in range(self.n_layers):
            p = f"layers.{i}."
            # fused projections: fewer, larger matmuls
            qkv = torch.cat([w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"],
                             w[p + "self_attn.v_proj.weight"]])
            gate_up = torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]])
            self.layers.append((w[p + "input_layernorm.weight"], Linear(qkv),
                                Linear(w[p + "self_attn.o_proj.weight"]), w[p + "post_attention_layernorm.weight"],
                                Linear(gate_up), Linear(w[p + "mlp.down_proj.weight"])))
        inv = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
        ang = torch.outer(torch.arange(self.max_pos, dtype=torch.float64), inv)
        ang = torch.cat([ang, ang], dim=-1)
        self.cos = ang.cos().to(self.device, dtype)
        self.sin = ang.sin().to(self.device, dtype)
        bad = probe_bad_rows(self.layers[0][4], self.layers[0][5], self.lm_head) if min_rows < 0 \
            else set(range(1, min_rows))
        self.min_rows = max(bad) + 1 if bad else 1
        # pad each matmul to the next safe row count, not always to min_rows: on 2 threads 4 and
        # 8 rows are as safe as 12, so one decoding request costs 4 rows of compute, not 12
        self.pad_to = [m if m not in bad else min(x for x in range(m, self.min_rows + 1) if x not in bad)
                       for m in range(self.min_rows + 1)]

    def new_cache(self, capacity: int) -> torch.Tensor:
        """One tensor per request: [layers, 2 (K, V), kv_heads, capacity, head_dim]."""
        return host_empty((self.n_layers, 2, self.n_kv, capacity, self.head_dim), self.dtype, self.device)

    def _mm(self, x: torch.Tensor, lin: Linear) -> torch.Tensor:
        m = x.shape[0]
        if m >= self.min_rows or self.pad_to[m] == m:
            return lin(x)
        return lin(torch.cat([x, x.new_zeros(self.pad_to[m] - m, x.shape[1])]))[:m]

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    @torch.inference_mode()
    def forward(self, segments: list[tuple[torch.Tensor, list[int], int]]) -> torch.Tensor:
        """segments: (cache, token ids, start position) per request; the tokens' K/V are written
        into the cache at start..start+n. Returns the logits of each segment's last token."""
        ids = [t for _, toks, _ in segments for t in toks]
        n = len(ids)
        x = self.embed[torch.tensor(ids, device=self.device)]
        pos = torch.cat([torch.arange(s, s + len(t)) for _, t, s in segments]).to(self.device)
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        bounds, off = [], 0
        for cache, toks, start in segments:
            bounds.append((off, len(toks), start, cache))
            off += len(toks)
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        g = H // KV
        scale = D ** -0.5
        for li, (ln1, qkv_w, o_w, ln2, gu_w, down_w) in enumerate(self.layers):
            h = self._mm(self._rms(x, ln1), qkv_w)
            q = self._rope(h[:, :H * D].view(n, H, D), cos, sin)
            k = self._rope(h[:, H * D:(H + KV) * D].view(n, KV, D), cos, sin)
            v = h[:, (H + KV) * D:].view(n, KV, D)
            out = torch.empty(n, H, D, device=self.device, dtype=self.dtype)
            for o, m, start, cache in bounds:
                kc, vc = cache[li, 0], cache[li, 1]
                kc[:, start:start + m] = k[o:o + m].transpose(0, 1)
                vc[:, start:start + m] = v[o:o + m].transpose(0, 1)
                end = start + m
                # [KV, g*m, D]: the query heads that share one kv head, in one bmm
                qs = q[o:o + m].view(m, KV, g, D).permute(1, 2, 0, 3).reshape(KV, g * m, D)
                att = (qs @ kc[:, :end].transpose(1, 2)) * scale
                if m > 1:
                    causal = torch.arange(end, device=self.device)[None, :] > \
                        torch.arange(start, end, device=self.device)[:, None]
                    att = att.view(KV, g, m, end).masked_fill(causal, float("-inf")).view(KV, g * m, end)
                y = torch.softmax(att, dim=-1) @ vc[:, :end]
                out[o:o + m] = y.view(KV, g, m, D).permute(2, 0, 1, 3).reshape(m, H, D)
            x = x + self._mm(out.view(n, H * D), o_w)
            gu = self._mm(self._rms(x, ln2), gu_w)
            gate, up = gu.chunk(2, dim=-1)
            x = x + self._mm(F.silu(gate) * up, down_w)
        last = torch.tensor([o + m - 1 for o, m, _, _ in bounds], device=self.device)
        xl = self._rms(x[last], self.norm)
        return self._mm(xl, self.lm_head).float()


class Linear:
    """x @ w.t() for a weight stored [out, in]. On the CPU in float32 the weight is packed once
    for oneDNN, whose kernel gives a row the same bits at any row count (see the module doc);
    elsewhere a plain matmul over a transposed view (no copy)."""

    def __init__(self, w: torch.Tensor):
        self.in_features = w.shape[1]
        self.dtype, self.device = w.dtype, w.device
        self.packed = None
        if w.device.type == "cpu" and w.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None)
            except (RuntimeError, AttributeError):  # a torch build without the op: plain matmul
                pass
        self.wt = None if self.packed is not None else w.t()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return x @ self.wt


def probe_bad_rows(*linears: Linear, limit: int = 20) -> set[int]:
    """Row counts at which a row's result differs from the same row in a 16-row product (the
    library picks another kernel there); every other row count gives the same bits."""
    gen = torch.Generator(device="cpu").manual_seed(1234)
    if any(lin.device.type != "cpu" for lin in linears):
        return set()  # measured on CPU only; a GPU backend must bring its own guarantee
    bad: set[int] = set()
    for lin in linears:
        x = torch.randn(limit, lin.in_features, generator=gen).to(lin.dtype)
        # reference rows from two 16-row products (limit is 17..32)
        ref = torch.cat([lin(x[:16]), lin(x[limit - 16:])[32 - limit:]])
        bad |= {m for m in (*range(1, 17), limit) if not torch.equal(lin(x[:m]), ref[:m])}
    return bad


def host_empty(shape: tuple, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uninitialised memory (attention reads only positions already written). On the CPU it is
    numpy's: numpy advises huge pages for big arrays, which makes the first touch of a fresh
    47 MB cache or snapshot about 4x cheaper than torch.empty's page faults."""
    if torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float16):
        import numpy as np
        return torch.from_numpy(np.empty(shape, dtype=np.float32 if dtype == torch.float32 else np.float16))
    return torch.empty(shape, dtype=dtype, device=device)
