"""``play``: a person plays an env as the agent, in a terminal — how an author checks an env.

It shows the system prompt, the task and the tools' schemas; reads a turn (lines up to a line
holding only ``.``, or the end of input); shows what the env says back; and at the end shows
the status and the reward. ``gymbox play ENV_ID`` runs it on the terminal.

Example:
    >>> import io
    >>> from gymbox.envs.builtin.calculator import Calculator
    >>> typed = io.StringIO('<answer>7</answer>\\n.\\n')
    >>> shown = io.StringIO()
    >>> info = play(Calculator(), seed=0, input=typed, output=shown)
    >>> info["status"], "reward" in shown.getvalue()
    ('completed', True)
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import gymnasium

from gymbox.envs.core import ToolEnv

END_OF_TURN = "."
QUIT = "/quit"


def play(
    env: ToolEnv | str,
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    input: TextIO = sys.stdin,
    output: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Play one episode of ``env`` (an env or a registered id) with turns read from ``input``.

    Returns the last ``info``; its ``status`` is ``"running"`` when the person quit (``/quit``
    or end of input) before the episode ended. The env is closed when it was made here.
    """
    owned = isinstance(env, str)
    tool_env = _tool_env(gymnasium.make(env) if isinstance(env, str) else env)
    try:
        return _session(tool_env, seed, options, input, output)
    finally:
        if owned:
            tool_env.close()


def _session(
    env: ToolEnv, seed: int | None, options: dict[str, Any] | None, input: TextIO, output: TextIO
) -> dict[str, Any]:
    def show(heading: str, text: str) -> None:
        output.write(f"── {heading} ──\n{text}\n\n")

    prompt, info = env.reset(seed=seed, options=options)
    show("system", env.system_prompt)
    if info["tools"]:
        show("tools", "\n".join(json.dumps(t, indent=2) for t in info["tools"]))
    show("task", prompt)
    while info["status"] == "running":
        output.write(f"your turn {info['turn'] + 1}/{env.max_turns} "
                     f"(end it with a line holding only '{END_OF_TURN}'; {QUIT} to stop):\n")
        output.flush()
        turn = _read_turn(input)
        if turn is None:
            output.write("stopped before the episode ended\n")
            return info
        observation, _, _, _, info = env.step(turn)
        if observation:
            show("environment", observation)
    record = info["reward_record"]
    validity = "" if record.valid else f" (invalid: {record.reason}; excluded from training)"
    components = ", ".join(f"{name}={c.value:g}" for name, c in record.components.items())
    show("end", f"status: {info['status']}\nreward: {record.value:g}{validity}"
                + (f"\ncomponents: {components}" if components else ""))
    return info


def _read_turn(input: TextIO) -> str | None:
    lines: list[str] = []
    for line in input:
        stripped = line.rstrip("\n")
        if stripped == QUIT:
            return None
        if stripped == END_OF_TURN:
            return "\n".join(lines)
        lines.append(stripped)
    return "\n".join(lines) if lines else None


def _tool_env(env: gymnasium.Env) -> ToolEnv:
    if not isinstance(env.unwrapped, ToolEnv):
        raise TypeError(f"play needs a gymbox ToolEnv, got {type(env.unwrapped).__name__}")
    return env.unwrapped
