"""The Math Agent of the paper's evaluation: solve, then check (two llm_chat requests).

Arithmetic in the task is also worked out exactly (a small safe evaluator, no eval()),
so the checking request has a reference to compare the model's solution against.
"""

from __future__ import annotations

import ast
import operator
import re

from libaios.agent import Agent, Manifest

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv,
        ast.USub: operator.neg, ast.UAdd: operator.pos}
_EXPR = re.compile(r"[-+*/%^().\d\s×x÷]{3,}")


def calculate(text: str) -> str | None:
    """The value of the first arithmetic expression in text ('17 * 23' → '391'), or None."""
    for m in _EXPR.finditer(text):
        expr = m.group(0).strip().replace("×", "*").replace("÷", "/").replace("^", "**")
        expr = re.sub(r"(?<=\d)\s*x\s*(?=\d)", "*", expr)
        if not re.search(r"\d\s*[-+*/%]", expr):
            continue
        try:
            value = _eval(ast.parse(expr, mode="eval").body)
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(round(value, 10) if isinstance(value, float) else value)
    return None


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError("not arithmetic")


class MathAgent(Agent):
    manifest = Manifest(name="math", description="solves mathematical problems, then checks the solution",
                        tools=["wolframalpha"], max_tokens=64)

    def run(self, task: str) -> str:
        solution = self.chat([
            {"role": "system", "content": "You are a careful math assistant. Solve the problem briefly, "
                                          "then give the result as 'Answer: <value>'."},
            {"role": "user", "content": task},
        ])
        self.log("solved")
        exact = calculate(task)
        reference = f"\nA calculator gives {exact}." if exact is not None else ""
        checked = self.chat([
            {"role": "system", "content": "You check math solutions. Reply with the correct final answer only."},
            {"role": "user", "content": f"Problem: {task}\nProposed solution: {solution.strip()}{reference}\n"
                                        "What is the correct final answer?"},
        ], max_tokens=32)
        self.log("checked")
        answer = checked.strip() or solution.strip()
        if exact is not None:
            answer += f"\n(calculator: {exact})"
        return answer

    @classmethod
    def default_task(cls) -> str:
        return "What is 17 * 23?"
