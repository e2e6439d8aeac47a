"""PythonCalc-v0: arithmetic that the agent computes with a ``python`` tool in a sandbox.

The smallest useful sandboxed task: turn the expression into code, run it, report what it
printed. A small model cannot do the arithmetic in its head, so the reward measures whether it
uses the tool and reports the result, which is what the README's training run teaches
SmolLM2-135M. The env also has a scripted expert (:meth:`PythonCalc.demonstrate`) for
warm-up demonstrations.

Example:
    >>> import numpy as np
    >>> task = PythonCalc().draw_task(np.random.default_rng(0), operations=1)
    >>> task.prompt
    'What is 85 - 52? Compute it with the python tool, then give the value.'
    >>> task.reference
    '33'
"""

from __future__ import annotations

import json

import numpy as np

from gymbox.envs.builtin.calculator import calculate
from gymbox.envs.builtin.python_math import python
from gymbox.envs.core import Task, ToolEnv
from gymbox.envs.errors import InvalidOption
from gymbox.rewards.gold import NumericMatch

OPERATORS = ("+", "-", "*")


class PythonCalc(ToolEnv):
    """Compute an integer expression; a ``python`` tool runs code in the episode's sandbox.

    Reset options: ``operations``, the number of operators in the expression (1-3, default 2);
    operands are integers from 2 to 99.
    Reward: gold 1.0 when the final answer equals the value, else 0.
    """

    tools = (python,)
    verifier = NumericMatch()

    def draw_task(self, rng: np.random.Generator, *, operations: int = 2) -> Task:
        if operations not in (1, 2, 3):
            raise InvalidOption(f"operations must be 1, 2 or 3, got {operations!r}")
        expression = str(rng.integers(2, 100))
        for _ in range(operations):
            expression += f" {rng.choice(OPERATORS)} {rng.integers(2, 100)}"
        return Task(
            prompt=f"What is {expression}? Compute it with the python tool, then give the value.",
            reference=calculate(expression),
            data={"expression": expression},
            id=f"python_calc:{expression}",
        )

    def demonstrate(self) -> str:
        """The expert's turn: run the expression, then answer with what the last run printed."""
        assert self.task is not None, "demonstrate() needs a running episode"
        ran = [r for r in self.journal if r.ok]
        if ran:
            return f"<answer>{ran[-1].content.strip()}</answer>"
        call = {"name": "python",
                "arguments": {"code": f"print({self.task.data['expression']})"}}
        return f"<tool_call>{json.dumps(call)}</tool_call>"
