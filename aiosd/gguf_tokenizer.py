"""The slice of a transformers tokenizer the llm worker uses, over llama.cpp's vocabulary.

The chat template is the one stored in the GGUF (`tokenizer.chat_template`), rendered the
way transformers renders it (sandboxed jinja2, trim_blocks + lstrip_blocks, `tojson`,
`raise_exception`), and the text is tokenized without added special tokens, as
`apply_chat_template(..., tokenize=True)` does, so both engines see the same prompt.
"""

from __future__ import annotations

import ctypes
import json
from datetime import datetime
from typing import Any

import llama_cpp as L

from aiosd.errors import AiosError


def model_meta(model: Any, key: str, size: int = 1 << 16) -> str | None:
    buf = ctypes.create_string_buffer(size)
    n = L.llama_model_meta_val_str(model, key.encode(), buf, size)
    return None if n < 0 else buf.value.decode("utf-8", errors="replace")


class GgufTokenizer:
    def __init__(self, model: Any):
        self.model = model  # keeps the llama_model alive as long as we are
        self.vocab = L.llama_model_get_vocab(model)
        self.vocab_size = L.llama_vocab_n_tokens(self.vocab)
        self.eos_token_id = L.llama_vocab_eos(self.vocab)
        self.bos_token_id = L.llama_vocab_bos(self.vocab)
        self.eos_token = self._piece(self.eos_token_id) if self.eos_token_id >= 0 else ""
        self.bos_token = self._piece(self.bos_token_id) if self.bos_token_id >= 0 else ""
        self.chat_template = model_meta(model, "tokenizer.chat_template")
        self._template = None

    def _piece(self, tok: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, tok, buf, 256, 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def is_eog(self, tok: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, tok))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special_tokens, True)
        if n < 0:  # the buffer was too small: -n is the size needed
            cap = -n
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special_tokens, True)
        return list(arr[:n])

    def __call__(self, text: str, add_special_tokens: bool = False, **_: Any) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids: list[int], skip_special_tokens: bool = True, **_: Any) -> str:
        ids = [int(t) for t in ids if 0 <= int(t) < self.vocab_size]
        if not ids:
            return ""
        arr = (L.llama_token * len(ids))(*ids)
        cap = 16 * len(ids) + 64
        buf = ctypes.create_string_buffer(cap)
        n = L.llama_detokenize(self.vocab, arr, len(ids), buf, cap, skip_special_tokens, not skip_special_tokens)
        if n < 0:
            cap = -n
            buf = ctypes.create_string_buffer(cap)
            n = L.llama_detokenize(self.vocab, arr, len(ids), buf, cap, skip_special_tokens,
                                   not skip_special_tokens)
        return buf.raw[:n].decode("utf-8", errors="replace")

    def _compiled(self):  # noqa: ANN202 - a jinja2 Template
        if self._template is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise AiosError("EINVAL", f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(self.chat_template)
        return self._template

    def apply_chat_template(self, messages: list[dict], tools: list | None = None,
                            add_generation_prompt: bool = True, tokenize: bool = True,
                            **kwargs: Any) -> list[int] | str:
        if not self.chat_template:
            raise AiosError("EINVAL", "the model has no chat template in its GGUF metadata")
        ctx = dict(kwargs, messages=messages, add_generation_prompt=add_generation_prompt,
                   bos_token=self.bos_token, eos_token=self.eos_token)
        if tools:
            ctx["tools"] = tools
        text = self._compiled().render(**ctx)
        return self.encode(text) if tokenize else text
