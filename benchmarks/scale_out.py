"""Scale-out: episodes/s over 1, 2 and 3 Docker engines on Ray, and with one engine killed,
next to the in-process pool on one engine measured in the same run.

The episodes are PythonCalc's scripted expert (a sandbox write, one ``run_python`` cell, an
answer): no model, so the figure is the sandbox path's throughput — what scale-out changes —
and every valid episode must score 1.0 (a check, not a figure). The script starts its own
engines (scripts/engines.sh, under ``$GYMBOX_ENGINES_DIR``, default /work/engines/h14-bench)
and a loopback Ray cluster with one node per engine, and stops both at the end.

    python -m benchmarks.scale_out --episodes 32 --concurrency 8

On one machine the engines share its CPUs, so more engines do not add capacity: read the
rows as the cost of the Ray path (ratio to in-process) and as proof that episodes spread and
survive a dead engine; docs/scaling.md says how this grows across hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray
from transformers import AutoTokenizer

from gymbox.agents.models import resolve_model_dir
from gymbox.agents.rollout import Budget, demonstrate
from gymbox.distributed import (
    EngineConfig,
    EngineSet,
    ScaleConfig,
    containers_on_engines,
    gc_engines,
)
from gymbox.distributed.local_cluster import LocalCluster
from gymbox.envs.builtin.python_calc import PythonCalc
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.recovery import RecoveringSandboxes

REPO = Path(__file__).resolve().parents[1]
BUDGET = Budget(max_tokens=512, max_turns=2)


def say(text: str) -> None:
    print(f"[scale_out {time.strftime('%H:%M:%S')}] {text}", flush=True)


def engines_script(*args: str) -> None:
    subprocess.run([str(REPO / "scripts" / "engines.sh"), *args], check=True, timeout=300)


def with_fault(fault: Callable[[str], None]) -> type[PythonCalc]:
    class Faulty(PythonCalc):
        async def setup(self, task, sandbox) -> None:
            await sandbox.write_file("task.txt", task.prompt)
            await asyncio.to_thread(fault, getattr(sandbox.sandbox, "engine", "local"))

    return Faulty


async def episodes_per_s(tokenizer, source, *, episodes: int, concurrency: int,
                         fault: Callable[[str], None] = lambda _: None) -> tuple[float, str]:
    """Play ``episodes`` expert episodes, ``concurrency`` at a time; (episodes/s, notes)."""
    async with source as pool:
        sandboxes = RecoveringSandboxes(pool)
        env_class = with_fault(fault)
        played = []
        started = time.perf_counter()
        for first in range(0, episodes, concurrency):
            envs = [env_class(sandboxes=sandboxes)
                    for _ in range(min(concurrency, episodes - first))]
            try:
                played += await demonstrate(tokenizer, envs, budget=BUDGET,
                                            seeds=[first + i for i in range(len(envs))])
            finally:
                for env in envs:
                    await env.aclose()
        wall = time.perf_counter() - started
    corrupted = [t for t in played if t.valid and t.reward.value != 1.0]
    if corrupted:
        raise AssertionError(f"{len(corrupted)} valid episodes scored below 1.0")
    masked = sum(not t.valid for t in played)
    recovered = sum(sandboxes.metrics.recovered.values())
    spread = ""
    if isinstance(pool, EngineSet):
        spread = " ".join(f"{lane.name}:{lane.stats.sandboxes}" for lane in pool.lanes)
    return len(played) / wall, f"masked {masked} recovered {recovered} {spread}".strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pool-size", type=int, default=4)
    args = parser.parse_args()

    engines_dir = os.environ.setdefault("GYMBOX_ENGINES_DIR", "/work/engines/h14-bench")
    host = lambda i: f"unix://{engines_dir}/{i}/docker.sock"  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(), local_files_only=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = LocalCluster(port=port)
    rows: list[tuple[str, float, str]] = []
    try:
        say("starting 3 engines (scripts/engines.sh) and a 4-node loopback Ray cluster")
        engines_script("start", "3")
        cluster.start(env={"PYTHONPATH": str(REPO)})
        for i in (1, 2, 3):
            cluster.add_node(resources={f"gymbox_engine_e{i}": 1},
                             env={"DOCKER_HOST": host(i), "PYTHONPATH": str(REPO)})
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        engine = lambda i: EngineConfig(f"e{i}", resource=f"gymbox_engine_e{i}",  # noqa: E731
                                        pool_size=args.pool_size)
        run = lambda source, **kw: asyncio.run(episodes_per_s(  # noqa: E731
            tokenizer, source, episodes=args.episodes, concurrency=args.concurrency, **kw))

        say("in-process pool on engine 1 (baseline)")
        direct = EngineConfig("e1", docker_host=host(1))
        rows.append(("in-process, 1 engine",
                     *run(SandboxPool(size=args.pool_size,
                                      backend=DockerBackend(direct.connect())))))
        for n in (1, 2, 3):
            say(f"Ray, {n} engine{'s' if n > 1 else ''}")
            rows.append((f"Ray, {n} engine{'s' if n > 1 else ''}",
                         *run(EngineSet([engine(i) for i in range(1, n + 1)]))))

        killed: list[str] = []
        once = threading.Lock()

        def kill_engine_3(name: str) -> None:
            with once:
                if name == "e3" and not killed:
                    killed.append(name)
                    engines_script("kill", "3")

        say("Ray, 3 engines, engine 3 killed during the first batch")
        rows.append(("Ray, 3 engines, 1 killed",
                     *run(EngineSet([engine(i) for i in (1, 2, 3)]), fault=kill_engine_3)))
        engines_script("restart", "3")
        scale = ScaleConfig(ray_address=cluster.address,
                            engines=tuple(engine(i) for i in (1, 2, 3)))
        gc_engines(scale)
        left = sum(len(v) for v in containers_on_engines(scale).values())
    finally:
        ray.shutdown()
        cluster.stop()
        engines_script("stop")

    baseline = rows[0][1]
    load = os.getloadavg()
    print(f"\nscale-out, {args.episodes} expert episodes of PythonCalc-v0, {args.concurrency} "
          f"at a time, pool {args.pool_size} per engine; load average {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'run':<28} {'episodes/s':>10} {'vs in-process':>14}  notes")
    for name, rate, notes in rows:
        print(f"{name:<28} {rate:>10.2f} {rate / baseline:>13.2f}x  {notes}")
    print(f"gymbox containers left on the engines after the runs and gc: {left}")


if __name__ == "__main__":
    main()
