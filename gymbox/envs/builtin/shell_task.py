"""ShellTask-v0: file-system chores in the sandbox, checked by reading the sandbox afterwards.

The task's input files are written into the sandbox before the first turn; the agent works with
a ``shell`` tool; when it answers, the env reads the files the task asked for and compares them
with what they must hold. The answer's text itself is not scored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping

import numpy as np

from gymbox.envs.core import Task, ToolEnv
from gymbox.envs.errors import InvalidOption
from gymbox.envs.tools import tool
from gymbox.rewards.record import RewardRecord
from gymbox.runtime.api import SandboxAPI
from gymbox.runtime.result import ExecResult

COMMAND_TIMEOUT_S = 10.0
_WORDS = ("alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "romeo", "tango", "zulu")


@tool
async def shell(command: str, *, sandbox: SandboxAPI) -> ExecResult:
    """Run a shell command (/bin/sh) in the working directory and return its output.

    Each call starts a new shell, so `cd` does not carry over; each may run for 10 seconds.

    Args:
        command: the command line, e.g. "ls -l data".
    """
    return await sandbox.exec(command, timeout=COMMAND_TIMEOUT_S)


Chore = tuple[str, dict[str, str], dict[str, str]]
"""(instruction, input files, files that must exist afterwards with this content)."""


def _count_errors(rng: np.random.Generator) -> Chore:
    levels = rng.choice(["INFO", "WARN", "ERROR"], size=int(rng.integers(20, 80)))
    log = "".join(f"2024-01-{i % 28 + 1:02d} {level} event {i}\n" for i, level in enumerate(levels))
    count = int((levels == "ERROR").sum())
    return ("Count the lines of logs/app.log that contain ERROR and write the count to "
            "error_count.txt.", {"logs/app.log": log}, {"error_count.txt": f"{count}\n"})


def _sum_numbers(rng: np.random.Generator) -> Chore:
    numbers = [int(n) for n in rng.integers(-500, 1000, size=int(rng.integers(10, 60)))]
    return ("data/numbers.txt holds one integer per line. Write their sum to total.txt.",
            {"data/numbers.txt": "".join(f"{n}\n" for n in numbers)},
            {"total.txt": f"{sum(numbers)}\n"})


def _sort_names(rng: np.random.Generator) -> Chore:
    count = int(rng.integers(5, 25))
    names = [f"{rng.choice(_WORDS)}{int(rng.integers(0, 100))}" for _ in range(count)]
    return ("Write the lines of names.txt sorted alphabetically (byte order) to sorted.txt.",
            {"names.txt": "".join(f"{n}\n" for n in names)},
            {"sorted.txt": "".join(f"{n}\n" for n in sorted(names))})


def _copy_csv(rng: np.random.Generator) -> Chore:
    files = {
        f"data/{rng.choice(_WORDS)}_{i}.{rng.choice(['csv', 'txt'])}":
            f"id,value\n{i},{int(rng.integers(0, 99))}\n"
        for i in range(int(rng.integers(3, 8)))
    }
    wanted = {f"backup/{path.removeprefix('data/')}": content for path, content in files.items()
              if path.endswith(".csv")}
    return ("Copy every .csv file in data/ into a new folder backup/ (same file names).",
            files, wanted)


def _digest(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]


CHORES: dict[str, Callable[[np.random.Generator], Chore]] = {
    "count_errors": _count_errors, "sum_numbers": _sum_numbers, "sort_names": _sort_names,
    "copy_csv": _copy_csv,
}


class ShellTask(ToolEnv):
    """Do a file chore with a ``shell`` tool; the sandbox's files are checked at the end.

    Reset options: ``chore``, one of :data:`CHORES` (default: drawn with the seed).
    Reward: gold 1.0 when every file the chore asks for holds exactly what it must (a missing
    final newline is forgiven), else 0.
    """

    tools = (shell,)
    answer_instruction = (
        "When you are done, write <answer>done</answer>; the files you leave behind are checked."
    )

    def draw_task(self, rng: np.random.Generator, *, chore: str | None = None) -> Task:
        if chore is None:
            chore = str(rng.choice(sorted(CHORES)))
        elif chore not in CHORES:
            raise InvalidOption(f"chore must be one of {sorted(CHORES)}, got {chore!r}")
        instruction, inputs, expected = CHORES[chore](rng)
        return Task(prompt=instruction, data={"inputs": inputs, "expected": expected},
                    id=f"shell_task:{chore}:{_digest(inputs)}")

    async def setup(self, task: Task, sandbox: SandboxAPI) -> None:
        for path, content in task.data["inputs"].items():
            await sandbox.write_file(path, content)

    async def score(self, answer: str, task: Task, sandbox: SandboxAPI | None) -> RewardRecord:
        assert sandbox is not None
        expected: Mapping[str, str] = task.data["expected"]
        for path, content in expected.items():
            try:
                found = (await sandbox.read_file(path)).decode("utf-8", "replace")
            except OSError:  # missing or unreadable: the agent did not leave the file there
                return RewardRecord.of(gold=0.0)
            if found.rstrip("\n") != content.rstrip("\n"):
                return RewardRecord.of(gold=0.0)
        return RewardRecord.of(gold=1.0)
