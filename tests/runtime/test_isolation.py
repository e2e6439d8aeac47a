"""What the agent cannot do in a Docker sandbox, and that the sandbox keeps serving after it tried.

Isolation is the Docker backend's promise (the local backend warns that it makes none), so these
tests run against the real engine only.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

from gymbox.runtime import DockerBackend, Sandbox, SandboxSpec, docker_backend

pytestmark = pytest.mark.docker

SPEC = SandboxSpec(grace_s=0.5, memory_mb=128, pids_limit=64, workspace_mb=8,
                   backstop_margin_s=2.0)


@pytest.fixture
async def sandbox():
    sb = await Sandbox.open(SPEC, backend=DockerBackend())
    yield sb
    await sb.close()


async def serves(sandbox) -> bool:
    return (await sandbox.exec("echo serving", timeout=10)).stdout == "serving\n"


async def test_the_container_carries_every_isolation_default(sandbox, engine_client):
    info = engine_client.api.inspect_container(sandbox.id)
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 64 and host["Init"] is True
    assert host["Memory"] == host["MemorySwap"] == 128 * 2**20
    assert host["NanoCpus"] == 10**9
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]} == {"nofile": 1024,
                                                               "fsize": 256 * 2**20}
    assert host["Tmpfs"]["/workspace"].startswith("size=8m,nr_inodes=512")
    assert host["Tmpfs"]["/tmp"].startswith("size=16m,nr_inodes=1024")
    assert host["Tmpfs"]["/dev/shm"].startswith("size=8m,nr_inodes=512")
    assert host["Sysctls"]["kernel.shm_rmid_forced"] == "1"
    assert info["Config"]["Hostname"] == "sandbox"
    assert host["AutoRemove"] is True
    labels = info["Config"]["Labels"]
    assert labels["gymbox"] == "1"
    assert {"gymbox.owner_pid", "gymbox.host", "gymbox.run_id", "gymbox.lease_expiry"} <= set(
        labels)


async def test_the_agent_has_no_capabilities_and_cannot_gain_any(sandbox):
    status = (await sandbox.exec("grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status",
                                 timeout=10)).stdout
    assert "CapEff:\t0000000000000000" in status and "CapPrm:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    su = await sandbox.exec(["python3", "-c", "import os; os.setuid(0)"], timeout=10)
    assert su.exit_code == 1 and "PermissionError" in su.stderr


async def test_the_agent_is_the_kernels_first_oom_victim_and_yields_it_the_cpu(sandbox):
    # When memory or CPU runs short, the agent's processes lose it before the supervisor: a
    # fork bomb's hundreds of processes on a loaded host must not starve its answers.
    assert (await sandbox.exec("cat /proc/self/oom_score_adj; nice", timeout=10)).stdout == (
        "1000\n10\n")
    # a command's parent is the spawner (the agent's, so 1000), whose parent is the supervisor
    supervisor = await sandbox.exec(
        "s=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$PPID/status); "
        "cat /proc/$s/oom_score_adj; cut -d' ' -f19 /proc/$s/stat", timeout=10)
    assert supervisor.stdout == "0\n0\n"
    cell = await sandbox.run_python(
        "import os; print(open('/proc/self/oom_score_adj').read().strip(), os.nice(0))",
        timeout=10)
    assert cell.stdout == "1000 10\n"
    # and it cannot take the CPU back (its oom_score_adj it can lower to 0: docs/runtime.md)
    renice = await sandbox.exec("renice -n 9 -p $$", timeout=10)
    assert renice.exit_code == 1 and "Permission denied" in renice.stderr, renice


async def test_every_sandbox_looks_the_same_from_inside(sandbox):
    # what a replacement must show the agent as the sandbox it replaces did
    probe = "hostname; id -un; pwd; echo pid $$; env | grep -v '^PWD=' | sort"
    first = (await sandbox.exec(probe, timeout=10)).stdout
    async with await Sandbox.open(SPEC, backend=DockerBackend()) as other:
        assert (await other.exec(probe, timeout=10)).stdout == first
        assert other.id != sandbox.id
    assert first.startswith("sandbox\nsandbox\n/workspace\n")
    assert sandbox.id[:12] not in first


async def test_network_is_unreachable(sandbox):
    result = await sandbox.exec(
        ["python3", "-c", "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)"],
        timeout=10)
    assert result.exit_code == 1 and "Network is unreachable" in result.stderr
    assert await serves(sandbox)


async def test_writes_outside_the_workspace_fail(sandbox):
    for target in ("/etc/passwd", "/usr/bin/evil", "/run/gymbox/lease", "/home/sandbox/x"):
        result = await sandbox.exec(f"echo x > {target}", timeout=10)
        assert result.exit_code != 0, target
    assert (await sandbox.exec("echo ok > /workspace/f && echo ok > /tmp/f", timeout=10)).ok


async def test_workspace_size_is_capped(sandbox):
    result = await sandbox.exec("head -c 20000000 /dev/zero > big", timeout=20)
    assert result.exit_code != 0 and "No space left" in result.stderr
    assert await serves(sandbox)


async def test_killing_every_visible_process_leaves_the_supervisor(sandbox):
    pid1 = await sandbox.exec("kill -9 1; echo $?", timeout=10)
    assert pid1.stdout.strip().endswith("1")  # PID 1 is root's: not permitted
    result = await sandbox.exec("kill -9 -1; echo survived", timeout=10)
    # The spawner that starts commands runs as the agent, so this kills it too, and with it the
    # command's exit status (the result says why: the agent's own outcome, a value, never a
    # failure of the sandbox). The shell itself lives on and is heard out, even when the kill
    # came before the spawner could report the shell's pid.
    assert result.stdout == "survived\n" and not result.timed_out, result
    assert result.exit_code is None and "spawner" in result.stderr, result
    assert await serves(sandbox)


async def test_fork_bomb_is_contained(sandbox):
    result = await sandbox.exec("bomb() { bomb | bomb & }; bomb; sleep 2", timeout=3)
    assert not result.oom_killed
    left = await sandbox.exec("ls /proc | grep -c '^[0-9]'", timeout=10)
    assert int(left.stdout) < 12  # init, the lease loop, the supervisor and this command
    assert await serves(sandbox)


# A script's opening: fork children that run {child} until the pids limit answers EAGAIN, then
# print how many and why.
FILL_PIDS = """
import contextlib, os, signal, time
kids = 0
try:
    while True:
        if os.fork() == 0:
            {child}
            os._exit(0)
        kids += 1
