"""Sandbox latency and throughput, next to the baseline measured in the same run.

Run: ``python benchmarks/sandbox_latency.py`` (needs the Docker engine and the sandbox image).

On one warm container it times ``exec(["true"])`` through gymbox's supervisor against docker-py's
``exec_run(["true"])`` (one ``docker exec`` per call, what most peers do), ``run_python("1+1")``,
a warm ``SandboxPool.acquire()`` against a cold create, and commands per second with 1, 8 and 32
calls in flight. Each figure is printed with its target and whether it was met.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable

from gymbox.runtime import DockerBackend, Sandbox, SandboxPool, SandboxSpec


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


async def throughput(sandbox: Sandbox, concurrency: int, total: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            result = await sandbox.exec(["true"], timeout=30)
            assert result.ok, result

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


async def main(n: int) -> None:
    backend = DockerBackend()
    spec = SandboxSpec()
    rows: list[tuple[str, str, str, str]] = []
    load_before = os.getloadavg()[0]  # these figures move with the machine's load: say it

    async with await Sandbox.open(spec, backend=backend) as sandbox:
        await sandbox.exec(["true"], timeout=10)  # warm the exec path

        ours = await timed(lambda: sandbox.exec(["true"], timeout=10), n)
        container = backend.client.containers.get(sandbox.id)

        async def exec_run() -> None:
            await asyncio.to_thread(container.exec_run, ["true"], user="1000")

        theirs = await timed(exec_run, max(10, n // 10))
        speedup = statistics.median(theirs) / statistics.median(ours)
        rows.append(("exec(['true']) p50 / p95 ms", f"{percentile(ours, .5):.2f} / "
                     f"{percentile(ours, .95):.2f}", "", ""))
        rows.append(("docker-py exec_run p50 / p95 ms", f"{percentile(theirs, .5):.2f} / "
                     f"{percentile(theirs, .95):.2f}", "baseline", ""))
        rows.append(("exec speed-up vs exec_run (p50)", f"{speedup:.0f}x", ">= 20x",
                     "met" if speedup >= 20 else "MISSED"))

        await sandbox.run_python("1+1", timeout=10)
        cells = await timed(lambda: sandbox.run_python("1+1", timeout=10), n)
        p50 = percentile(cells, .5)
        rows.append(("run_python('1+1') p50 / p95 ms",
                     f"{p50:.2f} / {percentile(cells, .95):.2f}", "p50 < 2 ms",
                     "met" if p50 < 2 else "MISSED"))

        for concurrency in (1, 8, 32):
            rate = await throughput(sandbox, concurrency, total=max(200, n * 2))
            target, verdict = ("", "")
            if concurrency == 8:
                target, verdict = ">= 300 /s", "met" if rate >= 300 else "MISSED"
            rows.append((f"throughput, {concurrency} in flight", f"{rate:.0f} cmds/s", target,
                         verdict))

    cold = await timed(lambda: _cold_start(spec, backend), max(5, n // 40))
    rows.append(("cold create+start p50 / p95 ms",
                 f"{percentile(cold, .5):.0f} / {percentile(cold, .95):.0f}", "baseline", ""))
    async with SandboxPool(spec, size=4, backend=backend) as pool:
        warm = []
        for _ in range(max(10, n // 20)):
            while pool.ready < pool.size:
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            async with pool.acquire():
                warm.append((time.perf_counter() - start) * 1e3)
        p50 = percentile(warm, .5)
        rows.append(("pool acquire() p50 / p95 ms",
                     f"{p50:.2f} / {percentile(warm, .95):.2f}", "p50 < 20 ms",
                     "met" if p50 < 20 else "MISSED"))

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"load average (1 min): {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} "
          "at the end")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'gymbox':>16}  {'target':>12}  result")
    for name, value, target, verdict in rows:
        print(f"{name:<{width}}  {value:>16}  {target:>12}  {verdict}")


async def _cold_start(spec: SandboxSpec, backend: DockerBackend) -> None:
    async with await Sandbox.open(spec, backend=backend) as sandbox:
        await sandbox.exec(["true"], timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400, help="samples per latency figure")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args().n))
