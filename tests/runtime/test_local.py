"""Backend selection: Docker unless the local backend is asked for by name, never a fallback."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import asyncio
from gymbox.runtime import EngineUnavailable, Sandbox, select_backend
async def main():
    try:
        backend = select_backend()
    except EngineUnavailable as exc:
        print("EngineUnavailable:", exc)
        return
    print(type(backend).__name__)
    async with await Sandbox.open(backend=backend) as sandbox:
        print((await sandbox.exec("echo works", timeout=10)).stdout.strip())
asyncio.run(main())
"""
NO_ENGINE = "unix:///nonexistent/docker.sock"


def run(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "GYMBOX_BACKEND"}
    return subprocess.run([sys.executable, "-c", SCRIPT], env={**environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_an_engine_that_does_not_answer_is_engine_unavailable_with_the_fix_not_a_fallback():
    result = run(DOCKER_HOST=NO_ENGINE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("EngineUnavailable: no Docker engine answers at "
                                    f"{NO_ENGINE}")
    assert "GYMBOX_BACKEND=local" in result.stdout and "point DOCKER_HOST" in result.stdout
    assert "LocalBackend" not in result.stdout and "works" not in result.stdout


def test_the_local_backend_asked_for_by_name_runs_with_a_loud_warning():
    result = run(DOCKER_HOST=NO_ENGINE, GYMBOX_BACKEND="local")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["LocalBackend", "works"]
    assert "NOT a security boundary" in result.stderr


def test_an_unknown_backend_name_is_refused():
    result = run(GYMBOX_BACKEND="kubernetes")
    assert result.returncode != 0 and "unknown backend 'kubernetes'" in result.stderr
