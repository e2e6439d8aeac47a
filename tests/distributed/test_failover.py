"""Episodes spread over engines; an engine or a worker dying mid-run costs no episode its
honest reward: each one is recovered on another engine (journal replay) or masked with the
failure's kind, and nothing is left behind on any engine.

The episodes are played by PythonCalc's scripted expert, which solves every task: a valid
reward other than 1.0 would be a corrupted one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
from transformers import AutoTokenizer

from gymbox.agents.rollout import Budget, Trajectory, demonstrate
from gymbox.distributed import EngineSet, ScaleConfig, containers_on_engines, scaled_sandboxes
from gymbox.envs.builtin.python_calc import PythonCalc
from gymbox.runtime import errors
from gymbox.runtime.breaker import InfraCircuitBreaker
from gymbox.runtime.recovery import RecoveringSandboxes, ReplayDiverged

pytestmark = [pytest.mark.ray, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

BUDGET = Budget(max_tokens=512, max_turns=2)
INFRA_KINDS = {cls("").kind for cls in (
    errors.InfraError, errors.EngineUnavailable, errors.SandboxStartError, errors.SandboxDied,
    errors.SandboxUnresponsive, errors.AmbiguousExecution, errors.SupervisorFault,
    ReplayDiverged)}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def calc_with_a_fault(fault: Callable[[str], bool]) -> type[PythonCalc]:
    """PythonCalc whose setup writes the task into the sandbox (a journal to replay), then
    calls ``fault(engine)`` with the engine the episode runs on: a fault injected on purpose,
    between the episode's first call and the agent's."""

    class Faulty(PythonCalc):
        async def setup(self, task, sandbox) -> None:
            await sandbox.write_file("task.txt", task.prompt)
            await asyncio.to_thread(fault, sandbox.sandbox.engine)

    return Faulty


async def play(tokenizer, env_class, sandboxes, *, rounds: int, per_round: int
               ) -> list[Trajectory]:
    played: list[Trajectory] = []
    for r in range(rounds):
        envs = [env_class(sandboxes=sandboxes) for _ in range(per_round)]
        try:
            played += await demonstrate(tokenizer, envs, budget=BUDGET,
                                        seeds=[1000 * r + i for i in range(per_round)])
        finally:
            for env in envs:
                await env.aclose()
    return played


def assert_honest(played: list[Trajectory]) -> None:
    """Every episode is the expert's solved one, or masked with an infrastructure kind."""
    for t in played:
        if t.valid:
            assert t.status == "completed" and t.reward.value == 1.0, t.messages
        else:
            assert t.status == "infra_failed" and t.reward.reason in INFRA_KINDS, t.reward


def test_engines_discovered_from_the_nodes_share_the_episodes_and_nothing_leaks(
        rig, tokenizer):
    # No engines listed: one per node advertising gymbox_engine_<name>, as `gymbox train`
    # finds them from a [scale] section with only ray_address set.
    scale = ScaleConfig(ray_address=rig.cluster.address, pool_size=2)

    async def main():
        async with scaled_sandboxes(scale) as sandboxes:
            played = await play(tokenizer, calc_with_a_fault(lambda _: False), sandboxes,
                                rounds=2, per_round=4)
            return played, sandboxes.source.metrics()

    played, metrics = asyncio.run(main())
    assert_honest(played)
    assert all(t.valid for t in played)
    assert metrics["engine/e1/sandboxes"] >= 2 and metrics["engine/e2/sandboxes"] >= 2, metrics
    # The pools were closed: nothing is left even before the reaper runs.
    scale = ScaleConfig(ray_address=rig.cluster.address, engines=tuple(rig.engines()))
    assert containers_on_engines(scale) == {"e1": [], "e2": []}


def test_an_engine_killed_mid_episode_is_drained_and_its_episodes_recover(rig, tokenizer):
    killed: list[str] = []
    once = threading.Lock()

    def kill_engine_2(engine: str) -> bool:
        with once:
            if engine == "e2" and not killed:
                rig.script("kill", 2)
                killed.append(engine)
        return bool(killed)

    async def main():
        async with EngineSet(rig.engines()) as pool:
            sandboxes = RecoveringSandboxes(pool, breaker=InfraCircuitBreaker())
            played = await play(tokenizer, calc_with_a_fault(kill_engine_2), sandboxes,
                                rounds=3, per_round=4)
            return played, pool.metrics(), sandboxes.metrics, pool.lanes[1].breaker.trips

    try:
        played, metrics, recovery, trips = asyncio.run(main())
    finally:
        rig.script("restart", 2)
    assert killed == ["e2"]
    assert_honest(played)
    # The episode that killed its engine went on on the other one, from its journal.
    assert sum(recovery.recovered.values()) >= 1 and recovery.replays >= 1, recovery
    assert sum(t.valid for t in played) >= len(played) - 1
    assert trips >= 1 and metrics["engine/e2/failures"] >= 1, metrics
    assert metrics["engine/e1/sandboxes"] > metrics["engine/e2/sandboxes"], metrics
    rig.assert_clean()


def test_a_dead_worker_is_masked_or_recovered_and_the_reaper_collects_its_sandboxes(
        rig, tokenizer):
    pools: list[EngineSet] = []
    killed: list[str] = []
    once = threading.Lock()

    def kill_worker_1(engine: str) -> bool:
        with once:
            if engine == "e1" and not killed:
                ray.kill(pools[0].lanes[0].actor)
                killed.append(engine)
        return bool(killed)

    async def main():
        async with EngineSet(rig.engines()) as pool:
            pools.append(pool)
            sandboxes = RecoveringSandboxes(pool)
            played = await play(tokenizer, calc_with_a_fault(kill_worker_1), sandboxes,
                                rounds=2, per_round=4)
            return played, pool.lanes[0].breaker.state(), sandboxes.metrics

    played, state, recovery = asyncio.run(main())
    assert killed == ["e1"]
    assert_honest(played)
    assert state == "dead"
    assert sum(recovery.recovered.values()) >= 1, recovery
    # The killed worker could not remove its sandboxes: what its lease has not ended yet is
    # on e1 under its (dead) pid, and the reaper removes it there.
    scale = ScaleConfig(ray_address=rig.cluster.address, engines=tuple(rig.engines()))
    dead_pid = str(pools[0].lanes[0].info.pid)
    assert all(c["gymbox.owner_pid"] == dead_pid
               for c in containers_on_engines(scale)["e1"])
    rig.assert_clean()
