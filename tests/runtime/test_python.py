"""run_python: a persistent, notebook-like interpreter that resets (and says so) when lost."""

from __future__ import annotations

import pytest

from gymbox.runtime import InvalidRequest


async def test_state_persists_and_the_last_expression_is_shown(sandbox):
    defined = await sandbox.run_python("x = 40\ndef f(v):\n    return v + 2", timeout=10)
    assert defined.ok and defined.stdout == ""
    result = await sandbox.run_python("f(x)", timeout=10)
    assert result.ok and result.stdout == "42\n" and not result.interpreter_reset
    assert (await sandbox.run_python("print('a'); None", timeout=10)).stdout == "a\n"


async def test_runs_as_the_agent(sandbox):
    assert (await sandbox.run_python("import os; os.getuid()", timeout=10)).stdout == "1000\n"


async def test_exception_is_an_outcome_and_keeps_state(sandbox):
    await sandbox.run_python("kept = 'yes'", timeout=10)
    failed = await sandbox.run_python("1 / 0", timeout=10)
    assert failed.exit_code == 1 and "ZeroDivisionError" in failed.stderr
    assert "<cell>" in failed.stderr and not failed.interpreter_reset
    syntax = await sandbox.run_python("def (", timeout=10)
    assert syntax.exit_code == 1 and "SyntaxError" in syntax.stderr
    assert (await sandbox.run_python("kept", timeout=10)).stdout == "'yes'\n"


async def test_timeout_resets_the_interpreter_and_says_so(sandbox):
    await sandbox.run_python("lost = 1", timeout=10)
    result = await sandbox.run_python("while True: pass", timeout=0.5)
    assert result.timed_out and result.interpreter_reset
    assert "restarted" in result.stderr
    after = await sandbox.run_python("'lost' in globals()", timeout=10)
    assert after.stdout == "False\n" and not after.interpreter_reset


async def test_crash_resets_the_interpreter(sandbox):
    await sandbox.run_python("import os", timeout=10)
    crashed = await sandbox.run_python("os._exit(7)", timeout=10)
    assert crashed.exit_code == 7 and crashed.interpreter_reset
    assert (await sandbox.run_python("6 * 7", timeout=10)).stdout == "42\n"


async def test_interpreter_killed_by_a_command_is_reported_on_the_next_cell(sandbox):
    await sandbox.run_python("state = 1", timeout=10)
    await sandbox.exec("kill -9 -1", timeout=10)  # the agent kills everything it may signal
    result = await sandbox.run_python("'state' in globals()", timeout=10)
    assert result.interpreter_reset and result.stdout == "False\n"


async def test_cell_output_is_capped(sandbox):
    result = await sandbox.run_python("print('y' * 10_000_000)", timeout=30)
    assert result.truncated and result.stdout_bytes == 10_000_001


async def test_input_sees_eof_instead_of_hanging(sandbox):
    result = await sandbox.run_python("input()", timeout=10)
    assert result.exit_code == 1 and "EOFError" in result.stderr


@pytest.mark.parametrize("code", [b"1+1", "1+\0", None])
async def test_malformed_code_is_rejected(sandbox, code):
    with pytest.raises(InvalidRequest):
        await sandbox.run_python(code, timeout=5)
