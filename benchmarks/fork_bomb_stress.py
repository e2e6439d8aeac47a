"""A fork bomb, then the agent's next call, round after round on a loaded host.

Run: ``python benchmarks/fork_bomb_stress.py --rounds 100 --busy 6`` (needs the Docker engine
and the sandbox image).

Each round, in one warm sandbox with the adversarial tests' small spec (256 MB, 4 s default
timeout), the agent writes a file, runs the red team's crash (fill every tmpfs, allocate past the
memory limit, a fork bomb) in a 2 s call, then reads the file back from the persistent
interpreter in a 2 s call. ``--busy`` plain busy loops run on the host meanwhile, for load.

The supervisor must outlive every round and serve the next call: the read comes back ``6``. What
else can come back is counted by kind: "process limit" (the call's start met a limit still full
of the bomb's remains), "timed out" (the call's 2 s ran out first: the agent's time), and an
infrastructure error by its type (``SandboxUnresponsive``: no answer within the host's backstop;
the sandbox must never give one). The load average is printed with the counts, since the
outcome depends on it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the attack lives with its tests

from gymbox.runtime import DockerBackend, InfraError, SandboxPool
from tests.adversarial.test_runtime_attacks import CRASH, SPEC_SMALL

CALL_TIMEOUT_S = 2.0


async def one_round(sandbox) -> str:
    try:
        await sandbox.exec("echo 6 > a.txt", timeout=CALL_TIMEOUT_S)
        await sandbox.exec(f"{CRASH}; echo done", timeout=CALL_TIMEOUT_S)
        read = await sandbox.run_python("print(open('a.txt').read().strip())",
                                        timeout=CALL_TIMEOUT_S)
    except InfraError as exc:
        return type(exc).__name__
    if read.stdout.strip() == "6":
        return "served"
    if "process limit" in read.stderr:
        return "process limit"
    return "timed out" if read.timed_out else f"other (exit {read.exit_code})"


async def main(rounds: int) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    async with SandboxPool(SPEC_SMALL, size=1, backend=DockerBackend()) as pool:
        for n in range(1, rounds + 1):
            async with pool.acquire() as sandbox:
                outcomes[await one_round(sandbox)] += 1
            if n % 10 == 0 or n == rounds:
                print(f"[fork_bomb_stress] {n}/{rounds} rounds: {dict(outcomes)}; "
                      f"load {os.getloadavg()[0]:.0f}", flush=True)
    return outcomes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--busy", type=int, default=6, help="host busy loops beside it")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    started = time.monotonic()
    try:
        counts = asyncio.run(main(args.rounds))
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
    print(f"[fork_bomb_stress] {args.rounds} rounds with {args.busy} busy loops in "
          f"{time.monotonic() - started:.0f} s: served {counts['served']}, "
          f"other outcomes {dict(counts - collections.Counter(served=counts['served']))}")
    sys.exit(0 if counts["served"] == args.rounds else 1)
