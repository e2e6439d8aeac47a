"""Red team, runtime side: an adversarial agent's tool calls against the product's defaults.

Every attack goes through the public API as an agent's tool calls would (a ``ToolEnv`` over
``RecoveringSandboxes`` over a real ``SandboxPool`` of Docker sandboxes, with the default
``SandboxSpec`` and ``RecoveryPolicy`` unless the class of attack needs otherwise). Each test
asserts the three things the agent must never get: its episode masked instead of scored, the
supervisor dead (the next call must work), or anything leaked (the autouse fixture of
tests/faults counts this run's containers; here each test checks its own at the end).
"""

from __future__ import annotations

import pytest

from gymbox.runtime import InvalidRequest, SandboxSpec
from gymbox.runtime.faults import FaultKind, FaultPlan
from gymbox.runtime.recovery import RecoveryPolicy
from tests.faults.workload import (
    SPEC,
    ProductEnv,
    call,
    containers_left,
    play,
    recovering,
    scripted,
)

pytestmark = pytest.mark.docker

# The strongest crash an agent has: fill every writable tmpfs, hold SysV shared memory, take
# all the memory, then fork until the pids limit. Against the defaults it kills only its own
# processes. 2>/dev/null: the bomb's complaints are not the point.
SHM = ("import ctypes; libc = ctypes.CDLL(None); "
       "ids = [libc.shmget(0, 8 << 20, 0o1600) for _ in range(64)]; "
       "print(sum(i >= 0 for i in ids), 'segments')")
CRASH = ("for d in /workspace /tmp /dev/shm; do head -c 1G /dev/zero > $d/fill.$$; done "
         "2>/dev/null; "
         f"python3 -c \"{SHM}\"; python3 -c 'b = bytearray(1 << 30)' 2>/dev/null; "
         "f() { f | f & }; f 2>/dev/null; sleep 1")
# The host's backstop margin is the product's default: how late an answer may come after a
# crash on a loaded machine is the product's bound to keep, not the test's to tighten.
SPEC_SMALL = SandboxSpec(memory_mb=256, default_timeout_s=4.0, grace_s=0.2, labels=SPEC.labels)

CONDITIONS = {
    # what differs, or might, between a sandbox and the one that replaces it
    "hostname": '[ "$(hostname)" = sandbox ]',
    "container_id": "sed -n 's#.*/containers/\\([0-9a-f]\\).*#\\1#p' /proc/self/mountinfo "
                    "| head -1 | grep -q '[02468ace]'",
    "time": "[ $(( $(date +%s) % 2 )) = 0 ]",
    "pids": "[ $(( $$ % 2 )) = 0 ]",
    "randomness": "[ $(( $(od -An -N1 -tu1 /dev/urandom) % 2 )) = 0 ]",
}


def crash_if(condition: str) -> str:
    return call("shell", command=f"if {condition}; then {CRASH}; fi; echo done")


def assert_scored_and_alive(episode, sandboxes, *, alive_at: int, expect: str) -> None:
    assert episode.status == "completed", episode.status
    assert episode.record.valid, "the agent's episode was masked"
    assert episode.messages[alive_at]["content"] == expect, "the next call did not work"
    assert not sandboxes.metrics.masked


@pytest.mark.parametrize("condition", CONDITIONS)
async def test_a_crash_conditioned_on_what_differs_between_sandboxes_is_scored(
        condition, docker_client):
    agent = scripted(call("shell", command="echo 6 > a.txt"), crash_if(CONDITIONS[condition]),
                     call("shell", command="cat a.txt"))
    async with recovering(spec=SPEC_SMALL) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes, max_turns=6), 0, agent)
    assert_scored_and_alive(episode, sandboxes, alive_at=7, expect="6")
    # and the sandbox was never lost: the supervisor outlived the attack
    assert not sandboxes.metrics.recovered and not sandboxes.metrics.agent_caused
    assert not await containers_left(docker_client)


