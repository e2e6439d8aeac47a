"""A sandboxed env written as a user would, for the integration tests and ``benchmarks/vs_trl.py``.

``NonceCalc`` is :class:`~gymbox.envs.builtin.python_calc.PythonCalc` with two things a random
tiny model can show: its ``setup`` makes two real sandbox calls per episode (it reads a nonce
from the kernel and stores it in the workspace), so an injected fault strikes an episode
whatever the model writes, and the replay of the nonce read cannot reproduce it (recovery
cannot rebuild the sandbox: the episode is masked); and every turn without a tool call is its
final answer, scored by the share of vowels in it, so rewards differ between samples and GRPO
has advantages to learn from.
"""

from __future__ import annotations

import gymnasium

from gymbox.envs.builtin.python_calc import PythonCalc
from gymbox.envs.core import Reply, Task
from gymbox.rewards.record import RewardRecord
from gymbox.runtime.sandbox import Sandbox

ENV_ID = "gymbox-test/NonceCalc-v0"


class NonceCalc(PythonCalc):
    async def setup(self, task: Task, sandbox: Sandbox) -> None:
        nonce = await sandbox.exec("cat /proc/sys/kernel/random/uuid", timeout=10)
        await sandbox.write_file("nonce", nonce.stdout)

    def reply(self, text: str) -> Reply:
        return Reply("", answer=text)

    async def score(self, answer: str, task: Task, sandbox: Sandbox | None) -> RewardRecord:
        letters = [c for c in answer.lower() if c.isascii() and c.isalpha()]
        return RewardRecord.of(gold=sum(c in "aeiou" for c in letters) / max(len(letters), 1))


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point=f"{__name__}:NonceCalc")
