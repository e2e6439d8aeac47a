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
