"""The one classifier of sandbox failures: what evidence makes a failure infra, the agent's,
or ambiguous. Pure decisions; the tests beside it show the evidence gathered for real."""

from __future__ import annotations

import pytest

from gymbox.runtime.attribution import Cause, Evidence, Pressure, Record, attribute
from gymbox.runtime.errors import (
    AmbiguousExecution,
    EngineUnavailable,
    SandboxDied,
    SandboxUnresponsive,
    SupervisorFault,
)

DIED = SandboxDied("the sandbox exited")
LOST = AmbiguousExecution("the supervisor stream broke after the request was sent")
FULL = Pressure(memory=0.97, pids=0.1, tmpfs={"/tmp": 0.2})


@pytest.mark.parametrize("failure, evidence, cause", [
    # the agent cannot do any of these
    (EngineUnavailable("down"), None, Cause.INFRA),
    (DIED, Evidence(engine_answered=False), Cause.INFRA),
    (DIED, Evidence(events=("kill:9", "die:137")), Cause.INFRA),
    (DIED, Evidence(events=("kill:15", "stop", "die:143")), Cause.INFRA),
    (SandboxUnresponsive("paused"), Evidence(events=("pause",)), Cause.INFRA),
    (SandboxUnresponsive("paused"), Evidence(record=Record(paused=True)), Cause.INFRA),
    (LOST, Evidence(events=("exec_create", "exec_start")), Cause.INFRA),
    # the engine went away and came back (restarted), even with the agent's pressure around it
    (LOST, Evidence(engine_lost_at=1.0, record=Record(removed=True)), Cause.INFRA),
    (DIED, Evidence(engine_lost_at=1.0, events=("oom",), pressure=FULL), Cause.INFRA),
    (SupervisorFault("garbled"), Evidence(injected=("garble_response",)), Cause.INFRA),
    (DIED, Evidence(events=("die:0", "destroy")), Cause.INFRA),  # the lease ran out
    # outside evidence wins over the agent's pressure
    (DIED, Evidence(events=("oom", "kill:9", "die:137"), pressure=FULL), Cause.INFRA),
    # the agent exhausted its own limits
    (DIED, Evidence(events=("oom", "die:137")), Cause.AGENT),
    (DIED, Evidence(record=Record(dead=True, oom_killed=True, exit_code=137)), Cause.AGENT),
    (LOST, Evidence(pressure=FULL), Cause.AGENT),
    (LOST, Evidence(pressure=Pressure(pids=0.95)), Cause.AGENT),
    (LOST, Evidence(pressure=Pressure(tmpfs={"/workspace": 1.0})), Cause.AGENT),
    # neither
    (LOST, Evidence(), Cause.AMBIGUOUS),
    (LOST, None, Cause.AMBIGUOUS),
    (LOST, Evidence(pressure=Pressure(memory=0.5, pids=0.2)), Cause.AMBIGUOUS),
    (LOST, Evidence(pressure=Pressure(memory=0.99, age_s=60.0)), Cause.AMBIGUOUS),  # stale
    (DIED, Evidence(events=("die:137",)), Cause.AMBIGUOUS),
    (DIED, Evidence(record=Record(removed=True)), Cause.AMBIGUOUS),
])
def test_attribution_rests_on_evidence(failure, evidence, cause):
    assert attribute(failure, evidence).cause is cause


def test_a_retry_safe_failure_ran_nothing_of_the_call_so_it_cannot_be_the_agents():
    broken = SandboxDied("this sandbox is broken")
    broken.retry_safe = True
    verdict = attribute(broken, Evidence(events=("oom",), pressure=FULL))
    assert verdict.cause is Cause.INFRA and "nothing of the call ran" in verdict.reason


def test_the_reason_names_the_evidence():
    assert "memory 97%" in attribute(LOST, Evidence(pressure=FULL)).reason
    assert "kill:9" in attribute(DIED, Evidence(events=("kill:9",))).reason


def test_pressure_from_the_wire_reads_malformed_fields_as_unknown():
    pressure = Pressure.from_wire({"memory": "lots", "pids": 0.5, "tmpfs": {"/tmp": 0.95,
                                                                         "/x": None}}, 0.1)
    assert pressure.memory is None and pressure.pids == 0.5
    assert pressure.near_limit() == ["/tmp 95%"]
