"""SandboxSpec validation and backend selection."""

from __future__ import annotations

import pytest

from gymbox.runtime import (
    DockerBackend,
    InvalidRequest,
    LocalBackend,
    SandboxSpec,
    select_backend,
)


def test_defaults_are_the_locked_down_ones():
    spec = SandboxSpec()
    assert spec.network_mode == "none" and spec.read_only_root and spec.no_new_privileges
    assert spec.cap_add == ("SETUID", "SETGID", "KILL") and spec.init
    assert spec.agent_uid == 1000 and spec.workdir == "/workspace"


@pytest.mark.parametrize("field, value", [
    ("memory_mb", 0), ("pids_limit", -1), ("default_timeout_s", float("nan")),
    ("output_cap_bytes", 0), ("grace_s", -1.0), ("lease_s", 1), ("cpus", float("inf")),
])
def test_invalid_values_are_rejected_with_the_field_named(field, value):
    with pytest.raises(InvalidRequest, match=field):
        SandboxSpec(**{field: value})


def test_spec_is_immutable():
    with pytest.raises(AttributeError):
        SandboxSpec().memory_mb = 1  # type: ignore[misc]


@pytest.mark.docker
def test_select_backend_prefers_a_reachable_engine():
    assert isinstance(select_backend(), DockerBackend)


def test_explicit_backend_choice():
    assert isinstance(select_backend("local"), LocalBackend)
    assert isinstance(select_backend("docker"), DockerBackend)
    with pytest.raises(InvalidRequest, match="docker"):
        select_backend("kubernetes")  # type: ignore[arg-type]


def test_tmpfs_mounts_default_to_fit_below_memory_minus_the_supervisor_reserve():
    for memory in (128, 256, 512, 4096):
        spec = SandboxSpec(memory_mb=memory)
        assert set(spec.tmpfs) == {"/workspace", "/tmp", "/dev/shm"}
        assert spec.tmpfs_memory_mb <= memory - spec.supervisor_reserve_mb
    assert SandboxSpec().tmpfs == {"/workspace": 256, "/tmp": 64, "/dev/shm": 32}


@pytest.mark.parametrize("sizes", [
    {"memory_mb": 64, "workspace_mb": 256},
    {"memory_mb": 512, "workspace_mb": 300, "tmp_mb": 100, "shm_mb": 50},
    {"memory_mb": 128, "supervisor_reserve_mb": 128},
])
def test_tmpfs_that_could_starve_the_supervisor_is_rejected(sizes):
    with pytest.raises(InvalidRequest, match=r"must fit in memory_mb .* minus supervisor_reserve"):
        SandboxSpec(**sizes)


@pytest.mark.parametrize("field, value", [
    ("hostname", "a b"), ("hostname", ""), ("supervisor_reserve_mb", -1),
    ("max_timeout_s", float("inf")), ("default_timeout_s", 7200.0),
])
def test_the_new_limits_are_checked(field, value):
    with pytest.raises(InvalidRequest, match=field):
        SandboxSpec(**{field: value})
