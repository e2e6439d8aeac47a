"""``EnvPool``: many episodes at once, results as they finish, failures kept to their episode.

Example:
    >>> import asyncio
    >>> from gymbox.envs.builtin.calculator import Calculator
    >>> async def cheat(messages, tools):  # an "agent" that reads the answer off the task
    ...     return "<answer>0</answer>"
    >>> async def main():
    ...     pool = EnvPool(Calculator, concurrency=4)
    ...     results = [r async for r in pool.run(cheat, seeds=range(8))]
    ...     await pool.aclose()
    ...     return sorted(r.seed for r in results), {r.status for r in results}
    >>> asyncio.run(main())
    ([0, 1, 2, 3, 4, 5, 6, 7], {'completed'})
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium

from gymbox.envs.core import Message, Status, ToolEnv
from gymbox.rewards.record import RewardRecord
from gymbox.runtime.errors import InfraError

Agent = Callable[[list[Message], list[dict[str, Any]]], Awaitable[str]]
"""Produces the agent's next turn from the conversation so far and the tools' schemas."""


@dataclass(frozen=True, slots=True)
class EpisodeResult:
    """How one episode ended.

    Attributes:
        seed: the seed its task was drawn with.
        status: ``"completed"``, ``"truncated"`` or ``"infra_failed"``; ``"running"`` when
            ``error`` stopped it.
        reward_record: its reward; invalid when the infrastructure failed; None after an error.
        messages: the conversation.
        task_id: the task's id.
        error: an exception from the agent or the env's own code (a bug, not the agent's
            mistake and not an infra failure); the episode was abandoned and nothing else was.
    """

    seed: int | None
    status: Status
    reward_record: RewardRecord | None
    messages: list[Message] = field(default_factory=list)
    task_id: str = ""
    error: BaseException | None = None


class EnvPool:
    """Play episodes on up to ``concurrency`` envs at once, on the caller's event loop.

    Each env plays one episode at a time and is reused for the next; sandbox envs made by
    ``make_env`` should share one ``SandboxPool`` (pass it as ``sandboxes=``), which gives every
    episode a fresh sandbox, behind recovery (each env wraps a plain pool in
    ``RecoveringSandboxes``; pass one yourself to share its metrics and a breaker). An env
    whose episode raised is closed and replaced.

    Args:
        make_env: builds one env; a Gymnasium wrapper is unwrapped to its ``ToolEnv``.
        concurrency: how many episodes run at once.
    """

    def __init__(
        self, make_env: Callable[[], ToolEnv | gymnasium.Env], *, concurrency: int
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._make_env = make_env
        self.concurrency = concurrency
        self._idle: list[ToolEnv] = []

    async def run(
        self, agent: Agent, seeds: Iterable[int], *, options: Mapping[str, Any] | None = None
    ) -> AsyncIterator[EpisodeResult]:
        """Play one episode per seed and yield each result as soon as it is done.

        Leaving the loop early cancels the episodes still running and releases their sandboxes.
        """
        pending = iter(seeds)
        finished: asyncio.Queue[EpisodeResult | None] = asyncio.Queue()

        async def worker() -> None:
            env: ToolEnv | None = None
            try:
                for seed in pending:
                    env = env or self._take_env()
                    result = await _play(env, agent, seed, options)
                    if result.error is not None:
                        # The env's state is unknown after its own code raised: start afresh.
                        await _close_quietly(env)
                        env = None
                    await finished.put(result)
            finally:
                if env is not None:
                    self._idle.append(env)
                finished.put_nowait(None)

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            running = len(workers)
            while running:
                result = await finished.get()
                if result is None:
                    running -= 1
                else:
                    yield result
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for task in workers:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def aclose(self) -> None:
        """Close every env (and release any sandbox one still holds)."""
        envs, self._idle = self._idle, []
        for env in envs:
            await _close_quietly(env)

    def _take_env(self) -> ToolEnv:
        if self._idle:
            return self._idle.pop()
        env = self._make_env()
        unwrapped = env.unwrapped
        if not isinstance(unwrapped, ToolEnv):
            raise TypeError(f"make_env must build a ToolEnv, got {type(unwrapped).__name__}")
        return unwrapped


async def _play(
    env: ToolEnv, agent: Agent, seed: int, options: Mapping[str, Any] | None
) -> EpisodeResult:
    info: dict[str, Any] = {}
    try:
        _, info = await env.areset(seed=seed, options=dict(options or {}))
        while info["status"] == "running":
            text = await agent(info["messages"], info["tools"])
            *_, info = await env.astep(text)
    except InfraError as exc:
        # Only reset can raise it (no sandbox could be had); astep turns it into a status.
        return EpisodeResult(seed, "infra_failed", RewardRecord.invalid(exc.kind), [], "")
    except Exception as exc:
        return EpisodeResult(seed, "running", None, info.get("messages", []),
                             info.get("task_id", ""), error=exc)
    return EpisodeResult(seed, info["status"], info["reward_record"], info["messages"],
                         info["task_id"])


async def _close_quietly(env: ToolEnv) -> None:
    # Closing an env that already failed must not hide the failure being reported.
    with contextlib.suppress(Exception):
        await env.aclose()
