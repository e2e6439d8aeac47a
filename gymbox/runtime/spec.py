"""SandboxSpec: every isolation default in one typed place."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gymbox.runtime.errors import InvalidRequest
from gymbox.runtime.image import DEFAULT_IMAGE, SANDBOX_UID, WORKSPACE

MiB = 2**20
INODES_PER_MB = 64
"""Inodes a tmpfs may hold per MiB of its size (a cap on many small files)."""
INODE_COST_KIB = 1
"""About what one tmpfs inode with its dentry costs the kernel, charged to the memory cgroup."""


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

    Memory — the supervisor must outlive anything the agent does inside its limits:

    * Every writable mount is a size-capped tmpfs (``/workspace``, ``/tmp``, ``/dev/shm``), with
      an inode cap (:data:`INODES_PER_MB` per MiB of size, each costing the kernel about
      :data:`INODE_COST_KIB` KiB that the memory cgroup is charged for). Their sizes and inode
      costs together must leave ``supervisor_reserve_mb`` of ``memory_mb`` free: tmpfs pages
      belong to no process, so an OOM kill cannot free them, and a full tmpfs would otherwise
      leave the kernel nothing to kill but the supervisor. SysV shared memory is capped to
      ``shm_mb`` and removed with its last user, for the same reason.
    * Agent processes run with ``oom_score_adj`` 1000: when the memory cgroup is full the
      kernel kills them first. (Making it a floor the agent cannot lower would take
      ``CAP_SYS_RESOURCE``, which many engines cannot grant; an agent that lowers it and then
      takes the supervisor down is seen doing so: the engine reports the OOM kill, and the
      failure is the agent's.) In a container they run at nice 10 too: within the sandbox's CPU
      share the supervisor comes first, so a fork bomb on a loaded host cannot starve its
      answers.

    Attributes:
        image: the image to run; needs ``python3`` for the fast path.
        network_mode: the container's network; ``"none"`` leaves loopback only.
        read_only_root: mount the image's file system read-only.
        workspace_mb: size cap of the tmpfs at ``/workspace`` (the agent's working directory);
            by default half of ``memory_mb``.
        tmp_mb: size cap of the tmpfs at ``/tmp``; by default an eighth of ``memory_mb``.
        shm_mb: size cap of ``/dev/shm`` and of SysV shared memory; by default a sixteenth.
        supervisor_reserve_mb: memory the tmpfs mounts may never take, kept for the
            supervisor and the lease loop; by default an eighth of ``memory_mb``, at least 32.
        hostname: the container's hostname, the same in every sandbox (a replacement must
            look like the sandbox it replaces).
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
        max_timeout_s: the longest deadline a call may ask for (a larger one is
            ``InvalidRequest``).
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
    workspace_mb: int | None = None
    tmp_mb: int | None = None
    shm_mb: int | None = None
    supervisor_reserve_mb: int | None = None
    hostname: str = "sandbox"
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
    max_timeout_s: float = 3600.0
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
        memory = self.memory_mb
        if isinstance(memory, int) and memory > 0:
            defaults = {"workspace_mb": max(1, memory // 2), "tmp_mb": max(1, memory // 8),
                        "shm_mb": max(1, memory // 16),
                        "supervisor_reserve_mb": max(32, memory // 8)}
            for name, value in defaults.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)  # frozen: set once, here
        positive = {
            "memory_mb": self.memory_mb,
            "workspace_mb": self.workspace_mb, "tmp_mb": self.tmp_mb, "shm_mb": self.shm_mb,
            "max_timeout_s": self.max_timeout_s,
            "pids_limit": self.pids_limit, "cpus": self.cpus,
            "nofile": self.nofile, "fsize_mb": self.fsize_mb,
            "output_cap_bytes": self.output_cap_bytes, "read_limit_bytes": self.read_limit_bytes,
            "default_timeout_s": self.default_timeout_s, "lease_s": self.lease_s,
            "backstop_margin_s": self.backstop_margin_s,
            "liveness_probe_s": self.liveness_probe_s,
        }
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidRequest(f"SandboxSpec.{name} must be a positive number, got {value!r}")
        reserve = self.supervisor_reserve_mb
        if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
            raise InvalidRequest(
                f"SandboxSpec.supervisor_reserve_mb must be an int >= 0, got {reserve!r}")
        if not (isinstance(self.hostname, str) and self.hostname.replace("-", "").isalnum()
                and len(self.hostname) <= 63):
            raise InvalidRequest(
                f"SandboxSpec.hostname must be letters, digits and '-', got {self.hostname!r}")
        if self.default_timeout_s > self.max_timeout_s:
            raise InvalidRequest(
                f"SandboxSpec.default_timeout_s ({self.default_timeout_s:g}) is over "
                f"max_timeout_s ({self.max_timeout_s:g})")
        held = self.tmpfs_memory_mb
        if held > memory - reserve:
            raise InvalidRequest(
                f"SandboxSpec: the tmpfs mounts (workspace {self.workspace_mb} + tmp "
                f"{self.tmp_mb} + shm {self.shm_mb} MiB, with their inodes {held:.0f} MiB) "
                f"must fit in memory_mb ({memory}) minus supervisor_reserve_mb ({reserve}): "
                "tmpfs pages belong to no process, and a full tmpfs would leave the kernel "
                "nothing to kill but the supervisor. Make them smaller or memory_mb larger")
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise InvalidRequest(f"SandboxSpec.grace_s must be >= 0, got {self.grace_s!r}")
        if self.lease_s < 5:
            raise InvalidRequest(
                f"SandboxSpec.lease_s must be at least 5 s (renewals go every third of it), "
                f"got {self.lease_s!r}"
            )

    @property
    def tmpfs(self) -> dict[str, int]:
        """Each writable tmpfs mount point and its size cap in MiB."""
        return {WORKSPACE: int(self.workspace_mb or 0), "/tmp": int(self.tmp_mb or 0),
                "/dev/shm": int(self.shm_mb or 0)}

    @property
    def tmpfs_memory_mb(self) -> float:
        """The most memory the tmpfs mounts can hold: their sizes and their inodes' cost."""
        size = sum(self.tmpfs.values())
        return size + size * INODES_PER_MB * INODE_COST_KIB / 1024

    @property
    def workdir(self) -> str:
        """The agent's working directory inside a container."""
        return WORKSPACE
