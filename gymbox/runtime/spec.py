"""SandboxSpec: every isolation default in one typed place."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gymbox.runtime.errors import InvalidRequest
from gymbox.runtime.image import DEFAULT_IMAGE, SANDBOX_UID, WORKSPACE

MiB = 2**20


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """How a sandbox is built and how its commands are bounded. Every field has a safe default.

    Privileges — who can do what inside the container:

    * The supervisor runs as root but with every capability dropped except ``SETUID`` and
      ``SETGID`` (to start commands as the agent) and ``KILL`` (to signal the agent's processes).
      It needs a uid of its own: the agent may run ``kill -9 -1``, which reaches every process of
      its own uid, so a supervisor sharing the agent's uid would die with it.
    * Agent commands run as ``agent_uid`` (the image's ``sandbox`` user). A switch from root to a
      non-zero uid clears the permitted capability set, so the agent holds no capability at all;
      ``no-new-privileges`` stops it regaining any through a setuid binary or file capabilities.
      It cannot signal the supervisor, write the lease, or write outside ``/workspace`` and
      ``/tmp`` (the root file system is read-only).

    Attributes:
        image: the image to run; needs ``python3`` for the fast path.
        network_mode: the container's network; ``"none"`` leaves loopback only.
        read_only_root: mount the image's file system read-only.
        workspace_mb: size cap of the tmpfs at ``/workspace`` (the agent's working directory).
        tmp_mb: size cap of the tmpfs at ``/tmp``.
        cap_add: capabilities kept for the supervisor; everything else is dropped.
        no_new_privileges: forbid gaining privileges through execve.
        pids_limit: most processes and threads in the container (fork bombs stop here).
        memory_mb: memory limit; swap is forbidden (memory+swap equals this).
        cpus: CPU quota in cores.
        nofile: open-file limit per process.
        fsize_mb: largest file a process may write.
        init: run a minimal init as PID 1 that reaps orphans.
        agent_uid: the uid (and gid) that agent commands run as.
        output_cap_bytes: bytes of stdout and of stderr kept per command (head and tail).
        read_limit_bytes: largest file :meth:`Sandbox.read_file` returns.
        default_timeout_s: the deadline of a command when the call gives none.
        grace_s: time between SIGTERM and SIGKILL when a deadline passes.
        lease_s: the container exits this long after the host last renewed its lease.
        backstop_margin_s: how long past ``timeout + grace_s`` the host waits for an answer
            before declaring the supervisor unresponsive.
        liveness_probe_s: about how long a call waits on a paused sandbox before it fails with
            ``SandboxUnresponsive`` (instead of waiting for its backstop): a supervisor silent
            for half of it is pinged, and a ping unanswered for the other half makes the host
            ask the engine, whose word alone ends the call early. The supervisor answers pings
            while commands run, so a slow command is never taken for a hang.
        env: environment variables every command starts with.
        labels: extra container labels (gymbox adds its own).

    Example:
        >>> spec = SandboxSpec(memory_mb=256, default_timeout_s=10)
        >>> spec.memory_mb, spec.network_mode
        (256, 'none')
    """

    image: str = DEFAULT_IMAGE
    network_mode: str = "none"
    read_only_root: bool = True
    workspace_mb: int = 256
    tmp_mb: int = 64
    cap_add: tuple[str, ...] = ("SETUID", "SETGID", "KILL")
    no_new_privileges: bool = True
    pids_limit: int = 256
    memory_mb: int = 512
    cpus: float = 1.0
    nofile: int = 1024
    fsize_mb: int = 256
    init: bool = True
    agent_uid: int = SANDBOX_UID
    output_cap_bytes: int = 64 * 1024
    read_limit_bytes: int = 16 * MiB
    default_timeout_s: float = 30.0
    grace_s: float = 2.0
    lease_s: float = 60.0
    backstop_margin_s: float = 5.0
    liveness_probe_s: float = 0.5
    env: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/home/sandbox",
            "USER": "sandbox",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        })
    )
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        positive = {
            "workspace_mb": self.workspace_mb, "tmp_mb": self.tmp_mb,
            "pids_limit": self.pids_limit, "memory_mb": self.memory_mb, "cpus": self.cpus,
            "nofile": self.nofile, "fsize_mb": self.fsize_mb,
            "output_cap_bytes": self.output_cap_bytes, "read_limit_bytes": self.read_limit_bytes,
            "default_timeout_s": self.default_timeout_s, "lease_s": self.lease_s,
            "backstop_margin_s": self.backstop_margin_s,
            "liveness_probe_s": self.liveness_probe_s,
        }
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidRequest(f"SandboxSpec.{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise InvalidRequest(f"SandboxSpec.grace_s must be >= 0, got {self.grace_s!r}")
        if self.lease_s < 5:
            raise InvalidRequest(
                f"SandboxSpec.lease_s must be at least 5 s (renewals go every third of it), "
                f"got {self.lease_s!r}"
            )

    @property
    def workdir(self) -> str:
        """The agent's working directory inside a container."""
        return WORKSPACE
