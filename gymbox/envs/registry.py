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

import importlib
import os
import sys

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


def require_registered(env_id: str) -> str:
    """Check that ``gymnasium.make(env_id)`` will find an env, and return ``env_id``.

    Takes any id registered with Gymnasium (``gymbox/Calculator-v0``, ``mine/Distances-v0``)
    and Gymnasium's ``module:id`` form (``examples.sql_env:examples/ShopSQL-v0``), which
    imports ``module`` first so that it registers its envs. As ``python -m`` does, the
    current directory is searched for ``module`` too. The id returned is the one given, so
    that ``gymnasium.make`` (in this process or in a worker) imports the module itself.

    Raises:
        ConfigurationError: the module cannot be imported, or the id is not registered; the
            message lists the ids that are.

    Example:
        >>> require_registered("gymbox/Calculator-v0")
        'gymbox/Calculator-v0'
        >>> require_registered("gymbox.envs:gymbox/PythonMath-v0")
        'gymbox.envs:gymbox/PythonMath-v0'
        >>> require_registered("no_such_module:x/Y-v0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gymbox.runtime.errors.ConfigurationError: cannot import 'no_such_module' to find env ...
    """
    module, _, name = env_id.rpartition(":")
    if module:
        _import_registering(module, name)
    if name not in gymnasium.registry:
        where = f" (module {module!r} was imported but did not register it)" if module else ""
        raise ConfigurationError(
            f"unknown env {name!r}{where}; registered: {_listing()}; for an env of your own, "
            "pass `module:id` (e.g. `examples.sql_env:examples/ShopSQL-v0`) so that its module "
            "is imported and registers it"
        )
    return env_id


def _import_registering(module: str, name: str) -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import {module!r} to find env {name!r} ({exc}); check the module name, "
            "or run from the directory that holds it"
        ) from exc


def _listing() -> str:
    """The ids registered by gymbox and by the user, not Gymnasium's own control tasks."""
    ours = sorted(env_id for env_id, spec in gymnasium.registry.items()
                  if not str(spec.entry_point).startswith("gymnasium."))
    return ", ".join(ours) if ours else "none"