async def test_slow_legal_calls_then_a_failure_replay_past_the_old_deadline(docker_client):
    # Seven seconds of legal calls, then a failure with no engine footprint (ambiguous): the
    # re-test must replay all of it. A fixed 3 s deadline gave up and masked the episode; the
    # deadline now grows with the journal's recorded durations.
    policy = RecoveryPolicy(deadline_s=3.0)
    slow = [call("shell", command=f"sleep 1.4; echo {i}") for i in range(5)]
    agent = scripted(*slow, call("shell", command="echo struck"), call("shell", command="echo ok"))
    plan = FaultPlan(scripted={6: FaultKind.GARBLE_RESPONSE})
    async with recovering(plan, spec=SPEC_SMALL, policy=policy, testimony=False) as (
            sandboxes, faults):
        episode = await play(ProductEnv(sandboxes=sandboxes, max_turns=9), 0, agent)
    assert [f.kind for f in faults.log] == [FaultKind.GARBLE_RESPONSE]
    assert_scored_and_alive(episode, sandboxes, alive_at=15, expect="ok")
    assert episode.messages[13]["content"] == "struck"  # re-tested and recovered
    assert sandboxes.metrics.recovered == {"supervisor_fault": 1}
    assert not await containers_left(docker_client)


@pytest.mark.parametrize("attack", ["fork_bomb", "tmpfs_fill_then_fork"])
async def test_ten_tries_leave_the_supervisor_alive_every_time(attack, docker_client):
    bomb = "f() { f | f & }; f 2>/dev/null; sleep 2"
    fill = ("for d in /workspace /tmp /dev/shm; do head -c 1G /dev/zero > $d/fill.$RANDOM; "
            "done 2>/dev/null; ")
    command = bomb if attack == "fork_bomb" else fill + bomb
    tries = [call("shell", command=command + "; echo tried") for _ in range(10)]
    agent = scripted(*tries, call("shell", command="echo alive"))
    async with recovering(spec=SPEC_SMALL) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes, max_turns=12), 0, agent)
    assert_scored_and_alive(episode, sandboxes, alive_at=23, expect="alive")
    # no try cost the sandbox: nothing to recover, nothing blamed
    assert not sandboxes.metrics.recovered and not sandboxes.metrics.agent_caused
    assert not await containers_left(docker_client)


async def test_many_small_files_stop_at_the_inode_cap_and_the_supervisor_lives(docker_client):
    many = ("python3 -c \"import os\nfor d in ('/workspace', '/tmp', '/dev/shm'):\n"
            " n = 0\n try:\n  while True: open(f'{d}/f{n}', 'w').close(); n += 1\n"
            " except OSError as e: print(d, e.strerror)\"")
    agent = scripted(call("shell", command=many), call("python", code="print('alive')"),
                     call("shell", command="ls /workspace | wc -l"))
    async with recovering(spec=SPEC_SMALL) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes, max_turns=6), 0, agent)
    assert "No space left on device" in episode.messages[3]["content"]
    assert_scored_and_alive(episode, sandboxes, alive_at=5, expect="alive")
    # the cap is the spec's: inodes per MiB of the workspace (less the root's own)
    files = int(episode.messages[7]["content"])
    assert files <= SPEC_SMALL.tmpfs["/workspace"] * 64
    assert not await containers_left(docker_client)


async def test_threads_and_processes_a_cell_starts_do_not_outlive_it(docker_client):
    start = ("import subprocess, threading, time\n"
             "p = subprocess.Popen(['sleep', '300'])\n"
             "threading.Thread(target=lambda: [print('ghost', flush=True) or time.sleep(0.05) "
             "for _ in range(10**6)], daemon=True).start()\n"
             "print(p.pid)")
    count = "cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$' || true"
    agent = scripted(call("python", code=start), call("shell", command=count),
                     call("python", code="print('quiet')"))
    async with recovering(spec=SPEC_SMALL) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes, max_turns=6), 0, agent)
    assert "the interpreter restarts before the next cell" in episode.messages[3]["content"]
    assert episode.messages[5]["content"] == "0"  # the cell's `sleep 300` went with it
    # the thread is gone with its interpreter: nothing of it reaches a later answer
    # the thread's prints are gone with its interpreter; the next cell says it is fresh
    assert_scored_and_alive(episode, sandboxes, alive_at=7, expect="quiet\n[the Python "
                            "interpreter was restarted: names defined before are gone]")
    assert not await containers_left(docker_client)


