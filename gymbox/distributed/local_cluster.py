"""A multi-node Ray cluster on loopback, for tests and benchmarks on one machine.

Each node is a ``ray start`` run in its own process session with its own environment (so a
node's ``DOCKER_HOST`` is the engine its actors reach) and its own custom resources. Stopping
signals those sessions' process groups only: other Ray clusters on the machine, and ``ray stop``'s
machine-wide sweep, are never involved.

Example:
    >>> with LocalCluster(port=46379) as cluster:  # doctest: +SKIP
    ...     cluster.add_node(resources={"gymbox_engine_e1": 1},
    ...                      env={"DOCKER_HOST": "unix:///work/engines/gymbox/1/docker.sock"})
    ...     ray.init(address=cluster.address)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from gymbox.runtime.errors import ConfigurationError


def ray_cli() -> str:
    """The ``ray`` command next to this interpreter (a venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        raise ConfigurationError("the `ray` command is missing: pip install 'ray==2.60.0'")
    return found


class LocalCluster:
    """A head node and worker nodes on 127.0.0.1, each a ``ray start`` process group.

    Args:
        port: the head's GCS port (pick a free one; tests use a random port).
        object_store_mb: each node's object store (small: the data sent is small).
        temp_dir: Ray's session files; a new temporary directory when None.
    """

    def __init__(self, *, port: int, object_store_mb: int = 80,
                 temp_dir: str | None = None) -> None:
        self.port = port
        self.object_store_mb = object_store_mb
        self._own_temp = temp_dir is None
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="gymbox-ray-")
        self._groups: list[int] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, head_resources: Mapping[str, float] | None = None,
              env: Mapping[str, str] | None = None) -> None:
        """Start the head node (no CPUs for tasks: the driver runs beside it)."""
        self._ray_start(["--head", f"--port={self.port}", "--include-dashboard=false",
                         f"--temp-dir={self.temp_dir}"], head_resources or {}, env, num_cpus=0)

    def add_node(self, *, resources: Mapping[str, float], env: Mapping[str, str] | None = None,
                 num_cpus: int = 1) -> None:
        """Start a worker node that advertises ``resources`` and runs with ``env`` on top of
        this process's environment."""
        self._ray_start([f"--address={self.address}"], resources, env, num_cpus=num_cpus)

    def _ray_start(self, args: list[str], resources: Mapping[str, float],
                   env: Mapping[str, str] | None, *, num_cpus: int) -> None:
        command = [ray_cli(), "start", *args, "--node-ip-address=127.0.0.1",
                   f"--num-cpus={num_cpus}",
                   f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
                   f"--resources={json.dumps(dict(resources))}", "--disable-usage-stats"]
        environment = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0"}
        process = subprocess.Popen(command, env=environment, start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._groups.append(process.pid)  # the session's processes share this group id
        output, _ = process.communicate(timeout=300)
        if process.returncode != 0:
            raise ConfigurationError(f"`ray start` failed ({process.returncode}):\n"
                                     + output[-3000:])

    def stop(self) -> None:
        """SIGTERM each node's process group, then SIGKILL what is left after a few seconds."""
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
            for group in reversed(self._groups):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(map(_group_alive, self._groups)):
                time.sleep(0.2)
        self._groups.clear()
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
