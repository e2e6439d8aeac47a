"""Calculator-v0: arithmetic with a host-side calculator tool. No sandbox; the fast env.

Example:
    >>> env = Calculator()
    >>> prompt, info = env.reset(seed=3)
    >>> [t["function"]["name"] for t in info["tools"]]
    ['calculate']
    >>> env.close()
"""

from __future__ import annotations

import ast
import math
import operator

import numpy as np

from gymbox.envs.core import Task, ToolEnv
from gymbox.envs.errors import InvalidOption, ToolError
from gymbox.envs.tools import tool
from gymbox.rewards.gold import NumericMatch

_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_MAX_EXPRESSION_CHARS = 500
_MAX_EXPONENT = 64
_MAX_BITS = 4096
"""Bounded evaluation: no intermediate value may exceed 4096 bits (about 1233 digits), so each
step is cheap; the tool's deadline (it runs in a host worker) bounds the rest."""


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression and return its value.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "(17 + 5) * 3".
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"cannot parse {expression!r}: {exc.msg}") from None
    value = _evaluate(tree.body)
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ToolError(f"exponents above {_MAX_EXPONENT} are not supported")
        if isinstance(node.op, ast.Pow) and _bits(left) * abs(right) > _MAX_BITS:
            raise ToolError("the result is too large")
        try:
            value = _OPERATORS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
        if _bits(value) > _MAX_BITS:
            raise ToolError("the result is too large")
        return value
    raise ToolError(
        f"unsupported element {ast.unparse(node)[:80]!r}: use numbers, + - * / // % ** and "
        "parentheses"
    )


def _bits(value: int | float | complex) -> int:
    if isinstance(value, int):
        return value.bit_length()
    if isinstance(value, float) and math.isfinite(value):
        return 0
    return _MAX_BITS + 1  # inf, nan, and (-8) ** 0.5 (complex) are refused


class Calculator(ToolEnv):
    """Compute the value of an arithmetic expression; a ``calculate`` tool runs on the host.

    Reset options: ``difficulty``, the number of operations (1-3).
    Reward: gold 1.0 when the final answer equals the value (relative tolerance 1e-6), else 0.
    """

    tools = (calculate,)
    verifier = NumericMatch()

    def draw_task(self, rng: np.random.Generator, *, difficulty: int = 2) -> Task:
        if difficulty not in (1, 2, 3):
            raise InvalidOption(f"difficulty must be 1, 2 or 3, got {difficulty!r}")
        expression = str(rng.integers(2, 100))
        for _ in range(difficulty):
            expression = f"({expression} {rng.choice(['+', '-', '*'])} {rng.integers(2, 100)})"
        expression = expression[1:-1] if difficulty else expression
        value = calculate(expression)
        return Task(
            prompt=f"What is {expression}? Use the calculate tool, then give the value.",
            reference=value,
            id=f"calculator:{expression}",
        )
