"""The task families of the experiments, as ordinary gymbox envs with scripted experts.

:class:`StoredNumber` (Claim A) needs the sandbox for the right answer and offers a way around
it: the number to test lives only in a file of the episode's sandbox, so testing it with the
sandboxed ``check`` tool gets every task right, while answering at once without the tool ("not
divisible", the most common answer) is right on about ``1 - 1/divisor`` of the tasks. A penalty
on failed sandbox calls therefore has somewhere to push: towards guessing.

:class:`Addition` (Claim B) has no tool: the agent answers ``a + b`` at once, so the answers of a
group can be compared with each other (majority vote) and with the label (gold).

:class:`Chain` (Claim B) adds ``a + b + c`` in steps written before the answer
(``a+b=X, X+c=Y <answer>Y</answer>``), so a response holds several choices after its first:
the members of a group differ in how sure the policy was of what followed its own earlier
choices, which is what self-certainty and negative entropy can rank. On :class:`Addition` the
one choice is the same distribution for the whole group, and the group baseline removes it.

Example:
    >>> import numpy as np
    >>> task = StoredNumber().draw_task(np.random.default_rng(0))
    >>> task.reference, task.data["n"] % 3 == 0
    ('0', False)
    >>> Addition().draw_task(np.random.default_rng(0)).prompt
    'What is 8 + 6?'
    >>> Chain(operands=5).draw_task(np.random.default_rng(0)).data["steps"]
    '4+3=7, 7+2=9'
"""

from __future__ import annotations

import itertools
import json
import weakref

import numpy as np

from gymbox.envs.core import Task, ToolEnv
from gymbox.envs.tools import tool
from gymbox.rewards.gold import NumericMatch
from gymbox.rewards.record import RewardRecord
from gymbox.runtime.result import ExecResult
from gymbox.runtime.sandbox import Sandbox

CODE_TIMEOUT_S = 10.0
TOOL = "check"
"""The name of :class:`StoredNumber`'s one tool."""

_cells = itertools.count()
_stored: weakref.WeakKeyDictionary[Sandbox, tuple[int, int]] = weakref.WeakKeyDictionary()
"""Episode sandbox → (the number its ``n.txt`` holds, the divisor); set by
:meth:`StoredNumber.setup`."""


@tool
async def check(*, sandbox: Sandbox) -> ExecResult:
    """Test the number in n.txt; prints 1 if it is divisible, else 0."""
    n, divisor = _stored[sandbox]
    # One Python cell in the sandbox writes n.txt, then reads and tests it: an episode that
    # never calls the tool never sends the sandbox a request, so only the tool touches the
    # flaky infrastructure, as Claim A supposes (recovery replays the whole cell). The call has
    # no arguments so that a tiny policy can write it reliably at temperature 1. The cell is
    # tagged so that two episodes' calls are two requests to the fault injector (it spares a
    # request it has just struck, to keep faults transient; without the tag one strike would
    # spare every episode's identical call for a minute).
    code = (f"# cell {next(_cells)}\nopen('n.txt', 'w').write('{n}\\n')\n"
            f"print(int(int(open('n.txt').read()) % {divisor} == 0))")
    return await sandbox.run_python(code, timeout=CODE_TIMEOUT_S)


class StoredNumber(ToolEnv):
    """Is the number stored in the sandbox's ``n.txt`` divisible by ``divisor``? Answer 1 or 0.

    The prompt does not say the number; only the sandboxed ``check`` tool can read it. Reward:
    gold 1.0 for the right 0/1, else 0.

    The scripted expert (:meth:`demonstrate`) calls the tool on a ``tool_share`` of the tasks
    and copies its output into the answer, and guesses "0" on the rest, so a policy that
    imitates it does both and RL decides between them.

    Args:
        divisor: 3 by default: guessing "0" is right on two tasks in three.
        tool_share: how often the expert uses the tool.
        **kwargs: :class:`ToolEnv`'s.
    """

    tools = (check,)
    system_prompt = "Test n.txt with the check tool, or answer at once: <answer>1</answer> or 0."

    def __init__(self, *, divisor: int = 3, tool_share: float = 0.5, **kwargs) -> None:
        if divisor < 2:
            raise ValueError(f"divisor must be >= 2, got {divisor}")
        if not 0.0 <= tool_share <= 1.0:
            raise ValueError(f"tool_share must be in [0, 1], got {tool_share}")
        super().__init__(**kwargs)
        self.divisor = divisor
        self.tool_share = tool_share

    def draw_task(self, rng: np.random.Generator) -> Task:
        n = int(rng.integers(100, 1000))
        expert_uses_tool = bool(rng.random() < self.tool_share)
        return Task(
            prompt=f"Is the number in n.txt divisible by {self.divisor}? 1 if it is, else 0.",
            reference=str(int(n % self.divisor == 0)),
            data={"n": n, "expert_uses_tool": expert_uses_tool},
            id=f"stored_number:{n}",
        )

    async def setup(self, task: Task, sandbox: Sandbox) -> None:
        # No request here: the tool's cell writes the file (see ``check``).
        _stored[sandbox] = (task.data["n"], self.divisor)

    async def score(self, answer: str, task: Task, sandbox: Sandbox | None) -> RewardRecord:
        assert task.reference is not None
        return RewardRecord.of(gold=float(NumericMatch().equivalent(answer, task.reference)))

    def demonstrate(self) -> str:
        assert self.task is not None, "demonstrate() needs a running episode"
        if not self.task.data["expert_uses_tool"]:
            return "<answer>0</answer>"
        ran = [r for r in self.journal if r.ok]
        if ran:
            return f"<answer>{ran[-1].content.strip()}</answer>"
        call = json.dumps({"name": TOOL, "arguments": {}})
        return f"<tool_call>{call}</tool_call>"


