"""Which engine the llm worker runs: `--engine auto|transformers|llamacpp` (cfg.engine).

- `auto`: llama.cpp when the model is a GGUF file (the default "smollm2" is one), no CUDA
  device is wanted or present, and llama-cpp-python imports; transformers otherwise (a GPU, or
  a Hugging Face model directory). A GGUF that falls back to transformers because
  llama-cpp-python is missing gets one line in the log saying so.
- `transformers`: aiosd.engine over the converted safetensors (aiosd.model.resolve).
- `llamacpp`: aiosd.engine_llamacpp over the GGUF as it is; without llama-cpp-python, or with a
  model that is not a GGUF, the worker fails its start with a one-line AiosError.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from aiosd.config import CHOICES, Config
from aiosd.errors import AiosError
from aiosd.model import source_of

ENGINES = CHOICES["engine"]
log = logging.getLogger("aiosd")


def is_gguf(cfg: Config) -> bool:
    if cfg.model in ("", "smollm2", "default"):
        return True
    return str(cfg.model).endswith(".gguf") and os.path.isfile(os.path.expanduser(cfg.model))


def llamacpp_available() -> bool:
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    try:
        import llama_cpp  # noqa: F401 - a broken build fails here, not in the middle of a request
    except Exception:  # noqa: BLE001 - any failure to load the shared library means "not available"
        return False
    return True


def _cuda_wanted(cfg: Config) -> bool:
    if cfg.device == "cuda":
        return True
    if cfg.device == "cpu":
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose(cfg: Config) -> str:
    """The engine cfg asks for, resolved: "transformers" or "llamacpp"."""
    if cfg.engine not in ENGINES:
        raise AiosError("EINVAL", f"unknown engine {cfg.engine!r}; one of {', '.join(ENGINES)}")
    if cfg.engine == "llamacpp":
        if not llamacpp_available():
            raise AiosError("EUNAVAIL", "--engine llamacpp needs llama-cpp-python, which is not installed "
                            "(pip install llama-cpp-python, or use --engine transformers)")
        if not is_gguf(cfg):
            raise AiosError("EINVAL", f"--engine llamacpp serves GGUF files; {cfg.model!r} is not one")
        return "llamacpp"
    if cfg.engine == "transformers":
        return "transformers"
    if not is_gguf(cfg) or _cuda_wanted(cfg):
        return "transformers"
    if not llamacpp_available():
        log.warning("engine auto: llama-cpp-python is not installed; serving %s with transformers", cfg.model)
        return "transformers"
    return "llamacpp"


def make_engine(cfg: Config) -> Any:
    """The engine for cfg (aiosd.engine.Engine or aiosd.engine_llamacpp.LlamaCppEngine)."""
    kind = choose(cfg)
    if kind == "llamacpp":
        import torch

        from aiosd.engine_llamacpp import LlamaCppEngine

        # torch only samples here; its idle OpenMP threads would spin against llama.cpp's own
        torch.set_num_threads(1)
        eng = LlamaCppEngine(source_of(cfg.model), n_seq_max=cfg.max_batch, n_ctx_seq=cfg.context_window,
                             n_threads=model_threads(cfg),
                             max_batch_tokens=cfg.max_batch_tokens)
    else:
        from aiosd.engine import Engine
        from aiosd.model import resolve

        eng = Engine(resolve(cfg), device=cfg.device, dtype=cfg.dtype)
    eng.kind = kind
    log.info("engine %s serving %s", kind, cfg.model)
    return eng


def model_threads(cfg) -> int:
    """Threads for the model: cfg.torch_threads, else one core fewer than the machine has.

    Both engines' threads spin while they wait for each other; when an agent, the kernel or
    a test takes one of their cores, a step can slow down twenty-fold (measured on 2 cores:
    1 thread 28-37 tok/s, 2 threads 1.4-6.9 under load). Leaving one core to the rest of
    the system costs far less than that when the machine is idle.
    """
    return int(cfg.torch_threads or max(1, (os.cpu_count() or 2) - 1))
