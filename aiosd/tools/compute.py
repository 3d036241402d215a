"""Computation tools of Table 1: currency_converter (the ECB rates shipped with the
currencyconverter package, offline) and wolframalpha (sympy; the real Wolfram|Alpha
Short Answers API when WOLFRAM_APP_ID is set)."""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
from tokenize import TokenError
from functools import lru_cache
from typing import Any

from aiosd.errors import AiosError
from aiosd.tools.net import http_get
from aiosd.tools.registry import Tool, ToolContext


@lru_cache(maxsize=1)
def _converter() -> Any:
    from currency_converter import CurrencyConverter
    return CurrencyConverter(fallback_on_missing_rate=True)


def rate_date(conv: Any, a: str, b: str, date: dt.date | None) -> dt.date:
    """The day whose ECB rates a conversion used (the latest day both currencies have)."""
    if date is not None:
        return date
    lasts = [conv.bounds[c].last_date for c in (a, b) if c in conv.bounds]
    return min(lasts) if lasts else max(v.last_date for v in conv.bounds.values())


def currency_converter(args: dict, ctx: ToolContext) -> dict:
    conv = _converter()
    src, dst = args["from"].upper(), args["to"].upper()
    for c in (src, dst):
        if c not in conv.currencies:
            raise AiosError("EINVAL", f"currency_converter: unknown currency '{c}' "
                                      f"(known: {', '.join(sorted(conv.currencies))})")
    date = dt.date.fromisoformat(args["date"]) if args.get("date") else None
    try:
        value = conv.convert(float(args["amount"]), src, dst, date=date)
    except Exception as exc:  # RateNotFoundError and friends: the date is outside the table
        raise AiosError("EINVAL", f"currency_converter: {exc}") from None
    day = rate_date(conv, src, dst, date)
    return {"amount": float(args["amount"]), "from": src, "to": dst, "result": value,
            "rate_date": day.isoformat(), "source": "European Central Bank reference rates (bundled)",
            "text": f"{args['amount']} {src} = {value:.4f} {dst} (ECB rate of {day.isoformat()})"}


def _sym(text: str) -> Any:
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            standard_transformations)
    tr = standard_transformations + (implicit_multiplication_application, convert_xor)
    if "=" in text and "==" not in text:
        import sympy
        left, right = text.split("=", 1)
        return sympy.Eq(parse_expr(left, transformations=tr), parse_expr(right, transformations=tr))
    return parse_expr(text, transformations=tr)


def symbolic(op: str, expr: str, var: str | None = None) -> dict:
    """sympy does the maths: solve, simplify, integrate, differentiate, evaluate."""
    import sympy
    e = _sym(expr)
    free = sorted(e.free_symbols, key=str)
    x = sympy.Symbol(var) if var else (free[0] if free else sympy.Symbol("x"))
    if op == "solve":
        out: Any = sympy.solve(e, x)
    elif op == "simplify":
        out = sympy.simplify(e)
    elif op == "integrate":
        out = sympy.integrate(e, x)
    elif op == "differentiate":
        out = sympy.diff(e, x)
    elif op == "factor":
        out = sympy.factor(e)
    else:  # evaluate: exact where sympy can, and the number beside it
        out = sympy.simplify(e)
    text = ", ".join(map(str, out)) if isinstance(out, list) else str(out)
    numeric = None
    if not isinstance(out, list) and getattr(out, "is_number", False) and not getattr(out, "is_Integer", False):
        numeric = str(sympy.N(out, 15))
    return {"op": op, "input": expr, "variable": str(x), "result": text, "numeric": numeric,
            "values": [str(v) for v in out] if isinstance(out, list) else None, "source": "sympy"}


def warm() -> None:
    """Done once in each sandbox worker, so forked calls find the table and sympy loaded."""
    _converter()
    symbolic("solve", "x^2 - 1 = 0")


def wolframalpha(args: dict, ctx: ToolContext) -> dict:
    appid = os.environ.get("WOLFRAM_APP_ID", "")
    if appid:
        base = ctx.base_url("https://api.wolframalpha.com")
        q = urllib.parse.urlencode({"appid": appid, "i": args["query"]})
        text = http_get(f"{base}/v1/result?{q}", "Wolfram|Alpha", ctx).decode()
        return {"input": args["query"], "result": text, "source": "Wolfram|Alpha"}
    try:
        return symbolic(args.get("op", "evaluate"), args["query"], args.get("variable"))
    except (SyntaxError, TypeError, ValueError, NotImplementedError, AttributeError, TokenError) as exc:
        raise AiosError("EINVAL", f"wolframalpha: cannot read '{args['query']}' as maths "
                                  f"({type(exc).__name__}: {exc})") from None


TOOLS = [
    Tool("currency_converter",
         "Convert an amount between currencies with the European Central Bank reference rates "
         "(offline table); says which day's rate was used.",
         {"type": "object",
          "properties": {"amount": {"type": "number", "description": "the amount to convert"},
                         "from": {"type": "string", "description": "ISO code, e.g. USD"},
                         "to": {"type": "string", "description": "ISO code, e.g. EUR"},
                         "date": {"type": "string", "description": "YYYY-MM-DD for a historical rate"}},
          "required": ["amount", "from", "to"], "additionalProperties": False},
         currency_converter, category="computation", cpu_s=10, memory=1 << 30),
    Tool("wolframalpha",
         "Symbolic and numeric maths: solve equations, simplify, integrate, differentiate, factor "
         "or evaluate an expression such as 'x^2 - 4 = 0' or 'integrate sin(x)'.",
         {"type": "object",
          "properties": {"query": {"type": "string", "description": "the expression or equation"},
                         "op": {"type": "string",
                                "enum": ["solve", "simplify", "integrate", "differentiate", "factor", "evaluate"]},
                         "variable": {"type": "string", "description": "the variable to solve or integrate for"}},
          "required": ["query"], "additionalProperties": False},
         wolframalpha, category="computation", cpu_s=20, memory=2 << 30, network=True,
         env=("WOLFRAM_APP_ID",)),
]
