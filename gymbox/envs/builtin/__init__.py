"""The built-in environments (registered as ``gymbox/<Name>-v0`` by importing gymbox.envs)."""

from gymbox.envs.builtin.calculator import Calculator
from gymbox.envs.builtin.guess_number import GuessNumber
from gymbox.envs.builtin.python_calc import PythonCalc
from gymbox.envs.builtin.python_math import PythonMath
from gymbox.envs.builtin.shell_task import ShellTask

__all__ = ["Calculator", "GuessNumber", "PythonCalc", "PythonMath", "ShellTask"]
