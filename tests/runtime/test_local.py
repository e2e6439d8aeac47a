"""LocalBackend: chosen when no engine answers, and loud about not being a security boundary."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import asyncio
from gymbox.runtime import Sandbox, select_backend
async def main():
    backend = select_backend()
    print(type(backend).__name__)
    async with await Sandbox.open(backend=backend) as sandbox:
        print((await sandbox.exec("echo works", timeout=10)).stdout.strip())
asyncio.run(main())
"""


def test_no_engine_falls_back_to_local_with_a_loud_warning():
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["LocalBackend", "works"]
    assert "falling back to LocalBackend" in run.stderr
    assert "NOT a security boundary" in run.stderr
