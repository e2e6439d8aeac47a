"""A deterministic tool env and a scripted agent, shared by the fault tests and the benchmark.

``ProductEnv`` asks for ``a * b + offset``. The scripted agent keeps state in the sandbox on
purpose — a file, then a name in the persistent interpreter — so an episode can only go on after
a fault if recovery rebuilt that state: it writes ``a`` to a file, loads it into the interpreter,
prints ``x * b`` and answers with what it saw. It ignores the offset, so about a quarter of the
tasks are answered wrongly: rewards differ across seeds, and a wrong observation would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gymbox.envs import Task, ToolEnv, tool
from gymbox.rewards import RewardRecord
from gymbox.runtime import DockerBackend, ExecResult, InfraError, SandboxPool, SandboxSpec
from gymbox.runtime.breaker import InfraCircuitBreaker
from gymbox.runtime.classify import CONTROL_DEADLINE_S
from gymbox.runtime.faults import FaultInjector, FaultPlan, inject_faults
from gymbox.runtime.recovery import RecoveringSandboxes, RecoveryPolicy

CALL_TIMEOUT_S = 2.0
RUN_LABEL = "gymbox.test.faults"
RUN_ID = uuid.uuid4().hex
SPEC = SandboxSpec(grace_s=0.2, backstop_margin_s=1.0, default_timeout_s=CALL_TIMEOUT_S,
                   labels={RUN_LABEL: RUN_ID})


POLICY = RecoveryPolicy(max_attempts=4, deadline_s=15.0)
BACKSTOP_S = CALL_TIMEOUT_S + SPEC.grace_s + SPEC.backstop_margin_s
EPISODE_DEADLINE_S = 4 * (BACKSTOP_S + POLICY.deadline_s)
"""What an episode may take at worst: its start (a recovery's deadline) and three calls, each
hanging to its backstop and then recovering for a whole deadline. Past it the episode is
cancelled and the test fails, instead of stalling."""


async def containers_left(client: Any, *, settle_s: float = CONTROL_DEADLINE_S) -> list[str]:
    """Ids of this run's containers still on the engine after up to ``settle_s``: removals run
    in the background, each bounded by the runtime's control-call deadline."""
    deadline = time.monotonic() + settle_s
    while True:
        left = [c["Id"] for c in client.api.containers(
            all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"})]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.25)


@tool
async def shell(command: str, *, sandbox: Any) -> ExecResult:
    """Run a shell command in the sandbox's working directory.

    Args:
        command: the shell command line
    """
    return await sandbox.exec(command, timeout=CALL_TIMEOUT_S)


@tool
async def python(code: str, *, sandbox: Any) -> ExecResult:
    """Run one cell in the sandbox's persistent Python interpreter.

    Args:
        code: the cell's Python source
    """
    return await sandbox.run_python(code, timeout=CALL_TIMEOUT_S)


class ProductEnv(ToolEnv):
    tools = (shell, python)

    def draw_task(self, rng: np.random.Generator) -> Task:
        a, b = (int(n) for n in rng.integers(2, 1000, size=2))
        offset = int(rng.random() < 0.25)
        return Task(prompt=f"Compute {a} * {b} + {offset}.", reference=str(a * b + offset),
                    data={"a": a, "b": b})

    async def score(self, answer: str, task: Task, sandbox: Any) -> RewardRecord:
        return RewardRecord.of(gold=float(answer.strip() == task.reference))


def call(name: str, **arguments: str) -> str:
    """The agent's text for one tool call."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


Agent = Callable[[int, list[dict[str, Any]]], str]


def product_agent(turn: int, messages: list[dict[str, Any]]) -> str:
    """The scripted agent: a pure function of the turn and what it has seen."""
    a, b = re.findall(r"\d+", messages[1]["content"])[:2]
    script = [
        call("shell", command=f"echo {a} > a.txt"),
        call("python", code="x = int(open('a.txt').read())"),
        call("python", code=f"print(x * {b})"),
    ]
    if turn < len(script):
        return script[turn]
    return f"<answer>{messages[-1]['content'].strip()}</answer>"


def scripted(*turns: str) -> Agent:
    """An agent that plays ``turns`` in order, then answers with its last observation."""

    def agent(turn: int, messages: list[dict[str, Any]]) -> str:
        if turn < len(turns):
            return turns[turn]
        return f"<answer>{messages[-1]['content'].strip()}</answer>"

    return agent


@contextlib.asynccontextmanager
async def recovering(plan: FaultPlan | None = None, *, spec: SandboxSpec = SPEC,
                     policy: RecoveryPolicy = POLICY, pool_size: int = 2,
                     breaker: InfraCircuitBreaker | None = None, testimony: bool = True,
                     ) -> AsyncIterator[tuple[RecoveringSandboxes, FaultInjector | None]]:
    """Recovering sandboxes over a warm Docker pool, behind an injector when ``plan`` is given
    (``testimony=False``: its log is no evidence, only what the platform observes is)."""
    async with contextlib.AsyncExitStack() as stack:
        faults = None
        backend: Any = DockerBackend()
        if plan is not None:
            faults = backend = await stack.enter_async_context(
                inject_faults(plan, backend, testimony=testimony))
        pool = await stack.enter_async_context(SandboxPool(spec, size=pool_size, backend=backend))
        yield RecoveringSandboxes(pool, policy, breaker=breaker), faults


@dataclass
class Episode:
    seed: int
    status: str
    record: RewardRecord
    messages: list[dict[str, Any]]
    seconds: float


async def play(env: ToolEnv, seed: int, agent: Agent = product_agent, *,
               think_s: float = 0.0) -> Episode:
    """One episode. One that cannot start (no sandbox) is infra-failed, as a trainer counts it.

    ``think_s`` stands in for the policy's generation time before each turn.
    """
    started = time.monotonic()
    try:
        _, info = await env.areset(seed=seed)
    except InfraError as exc:
        return Episode(seed, "infra_failed", RewardRecord.invalid(exc.kind), [],
                       time.monotonic() - started)
    turn = 0
    while True:
        await asyncio.sleep(think_s)
        _, _, terminated, truncated, info = await env.astep(agent(turn, info["messages"]))
        turn += 1
        if terminated or truncated:
            break
    await env.aclose()
    return Episode(seed, info["status"], info["reward_record"], info["messages"],
                   time.monotonic() - started)


async def play_many(sandboxes: Any, seeds: Sequence[int], *, concurrency: int,
                    deadline_s: float, agent: Agent = product_agent,
                    think_s: float = 0.0) -> list[Episode]:
    """Play one episode per seed, ``concurrency`` at a time, each under ``deadline_s``."""
    gate = asyncio.Semaphore(concurrency)

    async def one(seed: int) -> Episode:
        async with gate:
            env = ProductEnv(sandboxes=sandboxes, max_turns=6)
            async with asyncio.timeout(deadline_s):
                return await play(env, seed, agent, think_s=think_s)

    async with asyncio.TaskGroup() as group:  # one failure cancels the rest: nothing leaks
        tasks = [group.create_task(one(seed)) for seed in seeds]
    return [task.result() for task in tasks]
