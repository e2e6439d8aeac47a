"""LocalBackend: the same supervisor as a host subprocess, for machines without an engine.

**Not a security boundary.** Inside bubblewrap (``bwrap``, when installed) the supervisor gets a
read-only view of the host, a private ``/tmp``, its own pid namespace and no network; without
bwrap it is a plain child process in a temporary directory. Commands run as
``SandboxSpec.agent_uid`` when the host process is root, else as the host user. Memory, file
and process limits are rlimits, not cgroups, so OOM kills are not reported. Use it for development
and tests of untrusted-looking but trusted code only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from gymbox.runtime import cleanup
from gymbox.runtime.attribution import Evidence, Record
from gymbox.runtime.backend import InstanceState
from gymbox.runtime.errors import ConfigurationError, SandboxStartError
from gymbox.runtime.spec import MiB, SandboxSpec

log = logging.getLogger(__name__)

WARNING = (
    "gymbox LocalBackend runs agent code as a host process: it is NOT a security boundary "
    "(no container, no cgroup limits). Start a Docker engine for real isolation."
)
BWRAP_WORKDIR = "/tmp/workspace"
# Passed with -c rather than by path, and run by the interpreter's real path: bubblewrap mounts
# a fresh /tmp, which hides a checkout or a virtualenv that lives there.
SUPERVISOR_SOURCE = (Path(__file__).parent / "supervisor.py").read_text()
HOST_PYTHON = os.path.realpath(sys.executable)


class LocalLink:
    """The supervisor subprocess's stdout and stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    async def read(self) -> bytes:
        assert self._proc.stdout is not None
        return await self._proc.stdout.read(1 << 16)

    def write(self, data: bytes) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            raise ConnectionError("the supervisor's stdin is closed")
        stdin.write(data)

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()


class LocalInstance:
    """A supervisor subprocess and its temporary workspace."""

    def __init__(self, proc: asyncio.subprocess.Process, workdir: str, host_dir: str) -> None:
        self.id = f"local-{proc.pid}"
        self.workdir = workdir
        self.link = LocalLink(proc)
        self._proc = proc
        self._host_dir = host_dir

    async def state(self) -> InstanceState:
        return InstanceState.RUNNING if self._proc.returncode is None else InstanceState.EXITED

    async def postmortem(self, since: float) -> Evidence:
        """No engine watches a host process: the record is only whether it still runs."""
        code = self._proc.returncode
        return Evidence(record=Record(status="running" if code is None else "exited",
                                      exit_code=code, dead=code is not None))

    async def destroy(self) -> None:
        self.link.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 2.0)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        shutil.rmtree(self._host_dir, ignore_errors=True)
        cleanup.unregister(self.id)

    def destroy_now(self) -> None:
        if self._proc.returncode is None:
            os.kill(self._proc.pid, signal.SIGKILL)
        shutil.rmtree(self._host_dir, ignore_errors=True)


class LocalBackend:
    """Runs the supervisor as a host subprocess (in bubblewrap when ``bwrap`` is installed).

    Warns once per process, loudly, that this is not a security boundary.

    Example:
        >>> backend = LocalBackend()  # doctest: +SKIP
    """

    name = "local"
    _warned = False

    def __init__(self, *, use_bwrap: bool | None = None) -> None:
        self.bwrap = shutil.which("bwrap") if use_bwrap is not False else None
        if use_bwrap and self.bwrap is None:
            raise ConfigurationError("use_bwrap=True but bwrap is not installed: apt install "
                                     "bubblewrap, or pass use_bwrap=None")

    async def launch(self, spec: SandboxSpec) -> LocalInstance:
        if not LocalBackend._warned:
            LocalBackend._warned = True
            warnings.warn(WARNING, RuntimeWarning, stacklevel=2)
            log.warning(WARNING)
        host_dir = tempfile.mkdtemp(prefix="gymbox-local-")
        as_root = os.geteuid() == 0
        if as_root:
            os.chown(host_dir, spec.agent_uid, spec.agent_uid)
        workdir = BWRAP_WORKDIR if self.bwrap else host_dir
        config = {
            "agent_uid": spec.agent_uid if as_root else None,
            "agent_gid": spec.agent_uid if as_root else None,
            "workdir": workdir,
            "env": {**spec.env, "HOME": workdir},
            "python": _agent_python() if as_root else HOST_PYTHON,
            "lease_path": None,
            # Sweeping the agent's uid is only safe in a pid namespace of our own.
            "sweep_uid": self.bwrap is not None,
            "oom_events": False,
        }
        argv = [HOST_PYTHON, "-I", "-c", SUPERVISOR_SOURCE, json.dumps(config)]
        if self.bwrap:
            argv = [
                self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--tmpfs", "/tmp", "--bind", host_dir, BWRAP_WORKDIR,
                "--unshare-pid", "--unshare-net", "--die-with-parent", "--", *argv,
            ]
        limits = _limits(spec, spec.agent_uid if as_root else os.getuid())
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=2**24,
                preexec_fn=lambda: _apply_limits(limits),
            )
        except OSError as exc:
            shutil.rmtree(host_dir, ignore_errors=True)
            raise SandboxStartError(f"could not start the local supervisor: {exc}",
                                    cause=exc) from exc
        instance = LocalInstance(proc, workdir, host_dir)
        cleanup.register(instance.id, instance.destroy_now)
        return instance


def _agent_python() -> str:
    """A python3 the agent's uid can run: ours may sit under root's home (pyenv)."""
    for candidate in (HOST_PYTHON, shutil.which("python3", path="/usr/local/bin:/usr/bin")):
        if candidate and _world_executable(candidate):
            return candidate
    raise ConfigurationError("no python3 that an unprivileged user can run: install the "
                             "system python3 (apt install python3)")


def _world_executable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    if not real.is_file() or not real.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)


def _limits(spec: SandboxSpec, uid: int) -> dict[int, int]:
    """rlimits standing in for the container's cgroup limits (inherited by every command).

    ``RLIMIT_NPROC`` counts every process of a uid on the machine, so the agent gets
    ``pids_limit`` more than that uid already runs: a fork bomb stops there instead of taking
    the host down.
    """
    running = sum(1 for pid in os.listdir("/proc") if pid.isdigit() and _owner(pid) == uid)
    return {
        resource.RLIMIT_AS: spec.memory_mb * MiB * 4,  # address space, not RSS: room for maps
        resource.RLIMIT_NOFILE: spec.nofile,
        resource.RLIMIT_FSIZE: spec.fsize_mb * MiB,
        resource.RLIMIT_NPROC: running + spec.pids_limit,
    }


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _apply_limits(limits: dict[int, int]) -> None:
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))
