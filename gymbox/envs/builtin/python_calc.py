"""PythonCalc-v0: arithmetic that the agent computes with a ``python`` tool in a sandbox.

The smallest useful sandboxed task: turn the expression into code, run it, report what it
printed. A small model cannot do the arithmetic in its head, so the reward measures whether it
uses the tool and reports the result, which is what the README's training run teaches
SmolLM2-135M. The env also has a scripted expert (:meth:`PythonCalc.demonstrate`) for
warm-up demonstrations, in two kinds:

* ``"tool"``: runs every expression with the tool, then answers with what it printed;
* ``"mental"``: an expert stronger than the student, as a person or a larger model is: it does
  additions and subtractions in its head and answers at once, and runs the tool only for
  expressions with a multiplication. Every one of its answers is right, so every demonstration
  is kept; but a student that copies "answer at once" cannot do the sums. Imitation then
  copies a behaviour that fails the student, and only a reward for the student's own outcomes
  (RL) can find which of the expert's behaviours work for it: the README's main job.

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
from typing import Any

import numpy as np

from gymbox.envs.builtin.calculator import calculate
from gymbox.envs.builtin.python_math import python
from gymbox.envs.core import Task, ToolEnv
from gymbox.envs.errors import InvalidOption
from gymbox.rewards.gold import NumericMatch

OPERATORS = ("+", "-", "*")
EXPERTS = ("tool", "mental")


class PythonCalc(ToolEnv):
    """Compute an integer expression; a ``python`` tool runs code in the episode's sandbox.

    Reset options: ``operations``, the number of operators in the expression (1-3, default 2);
    operands are integers from 2 to 99.
    Reward: gold 1.0 when the final answer equals the value, else 0.

    Args:
        expert: how the scripted expert plays (module docstring): ``"tool"`` (default) or
            ``"mental"``.
        **kwargs: :class:`~gymbox.envs.core.ToolEnv`'s (``max_turns``, ``sandboxes``, ...).

    Example:
        >>> PythonCalc(expert="by heart")
        Traceback (most recent call last):
        ...
        gymbox.envs.errors.InvalidOption: expert must be one of 'tool', 'mental'; got 'by heart'
    """

    tools = (python,)
    verifier = NumericMatch()

    def __init__(self, *, expert: str = "tool", **kwargs: Any) -> None:
        if expert not in EXPERTS:
            raise InvalidOption(f"expert must be one of {', '.join(map(repr, EXPERTS))}; "
                                f"got {expert!r}")
        super().__init__(**kwargs)
        self.expert = expert

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
        """The expert's turn: run the expression, then answer with what the last run printed;
        the ``"mental"`` expert answers at once when the expression has no multiplication."""
        assert self.task is not None, "demonstrate() needs a running episode"
        if self.expert == "mental" and "*" not in self.task.data["expression"]:
            return f"<answer>{self.task.reference}</answer>"
        ran = [r for r in self.journal if r.ok]
        if ran:
            return f"<answer>{ran[-1].content.strip()}</answer>"
        call = {"name": "python",
                "arguments": {"code": f"print({self.task.data['expression']})"}}
        return f"<tool_call>{json.dumps(call)}</tool_call>"
