"""Gymnasium tool environments: ``ToolEnv``, ``@tool``, tool-call parsing, built-ins, ``EnvPool``.

Example:
    >>> import gymnasium, gymbox.envs
    >>> env = gymnasium.make("gymbox/Calculator-v0")
    >>> prompt, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(
    ...     '<tool_call>{"name": "calculate", "arguments": {"expression": "2 + 2"}}</tool_call>')
    >>> obs
    '4'
    >>> env.close()
"""

from gymbox.envs.core import (
    ChatText,
    Reply,
    SandboxSource,
    Status,
    Task,
    ToolEnv,
    ToolResult,
    approx_token_count,
    render_exec_result,
)
from gymbox.envs.errors import (
    EpisodeOver,
    GraderCrashed,
    GraderFailed,
    GraderTimeout,
    InvalidOption,
    ToolDefinitionError,
    ToolError,
)
from gymbox.envs.host import run_on_host
from gymbox.envs.parsing import ParsedCalls, ToolCall, extract_answer, parse_tool_calls
from gymbox.envs.play import play
from gymbox.envs.pool import Agent, EnvPool, EpisodeResult
from gymbox.envs.registry import BUILTIN_ENVS, register_builtin_envs
from gymbox.envs.tools import ArgumentError, Tool, tool

register_builtin_envs()

__all__ = [
    "BUILTIN_ENVS",
    "Agent",
    "ArgumentError",
    "ChatText",
    "EnvPool",
    "EpisodeOver",
    "EpisodeResult",
    "GraderCrashed",
    "GraderFailed",
    "GraderTimeout",
    "InvalidOption",
    "ParsedCalls",
    "Reply",
    "SandboxSource",
    "Status",
    "Task",
    "Tool",
    "ToolCall",
    "ToolDefinitionError",
    "ToolEnv",
    "ToolError",
    "ToolResult",
    "approx_token_count",
    "extract_answer",
    "parse_tool_calls",
    "play",
    "register_builtin_envs",
    "render_exec_result",
    "run_on_host",
    "tool",
]
