"""A real scale-out rig: extra Docker engines (scripts/engines.sh) and a loopback Ray cluster
with one worker node per engine, started once per session and stopped by what started them.

Engine ``i`` lives under ``$GYMBOX_TEST_ENGINES_DIR`` (default ``/work/engines/h14-test-<pid>``
or a temporary directory) and its Ray node advertises ``gymbox_engine_e<i>`` with that engine as
its ``DOCKER_HOST``. Nothing here touches the main engine except reading its sandbox image.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from gymbox.distributed import ScaleConfig, containers_on_engines, gc_engines  # noqa: E402
from gymbox.distributed.engines import EngineConfig  # noqa: E402
from gymbox.distributed.local_cluster import LocalCluster  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ENGINES_SH = REPO / "scripts" / "engines.sh"
ENGINES = 2
RESTART_CLEANUP_S = 60.0

pytestmark = pytest.mark.ray


@dataclass
class Rig:
    """The engines and the cluster of a test session."""

    engines_dir: Path
    cluster: LocalCluster
    count: int

    def host(self, i: int) -> str:
        return f"unix://{self.engines_dir}/{i}/docker.sock"

    def engine(self, i: int, *, pool_size: int = 2) -> EngineConfig:
        return EngineConfig(f"e{i}", resource=f"gymbox_engine_e{i}", pool_size=pool_size)

    def engines(self, *, pool_size: int = 2) -> list[EngineConfig]:
        return [self.engine(i, pool_size=pool_size) for i in range(1, self.count + 1)]

    def scale(self) -> ScaleConfig:
        return ScaleConfig(ray_address=self.cluster.address, engines=tuple(self.engines()))

    def assert_clean(self) -> None:
        """No gymbox container on any engine once a run is over and the reaper has run. A
        restarted engine removes its dead auto-remove containers itself, in its own time
        (seconds): allowed up to RESTART_CLEANUP_S."""
        empty = {e.name: [] for e in self.engines()}
        deadline = time.monotonic() + RESTART_CLEANUP_S
        while True:
            gc_engines(self.scale())
            left = containers_on_engines(self.scale())
            if left == empty or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert left == empty, left

    def script(self, *args: str) -> None:
        env = {**os.environ, "GYMBOX_ENGINES_DIR": str(self.engines_dir)}
        subprocess.run([str(ENGINES_SH), *map(str, args)], env=env, check=True, timeout=180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.fail("the ray tests start extra Docker engines: run them as root with dockerd "
                    "installed", pytrace=False)
    base = os.environ.get("GYMBOX_TEST_ENGINES_DIR")
    if base is None:
        parent = "/work/engines" if os.path.isdir("/work") else tempfile.gettempdir()
        base = f"{parent}/h14-test-{os.getpid()}"
    engines_dir = Path(base)
    cluster = LocalCluster(port=_free_port())
    rig = Rig(engines_dir, cluster, ENGINES)
    try:
        rig.script("start", ENGINES)
        cluster.start(env={"PYTHONPATH": str(REPO)})
        for i in range(1, ENGINES + 1):
            cluster.add_node(resources={f"gymbox_engine_e{i}": 1},
                             env={"DOCKER_HOST": rig.host(i), "PYTHONPATH": str(REPO)})
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield rig
    finally:
        ray.shutdown()
        cluster.stop()
        rig.script("stop")
        shutil.rmtree(engines_dir, ignore_errors=True)
