"""Argument schemas of the syscall table: pure checks, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aiosd.errors import AiosError
from aiosd.protocol import ShmRef

_PY = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bytes": (bytes,),
    "data": (bytes, str),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "strlist": (str, list),
    "any": (object,),
}


@dataclass(frozen=True)
class Arg:
    name: str
    type: str
    required: bool = False
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    choices: tuple | None = None
    doc: str = ""

    @property
    def where(self) -> str:  # formatted only for an error: check runs on every request
        return f"argument '{self.name}'"

    def check(self, value: Any) -> Any:
        if value is None:
            if self.required:
                raise AiosError("EINVAL", f"{self.where} is required")
            return None
        if isinstance(value, ShmRef):
            if self.type not in ("bytes", "data", "str", "any"):
                raise AiosError("EINVAL", f"{self.where} must be {self.type}, not a shared-memory payload")
            if self.max_len is not None and value.size > self.max_len:
                raise AiosError("E2BIG", f"{self.where} has {value.size} bytes, over the limit of {self.max_len}")
            return value
        types = _PY[self.type]
        if self.type in ("int", "float") and isinstance(value, bool):
            raise AiosError("EINVAL", f"{self.where} must be {self.type}, not bool")
        if not isinstance(value, types):
            raise AiosError("EINVAL", f"{self.where} must be {self.type}, not {type(value).__name__}")
        if self.type == "float":
            value = float(value)
            if math.isnan(value) or math.isinf(value):
                raise AiosError("EINVAL", f"{self.where} must be a finite number")
        if self.min is not None and isinstance(value, (int, float)) and value < self.min:
            raise AiosError("EINVAL", f"{self.where} must be >= {self.min}, got {value}")
        if self.max is not None and isinstance(value, (int, float)) and value > self.max:
            raise AiosError("EINVAL", f"{self.where} must be <= {self.max}, got {value}")
        if self.max_len is not None and hasattr(value, "__len__") and len(value) > self.max_len:
            code = "E2BIG" if isinstance(value, (bytes, str)) else "EINVAL"
            raise AiosError(code, f"{self.where} has length {len(value)}, over the limit of {self.max_len}")
        if self.choices is not None and value not in self.choices:
            raise AiosError("EINVAL", f"{self.where} must be one of {', '.join(map(str, self.choices))}")
        return value


def validate(args: Any, spec: tuple[Arg, ...], call: str) -> dict:
    """Check args against spec; returns a clean dict with every declared name present."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise AiosError("EINVAL", f"arguments of {call} must be a map, not {type(args).__name__}")
    known = {a.name for a in spec}
    for k in args:
        if k not in known:
            raise AiosError("EINVAL", f"{call} takes no argument '{k}'")
    return {a.name: a.check(args.get(a.name)) for a in spec}