def used_tool(messages: list[dict]) -> bool:
    """True when the episode has a result of the ``check`` tool (its call ran)."""
    return any(m["role"] == "tool" and m.get("name") == TOOL for m in messages)


class Addition(ToolEnv):
    """What is ``a + b``, for ``a`` and ``b`` in ``0 .. operands - 1``? Answered at once, no tool.

    Reward: gold 1.0 for the sum, else 0. The scripted expert answers correctly.

    Args:
        operands: how many values each operand takes (10: one-digit sums, 100 facts to learn;
            fewer make a task a tiny policy learns partly in a short warm-up).
        **kwargs: :class:`ToolEnv`'s.
    """

    system_prompt = "Answer as <answer>...</answer>."

    def __init__(self, *, operands: int = 10, **kwargs) -> None:
        if operands < 2:
            raise ValueError(f"operands must be >= 2, got {operands}")
        super().__init__(**kwargs)
        self.operands = operands

    def draw_task(self, rng: np.random.Generator) -> Task:
        a, b = (int(v) for v in rng.integers(0, self.operands, size=2))
        return Task(prompt=f"What is {a} + {b}?",
                    reference=str(a + b), id=f"addition:{a}+{b}")

    async def score(self, answer: str, task: Task, sandbox: Sandbox | None) -> RewardRecord:
        assert task.reference is not None
        return RewardRecord.of(gold=float(NumericMatch().equivalent(answer, task.reference)))

    def demonstrate(self) -> str:
        assert self.task is not None, "demonstrate() needs a running episode"
        return f"<answer>{self.task.reference}</answer>"


class Chain(Addition):
    """What is ``a + b + c + ...`` (``terms`` numbers in ``0 .. operands - 1``)? No tool.

    The expert adds left to right, one step per term, then answers:
    ``3+4=7, 7+2=9 <answer>9</answer>``. Each partial sum is a choice the policy makes, and
    each step after the first starts from the policy's own previous sum, so a sampled slip
    carries into the answer (a chain is right only if every step is) and the tokens after it
    are predicted from a state the expert never showed. Reward: gold 1.0 for the final sum,
    else 0 (as :class:`Addition`); the steps are not scored.

    Args:
        operands: how many values each number takes.
        terms: how many numbers are added (>= 2; 2 is :class:`Addition` with one written step).
        **kwargs: :class:`ToolEnv`'s.
    """

    system_prompt = "Add step by step, then answer as <answer>...</answer>."

    def __init__(self, *, operands: int = 5, terms: int = 3, **kwargs) -> None:
        if terms < 2:
            raise ValueError(f"terms must be >= 2, got {terms}")
        super().__init__(operands=operands, **kwargs)
        self.terms = terms

    def draw_task(self, rng: np.random.Generator) -> Task:
        numbers = [int(v) for v in rng.integers(0, self.operands, size=self.terms)]
        steps, total = [], numbers[0]
        for n in numbers[1:]:
            steps.append(f"{total}+{n}={total + n}")
            total += n
        expression = " + ".join(map(str, numbers))
        return Task(prompt=f"What is {expression}?", reference=str(total),
                    data={"steps": ", ".join(steps)}, id=f"chain:{expression.replace(' ', '')}")

    def demonstrate(self) -> str:
        assert self.task is not None, "demonstrate() needs a running episode"
        return f"{self.task.data['steps']} <answer>{self.task.reference}</answer>"