except OSError as exc:
    print(kids, exc.strerror, flush=True)
"""

# A cell that fills the pids limit with children and reaps them REAP_AFTER_S later (a SIGALRM
# handler runs while the interpreter waits for its next cell). When the cell ends the supervisor
# kills the children; they stay zombies, holding their pids, until the interpreter reaps them.
# That is a fork bomb's hundreds of killed processes on a loaded machine (not yet run to their
# exit, not yet reaped when the supervisor's sweep stops waiting), made to last.
REAP_AFTER_S = 6.0
FILL_THEN_REAP_LATER = FILL_PIDS.format(child="signal.pause()") + f"""
def reap(*_):
    with contextlib.suppress(ChildProcessError):  # none left
        while os.waitpid(-1, os.WNOHANG)[0]:
            continue
signal.signal(signal.SIGALRM, reap)
_ = signal.setitimer(signal.ITIMER_REAL, {REAP_AFTER_S})  # no final value to print
"""

# A command that fills the pids limit with live processes and keeps them for ARMY_S.
ARMY_S = 6
ARMY = FILL_PIDS.format(child="time.sleep(60)") + f"time.sleep({ARMY_S})\n"
LIMIT = "the sandbox's process limit is reached"


async def test_a_call_waits_for_the_pids_of_killed_processes_not_yet_reaped(sandbox):
    await sandbox.write_file("a.txt", b"6")
    cell = await sandbox.run_python(FILL_THEN_REAP_LATER, timeout=10)
    assert cell.ok and cell.stdout.endswith("Resource temporarily unavailable\n"), cell
    # The limit is still full of the killed: each call waits for their pids (out of its own
    # timeout) and then runs; the supervisor serves meanwhile. Before, the command came back at
    # once as "process limit reached" and the file operation raised EAGAIN.
    ran = asyncio.gather(sandbox.exec("cat a.txt", timeout=15), sandbox.read_file("a.txt"))
    await asyncio.sleep(0.3)
    await asyncio.wait_for(sandbox.ping(), 1.0)
    result, data = await ran
    assert result.exit_code == 0 and result.stdout == "6" and not result.timed_out, result
    assert data == b"6"
    assert result.duration_s > 1.0, "the killed were gone before the call: nothing was tested"
    assert await serves(sandbox)


async def test_a_limit_held_by_live_processes_is_answered_at_once(sandbox):
    # The processes of a command still running are not swept: there is nothing to wait for,
    # and each start path answers "process limit reached" at once, well within its timeout.
    army = asyncio.create_task(sandbox.exec(["python3", "-c", ARMY], timeout=20))
    for _ in range(100):
        probe = await sandbox.exec("true", timeout=10)
        if probe.exit_code == 126:
            break
        await asyncio.sleep(0.05)
    assert probe.exit_code == 126 and LIMIT in probe.stderr, probe
    assert probe.duration_s < 1.0, probe
    cell = await sandbox.run_python("1", timeout=10)
    assert cell.exit_code == 126 and LIMIT in cell.stderr and cell.duration_s < 1.0, cell
    with pytest.raises(OSError) as raised:
        await asyncio.wait_for(sandbox.read_file("a.txt"), 1.0)
    assert raised.value.errno == errno.EAGAIN
    assert not army.done()  # all of that came while the army held the limit
    result = await army
    assert result.exit_code == 0 and "Resource temporarily unavailable" in result.stdout, result
    assert await serves(sandbox)


async def test_memory_bomb_is_reported_as_oom(sandbox):
    result = await sandbox.exec(["python3", "-c", "x = b'x' * (400 * 2**20)"], timeout=30)
    assert result.oom_killed and result.signal == 9 and not result.timed_out
    shell = await sandbox.exec("python3 -c \"x = b'x' * (400 * 2**20)\"", timeout=30)
    assert shell.oom_killed and shell.exit_code == 137
    assert await serves(sandbox)
    cell = await sandbox.run_python("x = b'x' * (400 * 2**20)", timeout=30)
    assert cell.oom_killed and cell.interpreter_reset
    assert (await sandbox.run_python("1 + 1", timeout=10)).stdout == "2\n"


# The spawner: the process that starts each command (a command's parent). It runs as the
# agent's uid, so the agent can signal it; it must not be able to take it over, and whatever it
# does to it must stay the agent's outcome, with the sandbox serving on.
AS_THE_AGENT = r"""
import ctypes, errno, os, resource
def field(pid, name):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(name + ":"):
            return " ".join(line.split()[1:])
