"""Recovery's policy and counters. No engine needed."""

from __future__ import annotations

import errno
import signal

import pytest

from gymbox.runtime import ExecResult, SandboxDied
from gymbox.runtime.recovery import Blame, Call, RecoveryMetrics, RecoveryPolicy, destroyed_sandbox


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"blame_after": 1}, "blame_after must be >= 2 (one break proves nothing)"),
        ({"deadline_s": 0}, "deadline_s must be > 0"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RecoveryPolicy(**kwargs)


def test_metrics_flatten_for_a_jsonl_line_with_totals_and_kinds():
    metrics = RecoveryMetrics()
    metrics.recovered["sandbox_died"] += 2
    metrics.recovered["supervisor_fault"] += 1
    metrics.agent_caused["ambiguous_execution"] += 1
    metrics.replays = 7
    metrics.stalled_s["sandbox_died"] += 0.25
    assert metrics.as_dict() == {
        "recovery/replays": 7.0,
        "recovery/recovered": 3.0,
        "recovery/recovered/sandbox_died": 2.0,
        "recovery/recovered/supervisor_fault": 1.0,
        "recovery/masked": 0.0,
        "recovery/agent_caused": 1.0,
        "recovery/agent_caused/ambiguous_execution": 1.0,
        "recovery/start_failed": 0.0,
        "recovery/stalled_s": 0.25,
        "recovery/stalled_s/sandbox_died": 0.25,
    }


def test_a_blamed_call_is_the_agents_outcome_of_its_own_kind():
    blame = Blame(SandboxDied("the sandbox exited"), breaks=2)
    command = destroyed_sandbox(Call("exec", lambda s: s.exec("fill-the-disk")), blame).result()
    assert isinstance(command, ExecResult) and not command.ok
    assert command.signal == signal.SIGKILL
    assert "this command destroyed its sandbox (sandbox_died)" in command.stderr
    assert "again on 1 fresh sandbox rebuilt" in command.stderr
    with pytest.raises(OSError, match="this file operation destroyed its sandbox") as caught:
        write = Call("write_file", lambda s: s.write_file("big.bin", b""))
        destroyed_sandbox(write, blame).result()
    assert caught.value.errno == errno.EIO
