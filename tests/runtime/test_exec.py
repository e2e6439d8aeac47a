"""Sandbox.exec against both backends: outcomes are values, deadlines hold, output is capped."""

from __future__ import annotations

import asyncio
import time

import pytest

from gymbox.runtime import ExecResult, InfraError, InvalidRequest


async def test_shell_string_and_argv(sandbox):
    result = await sandbox.exec("echo out; echo err >&2; exit 3", timeout=10)
    assert isinstance(result, ExecResult)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok and not result.timed_out and not result.truncated
    argv = await sandbox.exec(["printf", "%s|", "a b", "$HOME"], timeout=10)
    assert argv.stdout == "a b|$HOME|"  # argv is not shell-interpreted


async def test_runs_as_the_agent_in_its_workspace(sandbox):
    result = await sandbox.exec("id -u; pwd", timeout=10)
    assert result.stdout.split() == ["1000", sandbox.workdir]


async def test_the_agent_yields_the_cpu_to_the_supervisor_only_inside_a_container(
        sandbox, backend):
    # In a container niceness weighs only within its cgroup: the supervisor comes first, and
    # nothing outside loses. On the host it would weigh against every process (the trainer's
    # too), and time-outs it caused would be scored: the local backend leaves it alone.
    nice = "10\n" if backend.name == "docker" else "0\n"
    assert (await sandbox.exec("nice", timeout=10)).stdout == nice
    assert (await sandbox.run_python("import os; print(os.nice(0))", timeout=10)).stdout == nice


async def test_cwd_env_and_stdin(sandbox):
    await sandbox.exec("mkdir -p sub", timeout=10)
    for cwd in (f"{sandbox.workdir}/sub", "sub"):
        assert (await sandbox.exec("pwd", cwd=cwd, timeout=10)).stdout.strip() \
            == f"{sandbox.workdir}/sub"
    assert (await sandbox.exec("echo $GREETING", env={"GREETING": "hi"}, timeout=10)).stdout \
        == "hi\n"
    echoed = await sandbox.exec(["cat"], stdin=b"\x00binary\xff" * 50_000, timeout=10)
    assert echoed.stdout_bytes == 8 * 50_000
    # Without stdin a reader sees EOF at once instead of hanging until the deadline.
    assert (await sandbox.exec(["cat"], timeout=10)).ok


async def test_missing_program_and_cwd_are_outcomes(sandbox):
    missing = await sandbox.exec(["no-such-program"], timeout=10)
    assert missing.exit_code == 127 and "no-such-program" in missing.stderr
    bad_cwd = await sandbox.exec(["true"], cwd="/no/such/dir", timeout=10)
    assert bad_cwd.exit_code == 126 and "/no/such/dir" in bad_cwd.stderr


async def test_never_ending_command_is_killed_at_its_deadline(sandbox):
    start = time.monotonic()
    result = await sandbox.exec("sleep 600", timeout=0.5)
    assert result.timed_out and not result.ok
    assert result.signal == 15  # SIGTERM was enough
    assert time.monotonic() - start < 3
    assert (await sandbox.exec("echo next", timeout=10)).stdout == "next\n"


async def test_term_ignoring_command_is_killed_after_the_grace(sandbox):
    result = await sandbox.exec("trap '' TERM; while :; do :; done", timeout=0.5)
    assert result.timed_out and result.signal == 9
    grace = sandbox.spec.grace_s
    assert 0.5 + grace <= result.duration_s < 0.5 + grace + 1.5
    assert (await sandbox.exec("echo next", timeout=10)).ok


async def test_background_child_holding_the_pipes_does_not_block(sandbox):
    start = time.monotonic()
    result = await sandbox.exec("sleep 300 & echo $!", timeout=30)
    assert result.ok and time.monotonic() - start < 3
    pid = result.stdout.strip()
    # The sweep after the command killed the leftover child.
    assert (await sandbox.exec(f"test -e /proc/{pid}", timeout=10)).exit_code == 1


async def test_huge_output_is_capped_with_exact_totals(sandbox):
    total = 120 * 2**20
    result = await sandbox.exec(f"head -c {total} /dev/zero | tr '\\0' x", timeout=60)
    assert result.ok and result.truncated
    assert result.stdout_bytes == total
    assert len(result.stdout) < sandbox.spec.output_cap_bytes + 200
    assert (await sandbox.exec("echo next", timeout=10)).stdout == "next\n"


async def test_capped_output_keeps_head_and_tail(sandbox):
    result = await sandbox.exec("seq 1 200000", timeout=30)
    assert result.truncated and result.stdout.startswith("1\n2\n3\n")
    assert result.stdout.endswith("199999\n200000\n") and "bytes omitted" in result.stdout
    assert result.stdout_bytes == sum(len(f"{i}\n") for i in range(1, 200001))


async def test_concurrent_commands_on_one_sandbox(sandbox):
    start = time.monotonic()
    results = await asyncio.gather(*(sandbox.exec(f"sleep 0.3; echo {i}", timeout=10)
                                     for i in range(12)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(12)]
    assert time.monotonic() - start < 3  # they ran side by side, not one after another


@pytest.mark.parametrize("cmd", ["", "   ", [], [""], ["echo", "a\0b"], "echo \0", ("x", 3), b"ls"])
async def test_malformed_commands_are_rejected_before_running(sandbox, cmd):
    with pytest.raises(InvalidRequest) as caught:
        await sandbox.exec(cmd, timeout=5)
    assert not isinstance(caught.value, InfraError)
    assert (await sandbox.exec("echo still-serving", timeout=10)).ok


@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), float("inf"), True, "5"])
async def test_bad_timeouts_are_rejected_and_nothing_runs(sandbox, timeout):
    with pytest.raises(InvalidRequest, match="timeout"):
        await sandbox.exec("touch ran", timeout=timeout)
    assert (await sandbox.exec("test -e ran", timeout=10)).exit_code == 1


async def test_bad_env_and_cwd_are_rejected(sandbox):
    with pytest.raises(InvalidRequest):
        await sandbox.exec("true", env={"A=B": "x"}, timeout=5)
    with pytest.raises(InvalidRequest):
        await sandbox.exec("true", env={"A": "x\0"}, timeout=5)
    with pytest.raises(InvalidRequest):
        await sandbox.exec("true", cwd="/tmp\0", timeout=5)


async def test_fork_bomb_is_contained_and_cleaned_up(sandbox):
    result = await sandbox.exec("bomb() { bomb | bomb & }; bomb; sleep 1", timeout=3)
    assert "fork" in result.stderr.lower() or result.timed_out
    left = await sandbox.exec("ls /proc | grep -c '^[0-9]'", timeout=10)
    assert int(left.stdout) < 12  # the supervisor, its init or lease loop, and this command
    assert (await sandbox.exec("echo serving", timeout=10)).ok