spawner = os.getppid()
print("command", field("self", "Uid"), "|", field("self", "Gid"), "|", field("self", "Groups"),
      "|", open("/proc/self/oom_score_adj").read().strip(), "|",
      resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_FSIZE))
print("spawner", b"gymbox-spawner" in open(f"/proc/{spawner}/cmdline", "rb").read(),
      field(spawner, "Uid"), "|", open(f"/proc/{spawner}/oom_score_adj").read().strip())
for name, look in (("mem", open), ("environ", open), ("fd", os.listdir)):
    try:
        look(f"/proc/{spawner}/{name}")
        print(name, "readable")
    except PermissionError:
        print(name, "denied")
libc = ctypes.CDLL(None, use_errno=True)
print("ptrace", libc.ptrace(16, spawner, 0, 0), errno.errorcode[ctypes.get_errno()])  # ATTACH
"""


async def test_commands_run_as_the_agent_from_a_spawner_the_agent_cannot_take_over(sandbox):
    result = await sandbox.exec(["python3", "-c", AS_THE_AGENT], timeout=10)
    assert result.stdout.splitlines() == [
        "command 1000 1000 1000 1000 | 1000 1000 1000 1000 |  | 1000 | (1024, 1024) "
        f"({256 * 2**20}, {256 * 2**20})",
        "spawner True 1000 1000 1000 1000 | 1000",
        "mem denied", "environ denied", "fd denied",  # non-dumpable: its /proc files are root's
        "ptrace -1 EPERM",
    ], result.stderr


# Signals the spawner, then waits until it is dead or stopped: a command sent while the
# spawner is still dying would find it alive and lose its status (a kill at that moment is one
# mid-command).
SIGNAL_SPAWNER = """
import contextlib, os, signal, time
os.kill({pid}, signal.{sig})
with contextlib.suppress(FileNotFoundError):  # already reaped: as dead as it gets
    while open("/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "T"):
        time.sleep(0.01)
"""


async def test_a_spawner_killed_or_stopped_between_commands_is_replaced_unnoticed(sandbox):
    # The interpreter is not the spawner's child: its cell acts while no command runs.
    for sig in ("SIGKILL", "SIGSTOP"):
        spawner = int((await sandbox.exec("echo $PPID", timeout=10)).stdout)
        cell = await sandbox.run_python(SIGNAL_SPAWNER.format(pid=spawner, sig=sig), timeout=10)
        assert cell.ok, cell
        after = await sandbox.exec("echo $PPID; echo err >&2; exit 3", timeout=10)
        assert after.exit_code == 3 and after.stderr == "err\n", after
        assert int(after.stdout) != spawner


@pytest.mark.parametrize("sig", ["KILL", "STOP"])
async def test_a_spawner_killed_or_stopped_mid_command_costs_that_status_only(sandbox, sig):
    result = await sandbox.exec(f"kill -{sig} $PPID; echo after; exit 4", timeout=30)
    assert result.stdout == "after\n" and not result.timed_out
    assert result.exit_code is None and result.signal is None
    assert "this command's exit status is lost: gymbox's spawner" in result.stderr
    assert ("died" if sig == "KILL" else "stopped") in result.stderr
    assert result.duration_s < 10  # seen at once, not at the deadline
    assert (await sandbox.exec("exit 5", timeout=10)).exit_code == 5
    assert await serves(sandbox)


async def test_a_spawner_killed_with_commands_in_flight_keeps_their_output(sandbox):
    slow = asyncio.create_task(sandbox.exec("sleep 1; echo slow", timeout=30))
    await asyncio.sleep(0.3)
    killer = await sandbox.exec("kill -9 $PPID", timeout=10)
    result = await slow
    assert result.stdout == "slow\n" and "exit status is lost" in result.stderr
    assert "exit status is lost" in killer.stderr
    assert [(await sandbox.exec(f"exit {i}", timeout=10)).exit_code for i in range(3)] == [0, 1, 2]


async def test_a_command_the_spawner_could_not_read_runs_on_a_new_one(sandbox):
    # The agent's uid may lower the spawner's rlimits: with no fd left it cannot take the next
    # command's pipes, and exits before it said it read it. That command never ran, so it runs
    # on a fresh spawner, its status intact.
    spawner = int((await sandbox.exec("echo $PPID", timeout=10)).stdout)
    cell = await sandbox.run_python(
        f"import resource; resource.prlimit({spawner}, resource.RLIMIT_NOFILE, (3, 3))",
        timeout=10)
    assert cell.ok, cell
    after = await sandbox.exec("echo $PPID; exit 3", timeout=10)
    assert after.exit_code == 3 and after.stderr == "", after
    assert int(after.stdout) != spawner


@pytest.fixture
async def late_reporting_sandbox(monkeypatch):
    """A sandbox whose spawner is descheduled for 0.3 s between starting a command and
    reporting its pid, as on a loaded host: a fault injected on purpose, through the supervisor
    source the host sends, so a command can kill the spawner before its pid is known."""
    report = "        pidfd = os.pidfd_open(proc.pid)\n"
    source = docker_backend.SUPERVISOR_SOURCE
    assert source.count(report) == 1, "the spawner's pid report moved: update this fault"
    late = source.replace(report, '        __import__("time").sleep(0.3)\n' + report)
    monkeypatch.setattr(docker_backend, "SUPERVISOR_SOURCE", late)
    sb = await Sandbox.open(SPEC, backend=DockerBackend())
    yield sb
    await sb.close()


async def test_a_command_that_killed_the_spawner_before_its_pid_was_known_is_heard_out(
        late_reporting_sandbox):
    sandbox = late_reporting_sandbox
    result = await sandbox.exec("kill -9 -1; sleep 0.5; echo survived", timeout=10)
    assert result.stdout == "survived\n" and not result.timed_out, result
    assert result.exit_code is None and "exit status is lost" in result.stderr, result
    # Untracked, it still ends at its deadline and grace, and nothing of it is left running.
    result = await sandbox.exec("kill -9 -1; echo started; sleep 60", timeout=2)
    assert result.stdout == "started\n" and result.timed_out, result
    assert result.duration_s < 2 + SPEC.grace_s + 1.5, result
    left = await sandbox.exec("cat /proc/[0-9]*/comm", timeout=10)
    assert "sh\n" in left.stdout and "sleep\n" not in left.stdout, left  # sh: this command
