"""Every argument is checked on the host before anything is sent: a bad one is InvalidRequest
saying what was wrong, nothing runs, and the sandbox stays usable (both backends)."""

from __future__ import annotations

import pytest

from gymbox.runtime import InvalidRequest

LONE = "\ud800"  # a lone surrogate: a Python str, but no UTF-8 can carry it


async def usable(sandbox) -> bool:
    return (await sandbox.exec("echo usable", timeout=10)).stdout == "usable\n"


@pytest.mark.parametrize("call, named", [
    (lambda s: s.exec(f"echo {LONE}", timeout=5), "command"),
    (lambda s: s.exec(["echo", f"a{LONE}"], timeout=5), r"argv\[1\]"),
    (lambda s: s.exec("true", env={"X": LONE}, timeout=5), r"env\['X'\]"),
    (lambda s: s.exec("true", env={f"X{LONE}": "1"}, timeout=5), "env name"),
    (lambda s: s.exec("true", cwd=f"/tmp/{LONE}", timeout=5), "cwd"),
    (lambda s: s.exec("cat", stdin=LONE, timeout=5), "stdin"),
    (lambda s: s.run_python(f"print('{LONE}')", timeout=5), "code"),
    (lambda s: s.write_file(f"f{LONE}.txt", "x"), "path"),
    (lambda s: s.write_file("f.txt", LONE), "data"),
    (lambda s: s.read_file(f"{LONE}"), "path"),
    (lambda s: s.list_dir(f"{LONE}"), "path"),
])
async def test_strings_the_wire_cannot_carry_are_refused_and_the_sandbox_stays_usable(
        sandbox, call, named):
    with pytest.raises(InvalidRequest, match=f"{named} contains '\\\\ud800'.*lone surrogate"):
        await call(sandbox)
    assert await usable(sandbox)


async def test_a_cell_with_a_lone_surrogate_does_not_wedge_the_interpreter(sandbox):
    assert (await sandbox.run_python("x = 41", timeout=10)).ok
    with pytest.raises(InvalidRequest):
        await sandbox.run_python(f"y = '{LONE}'", timeout=10)
    after = await sandbox.run_python("x + 1", timeout=10)
    assert after.stdout == "42\n" and not after.interpreter_reset


@pytest.mark.parametrize("timeout, why", [
    (float("inf"), "finite"), (float("nan"), "finite"), (-1, "positive"), (0, "positive"),
    (True, "number"), ("10", "number"), (10**9, "maximum of 3600 s"),
])
async def test_timeouts_must_be_finite_positive_and_within_the_maximum(sandbox, timeout, why):
    with pytest.raises(InvalidRequest, match=why):
        await sandbox.exec("true", timeout=timeout)
    with pytest.raises(InvalidRequest, match=why):
        await sandbox.run_python("1", timeout=timeout)
    assert await usable(sandbox)


@pytest.mark.parametrize("env, why", [
    ([("A", "1")], "mapping of str to str"), ({"A": 1}, "must be a str"),
    ({"": "1"}, "not valid"), ({"A=B": "1"}, "not valid"), ({1: "x"}, "not valid"),
])
async def test_env_must_be_a_str_to_str_mapping(sandbox, env, why):
    with pytest.raises(InvalidRequest, match=why):
        await sandbox.exec("true", env=env, timeout=5)
    assert await usable(sandbox)


@pytest.mark.parametrize("mode", [-1, 0o10000, 1.5, True, "644"])
async def test_bad_modes_are_refused(sandbox, mode):
    with pytest.raises(InvalidRequest, match="mode must be an int from 0 to 0o7777"):
        await sandbox.write_file("f.txt", "x", mode=mode)
    assert await usable(sandbox)


async def test_payloads_larger_than_a_call_or_the_workspace_carries_are_refused(sandbox):
    too_big = b"\0" * (sandbox.spec.read_limit_bytes + 1)
    with pytest.raises(InvalidRequest, match="more than one call carries"):
        await sandbox.write_file("big.bin", too_big)
    with pytest.raises(InvalidRequest, match="more than one call carries"):
        await sandbox.exec("cat > /dev/null", stdin=too_big, timeout=10)
    assert await usable(sandbox)
