"""The built-in environments' Gymnasium ids.

Importing :mod:`gymbox.envs` registers them, so after ``import gymbox.envs`` (or with the
``module:id`` form, without any import) ``gymnasium.make`` finds them:

    >>> import gymnasium
    >>> env = gymnasium.make("gymbox.envs:gymbox/Calculator-v0")
    >>> env.unwrapped.max_turns
    8
    >>> env.close()
"""

from __future__ import annotations

import gymnasium

from gymbox.runtime.errors import ConfigurationError

BUILTIN_ENVS: dict[str, str] = {
    "gymbox/Calculator-v0": "gymbox.envs.builtin.calculator:Calculator",
    "gymbox/GuessNumber-v0": "gymbox.envs.builtin.guess_number:GuessNumber",
    "gymbox/PythonCalc-v0": "gymbox.envs.builtin.python_calc:PythonCalc",
    "gymbox/PythonMath-v0": "gymbox.envs.builtin.python_math:PythonMath",
    "gymbox/ShellTask-v0": "gymbox.envs.builtin.shell_task:ShellTask",
}


def register_builtin_envs() -> None:
    """Register every built-in id with Gymnasium; registering twice is harmless."""
    for env_id, entry_point in BUILTIN_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)


def require_registered(env_id: str) -> None:
    """Raise :class:`~gymbox.runtime.errors.ConfigurationError`, listing the gymbox ids, when
    ``env_id`` is not registered with Gymnasium."""
    if env_id not in gymnasium.registry:
        known = ", ".join(sorted(k for k in gymnasium.registry if k.startswith("gymbox/")))
        raise ConfigurationError(f"unknown env {env_id!r}; registered gymbox envs: {known}")