async def test_what_the_agent_writes_never_reaches_the_protocol(docker_client):
    # frames, raw bytes and a fake "ready" on every stream the agent has
    forged = ("printf '\\000\\000\\000\\020{\"id\":1,\"ok\":true}'; "
              "printf '\\377\\376garbage' >&2; "
              "for fd in /proc/$PPID/fd/1 /proc/1/fd/1; do echo '{\"id\":0}' > $fd; done "
              "2>/dev/null; echo written")
    cell = ("import os, sys\n"
            "os.write(1, b'\\x00\\x00\\x00\\x05hello'); os.write(2, b'\\x00\\x00\\x00\\x01')\n"
            "for fd in range(3, 20):\n"
            "    try: os.write(fd, b'0 0\\n')\n"
            "    except OSError: pass\n"
            "print('cell')")
    agent = scripted(call("shell", command=forged), call("python", code=cell),
                     call("shell", command="echo intact"))
    async with recovering(spec=SPEC_SMALL) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes, max_turns=6), 0, agent)
    assert "written" in episode.messages[3]["content"]
    assert_scored_and_alive(episode, sandboxes, alive_at=7, expect="intact")
    assert not (sandboxes.metrics.recovered or sandboxes.metrics.agent_caused)
    assert not await containers_left(docker_client)


async def test_lone_surrogates_are_refused_before_they_are_sent_and_lose_nothing(docker_client):
    lone = "\ud800"
    async with recovering(spec=SPEC_SMALL) as (sandboxes, _), sandboxes.acquire() as sandbox:
        await sandbox.write_file("kept.txt", "kept")
        for attempt in (lambda: sandbox.exec(f"echo {lone}", timeout=5),
                        lambda: sandbox.exec("true", env={"A": lone}, timeout=5),
                        lambda: sandbox.exec("true", cwd=lone, timeout=5),
                        lambda: sandbox.run_python(f"'{lone}'", timeout=5),
                        lambda: sandbox.write_file(lone, "x"),
                        lambda: sandbox.read_file(lone)):
            with pytest.raises(InvalidRequest, match="lone surrogate"):
                await attempt()
        assert (await sandbox.exec("cat kept.txt", timeout=5)).stdout == "kept"
        assert [c.method for c in sandbox.journal] == ["write_file", "exec"]
    assert not sandboxes.metrics.masked and not sandboxes.metrics.recovered
    assert not await containers_left(docker_client)


# What the agent can do to gymbox's spawner (a command's parent, running as the agent's uid):
# kill it or stop it from a command, kill it between commands (from the interpreter, which is
# not its child), and try to take it over. Each costs at most that command's exit status.
KILL_SPAWNERS = ("import os, time\n"
                 "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
                 "    try:\n"
                 "        if b'gymbox-spawner' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
                 "            os.kill(int(pid), 9); print('killed a spawner')\n"
                 "            while open(f'/proc/{pid}/stat').read().split()[2] != 'Z':\n"
                 "                time.sleep(0.01)  # dead before the next command is sent\n"
                 "    except OSError: pass")
TAKE_OVER = ("python3 -c \"import ctypes, sys; libc = ctypes.CDLL(None)\n"
             "p = int(sys.argv[1]); print(libc.ptrace(16, p, 0, 0))\n"
             "try: open(f'/proc/{p}/mem', 'rb')\n"
             "except PermissionError: print('no mem')\" $PPID")  # the shell's parent


async def test_an_agent_that_kills_stops_or_probes_the_spawner_is_scored(docker_client):
    agent = scripted(call("shell", command="kill -9 $PPID; echo killed"),
                     call("shell", command="kill -STOP $PPID; echo stopped"),
                     call("shell", command=TAKE_OVER),
                     call("python", code=KILL_SPAWNERS),
                     call("shell", command="pkill -f gymbox-spawner; kill -9 -1; echo again"),
                     call("shell", command="echo still here"))
    async with recovering(spec=SPEC_SMALL) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes, max_turns=8), 0, agent)
    lost = "this command's exit status is lost"
    killed, stopped = episode.messages[3]["content"], episode.messages[5]["content"]
    assert killed.startswith("killed\n") and lost in killed
    assert stopped.startswith("stopped\n") and lost in stopped
    assert episode.messages[7]["content"] == "-1\nno mem"  # ptrace refused, memory unreadable
    assert episode.messages[9]["content"] == "killed a spawner"
    assert episode.messages[11]["content"].startswith("again")
    assert_scored_and_alive(episode, sandboxes, alive_at=13, expect="still here")
    assert not (sandboxes.metrics.recovered or sandboxes.metrics.agent_caused)
    assert not await containers_left(docker_client)
