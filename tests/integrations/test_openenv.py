"""``gymbox serve``: gymbox envs over the OpenEnv protocol, driven by OpenEnv's own client on
loopback, with real sandboxes and a real injected fault. Every request is bounded by the
client's timeouts, and every server is stopped by the test that started it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("openenv", reason="the OpenEnv tests need openenv-core "
                    "(pip install openenv-core==0.3.0)")

from openenv.core import GenericEnvClient

from gymbox.envs.builtin.calculator import calculate
from gymbox.integrations.openenv import GymboxServer
from gymbox.runtime import DockerBackend
from gymbox.runtime.faults import FaultInjector, FaultKind, FaultPlan
from tests.integrations.envs import ENV_ID

pytestmark = [pytest.mark.openenv, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
START_S = 120  # the pool's first sandboxes on a loaded engine
REQUEST_S = 60  # one reset or step, sandbox call and recovery included


@contextlib.contextmanager
def serving(server: GymboxServer) -> Iterator[str]:
    """The server on a thread of its own; stopped, and its thread joined, on exit."""
    ready: queue.Queue[str] = queue.Queue()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(on_ready=ready.put))
        except BaseException as exc:  # reported by the test, not lost on the thread
            failure.append(exc)
            ready.put("")

    thread = threading.Thread(target=run, name="openenv-server")
    thread.start()
    try:
        url = ready.get(timeout=START_S)
        assert url, f"the server failed to start: {failure}"
        yield url
    finally:
        server.stop()
        thread.join(timeout=START_S)
    assert not thread.is_alive(), "the server did not stop"
    assert not failure, failure


def client(url: str):
    return GenericEnvClient(base_url=url, connect_timeout_s=10,
                            message_timeout_s=REQUEST_S).sync()


@pytest.mark.docker
def test_an_infra_failure_reaches_the_client_as_unscorable_and_the_next_episode_is_scored():
    # The run's second sandbox request (the first episode's nonce write) is garbled; replaying
    # the nonce read cannot rebuild the sandbox, so that episode is masked.
    faults = FaultInjector(DockerBackend(), FaultPlan(scripted={2: FaultKind.GARBLE_RESPONSE}))
    server = GymboxServer(ENV_ID, port=0, max_sessions=2, pool_size=2, backend=faults)
    with serving(server) as url, client(url) as env:
        failed = env.reset(seed=3)
        assert failed.done and failed.reward is None
        assert failed.observation["status"] == "infra_failed"
        assert failed.observation["valid"] is False
        assert failed.observation["infra_error"] == "replay_diverged"
        with pytest.raises(RuntimeError, match="call reset"):
            env.step({"message": "hello"})

        fresh = env.reset(seed=3)
        assert not fresh.done and fresh.observation["valid"]
        assert fresh.observation["text"].startswith("What is ")
        scored = env.step({"message": "hello"})
        assert scored.done and scored.observation["status"] == "completed"
        assert scored.reward == pytest.approx(0.4)  # the vowels of "hello"
    assert [f.kind for f in faults.log] == [FaultKind.GARBLE_RESPONSE]
    assert server.sandboxes.metrics.masked == {"supervisor_fault": 1}


@pytest.mark.docker
def test_a_tool_call_runs_in_the_sandbox_and_a_right_answer_is_scored_over_the_protocol():
    server = GymboxServer("gymbox/PythonCalc-v0", port=0, max_sessions=1, pool_size=1)
    with serving(server) as url, client(url) as env:
        start = env.reset(seed=0, operations=1)
        assert [t["function"]["name"] for t in start.observation["tools"]] == ["python"]
        expression = start.observation["task_id"].split(":", 1)[1]
        call = {"name": "python", "arguments": {"code": f"print({expression})"}}
        ran = env.step({"message": f"<tool_call>{json.dumps(call)}</tool_call>"})
        assert not ran.done and ran.reward is None
        value = ran.observation["text"].strip()
        assert value == calculate(expression)
        done = env.step({"message": f"<answer>{value}</answer>"})
        assert done.done and done.reward == 1.0 and done.observation["valid"]
        with pytest.raises(RuntimeError, match="no reset option 'level'"):
            env.reset(level=2)


@pytest.mark.docker
@pytest.mark.parametrize(("stop_signal", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_gymbox_serve_serves_until_interrupted_and_removes_its_sandboxes(stop_signal, status):
    # Ctrl-C, or a process manager's SIGTERM: the shell's 128 + signal, as for `gymbox train`.
    # The session-wide leak check fails the run if the server's containers outlive it.
    command = [sys.executable, "-m", "gymbox.cli", "serve", "gymbox/PythonCalc-v0",
               "--port", "0", "--pool-size", "1"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = process.stdout.readline()
        assert line.startswith("serving gymbox/PythonCalc-v0 on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].split()[0]
        with client(url) as env:
            result = env.reset(seed=1)
            assert result.observation["status"] == "running" and not result.done
        process.send_signal(stop_signal)
        assert process.wait(timeout=REQUEST_S) == status
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
