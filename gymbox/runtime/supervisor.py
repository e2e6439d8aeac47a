"""The supervisor that runs inside every sandbox. Python standard library only.

The host starts it once per sandbox, as root, over an attached exec stream: a short bootstrap
reads this file's source from the stream and runs it with the JSON config as ``argv[1]``. From
then on every command is one framed request on its stdin and one framed response on its stdout;
no network, no port.

Frames, both ways: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. Requests carry
an ``id`` that the response repeats, so many requests can be in flight at once. The first frame
the supervisor writes is ``{"id": 0, "event": "ready"}``.

Everything runs around one ``selectors`` loop. Commands are started by the spawner, a process
the supervisor starts at boot that already is the agent (its uid and gid, no supplementary
groups, ``oom_score_adj`` 1000, the supervisor's rlimits), so it can ``vfork``: forking the
supervisor itself cost about three times the supervisor's CPU per command. The spawner gets each
command's pipes over a unix socket, answers with its pid and a pidfd, and later its exit status.
It is the agent's to kill, stop or starve (same uid); it is non-dumpable, so not the agent's to
ptrace. Whatever it reports is checked, and a spawner that dies, stops, stalls or reports what
it should not is killed and replaced: the commands it owed an answer end with their exit status
lost, as the agent's outcome, never a platform failure. Where no spawner can run, commands take
the Popen path (fork, drop to the agent in the child, exec), in the loop when nothing else is in
flight, else on one of a few threads started at boot (a ``Popen`` blocks until its child has
exec'd; with other commands in flight the loop must not). A fork bomb that exhausts the pids
limit cannot stop the supervisor from serving, because serving never needs a new thread.
Answers produced in one loop turn leave in one write. Per command:

* the command runs in its own session, as the agent's uid (no capabilities), stdin at EOF unless
  the request gives stdin;
* its exit is seen through a pidfd, so a background child holding the output pipes cannot make
  the command look alive; at exit its whole session is killed, and when no other command is
  running every leftover process of the agent's uid is swept;
* a start (command, interpreter, file operation) that finds the pids limit full of processes
  the supervisor killed that have not yet exited or been reaped (a fork bomb's, on a loaded
  machine) waits for them from a timer, within the call's own timeout, then starts;
* at the deadline the process group gets SIGTERM, after the grace period the session gets
  SIGKILL;
* stdout and stderr are read as they come and capped: the head and the tail are kept, the byte
  totals stay exact;
* the cgroup's OOM-kill counter, read before and after, says whether the kernel OOM-killed a
  process while the command ran.

``run_python`` cells go to one persistent interpreter (a child running as the agent's uid), one
cell at a time. A timeout or a crash kills it; the cell's result says ``interpreter_reset`` and
the next cell starts a fresh one.

The lease: the host renews it; the supervisor writes the deadline to ``lease_path``, where the
container's main process (a shell loop) reads it and exits once it has passed, which stops and
removes the container. When its stdin closes (the host went away) the supervisor kills every
command, expires the lease at once and exits.
"""

import base64
import collections
import contextlib
import errno
import heapq
import json
import math
import os
import queue
import select
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback

HEADER = struct.Struct(">I")
READ_CHUNK = 1 << 16
# How long a command's pipes may stay open after its session was killed: only a process that
# escaped the session and the sweep (another command is still running) can hold them that long.
PIPE_LINGER_S = 0.5
FILE_OP_TIMEOUT_S = 30.0
POPEN_THREADS = 4  # the Popen path's threads, for when the spawner cannot serve
HEARTBEAT_S = 0.25  # how often a pressure report goes out while agent code runs
AGENT_OOM_SCORE_ADJ = 1000  # the kernel's first choice when the sandbox's memory is full
# The agent's processes yield the CPU to the supervisor within the sandbox's share: a fork bomb's
# hundreds of processes (or their exits) on a loaded host must not starve the answers. Only where
# the sandbox has a CPU cgroup of its own (config "own_cgroup", a container): niceness weighs
# only within it there, so the agent's code loses no time to anything else. On the host (the
# local backend) it would lose CPU to every other process, the trainer's included, and a call
# that times out for it would be scored as the agent's.
AGENT_NICE = 10
KILL_ROUNDS = 64  # scans of /proc that a sweep may take to catch a fork bomb's last children
# How long a sweep then waits for the processes it killed to be gone. Until a killed process has
# run to its exit and been reaped it keeps its pid, and a fork bomb's hundreds of them keep the
# pids limit full: on a loaded machine the next command then failed to start ("the sandbox's
# process limit is reached"). Kept well under the host's backstop margin.
REAP_WAIT_S = 1.0
# What a start does when the killed are slower still (a loaded machine, a throttled CPU quota:
# a killed process keeps its pid until it has run to its exit and been reaped). A start that
# meets the pids limit (EAGAIN), or that would find fewer than PIDS_HEADROOM pids free, while
# processes the supervisor killed are still on their way out waits for them, retrying every
# PIDS_RETRY_S from a timer (the loop serves meanwhile), within the call's own timeout: the wait
# comes out of the agent's call. PIDS_HEADROOM is what a command's first forks need (a shell, a
# pipeline): a start that succeeded into a full limit would fail in the agent's own forks.
PIDS_RETRY_S = 0.05
PIDS_HEADROOM = 16
PF_EXITING = 0x4  # /proc/<pid>/stat flags: the process is in its exit
SIGKILL_PENDING = 1 << (signal.SIGKILL - 1)  # in /proc/<pid>/stat's mask: sent, not acted on
FIRST_PID = 100  # where the supervisor's own threads, then the agent's processes, start
# A spawn request larger than this (a huge argv or env) takes the Popen path instead.
SPAWN_MESSAGE_MAX = 1 << 16
SPAWNER_READY_S = 10.0  # how long boot waits for the first spawner before serving without it
# How long an exited command may wait for its exit status from the spawner before the spawner
# is taken for stuck (stopped by the agent, or blocked in a vfork the agent stopped).
STATUS_WAIT_S = 1.0
SPAWNER_STARTS = 3  # spawners that may die before they report ready, before we stop trying
SPAWNER_DIED = ("died (the agent's processes can kill it, and so can the kernel's OOM killer, "
                "which takes the agent's processes first)")

INTERPRETER_SOURCE = r"""
import ast, os, sys, threading, traceback
code_in = os.fdopen(int(sys.argv[1]), "rb")
control = os.fdopen(int(sys.argv[2]), "wb", buffering=0)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
while True:
    size = code_in.readline()
    if not size:
        break
    source = code_in.read(int(size)).decode("utf-8")
    control.write(b"started\n")
    status = 0
    try:
        tree = ast.parse(source, "<cell>", "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<cell>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
            if value is not None:
                print(repr(value))
    except SystemExit:
        raise
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    control.write(b"%d %d\n" % (status, threading.active_count() - 1))
"""


# The spawner: started at boot as root, it becomes the agent (oom_score_adj 1000, no
# supplementary groups, the agent's gid and uid; the rlimits are the supervisor's, inherited)
# before it reads any request, so every command it starts inherits all of that and Popen can
# vfork. The uid switch happens after exec, so the kernel makes the process non-dumpable: the
# agent's uid may signal it but cannot ptrace it or open its /proc files. SIGINT is set back to
# the default so a signal can only kill or stop it, never make it run a Python handler mid-send.
# Requests and answers are SOCK_SEQPACKET messages (one send each, so one death cannot leave
# half a message). argv[2] is the socket's fd, argv[3] the JSON config; argv[1] names it in ps.
SPAWNER_SOURCE = r"""
import json, os, select, selectors, signal, socket, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
sock = socket.socket(fileno=int(sys.argv[2]))
config = json.loads(sys.argv[3])
with open("/proc/self/oom_score_adj", "w") as f:
    f.write(str(config["oom_score_adj"]))
os.nice(config["nice"])
if config["uid"] is not None:
    os.setgroups([])
    os.setresgid(config["gid"], config["gid"], config["gid"])
    os.setresuid(config["uid"], config["uid"], config["uid"])
os.chdir(config["workdir"])
selector = selectors.DefaultSelector()
selector.register(sock, selectors.EVENT_READ)
children = {}

def send(message, fds=()):
    socket.send_fds(sock, [json.dumps(message).encode()], fds)

def start(request, fds):
    n = request["n"]
    try:
        proc = subprocess.Popen(
            request["argv"], cwd=request["cwd"], env=request["env"], stdin=fds[0],
            stdout=fds[1], stderr=fds[2], start_new_session=True)
    except OSError as exc:
        send({"n": n, "errno": exc.errno, "strerror": exc.strerror,
              "filename": exc.filename if isinstance(exc.filename, str) else None})
    except (ValueError, TypeError) as exc:
        send({"n": n, "refused": str(exc)})
    else:
        pidfd = os.pidfd_open(proc.pid)
        send({"n": n, "pid": proc.pid}, [pidfd])
        children[pidfd] = (n, proc)
        selector.register(pidfd, selectors.EVENT_READ)
    finally:
        for fd in fds:
            os.close(fd)

send({"ready": os.getpid()})
while True:
    for key, _ in selector.select():
        if key.fileobj is not sock:
            n, proc = children.pop(key.fd)
            selector.unregister(key.fd)
            os.close(key.fd)
            send({"n": n, "status": proc.wait()})
            continue
        batch = []  # every request waiting (recv_fds ignores MSG_DONTWAIT before 3.12)
        while not batch or select.select([sock], [], [], 0)[0]:
            data, fds, flags, _ = socket.recv_fds(sock, config["limit"], 3)
            if not data or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 3:
                sys.exit(0)  # the supervisor is gone (or the agent starved us of fds)
            batch.append((json.loads(data), fds))
        if batch:
            # Said before any of them starts: one the spawner dies before it read never ran.
            send({"read": batch[-1][0]["n"]})
        for request, fds in batch:
            start(request, fds)
"""


class Capped:
    """A stream's bytes, head and tail kept under ``cap``, the total counted exactly."""

    def __init__(self, cap):
        self.head_cap = cap - cap // 2
        self.tail_cap = cap // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk):
        self.total += len(chunk)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            excess = len(self.tail) - self.tail_cap
            if excess > 0:
                del self.tail[:excess]

    @property
    def truncated(self):
        return self.total > len(self.head) + len(self.tail)

    def text(self):
        if not self.truncated:
            return (self.head + self.tail).decode("utf-8", "replace")
        omitted = self.total - len(self.head) - len(self.tail)
        return (
            self.head.decode("utf-8", "replace")
            + f"\n[... {omitted} bytes omitted by gymbox ...]\n"
            + self.tail.decode("utf-8", "replace")
        )


class Gauges:
    """How close the sandbox is to its memory, pids and tmpfs limits (cgroup v2 or v1).

    The cgroup files stay open and are re-read with ``pread`` (a cgroup file regenerates at
    offset 0): a report goes with every answer, so it must cost little."""

    def __init__(self, tmpfs):
        self.tmpfs = tmpfs
        v2 = os.path.exists("/sys/fs/cgroup/memory.current")
        memory = "/sys/fs/cgroup/" if v2 else "/sys/fs/cgroup/memory/"
        pids = "/sys/fs/cgroup/" if v2 else "/sys/fs/cgroup/pids/"
        self.inactive_key = b"\ninactive_file " if v2 else b"\ntotal_inactive_file "
        self.fds = {}
        for name, path in (
                ("memory", memory + ("memory.current" if v2 else "memory.usage_in_bytes")),
                ("memory_max", memory + ("memory.max" if v2 else "memory.limit_in_bytes")),
                ("memory_stat", memory + "memory.stat"),
                ("pids", pids + "pids.current"), ("pids_max", pids + "pids.max")):
            with contextlib.suppress(OSError):
                self.fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self, name, size=64):
        fd = self.fds.get(name)
        if fd is None:
            return b""
        try:
            return os.pread(fd, size, 0)
        except OSError:
            return b""

    def number(self, name):
        text = self.read(name).strip()
        return int(text) if text.isdigit() else None

    def report(self):
        return {"memory": self.memory_fraction(), "pids": self.fraction("pids", "pids_max"),
                "tmpfs": {mount: self.fill(mount) for mount in self.tmpfs}}

    def memory_fraction(self):
        used, cap = self.number("memory"), self.number("memory_max")
        if used is None or not cap or cap > 1 << 60:
            return None
        # Inactive page cache is reclaimed before anything is killed: it is not pressure.
        stat = b"\n" + self.read("memory_stat", 8192)
        at = stat.find(self.inactive_key)
        if at >= 0:
            value = stat[at + len(self.inactive_key):].split(b"\n", 1)[0]
            used -= int(value) if value.isdigit() else 0
        return round(max(0, used) / cap, 3)

    def fraction(self, current, limit):
        used, cap = self.number(current), self.number(limit)
        return round(used / cap, 3) if used is not None and cap else None

    @staticmethod
    def fill(mount):
        try:
            st = os.statvfs(mount)
        except OSError:
            return None
        blocks = 1 - st.f_bavail / st.f_blocks if st.f_blocks else 0.0
        inodes = 1 - st.f_favail / st.f_files if st.f_files else 0.0
        return round(max(blocks, inodes), 3)


def align_pids(first):
    """Use up process ids until the next one is ``first``. How many the engine took starting
    the container varies; from here on every sandbox hands out the same ids in the same order,
    so a replay into a fresh sandbox sees the pids the original saw."""
    while True:
        try:
            with open("/proc/sys/kernel/ns_last_pid") as f:
                last = int(f.read())
        except (OSError, ValueError):
            return
        if last >= first - 1:
            return
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def find_oom_counter():
    """The cgroup file whose ``oom_kill`` line counts OOM kills in this sandbox, or None."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        if read_oom_kills(path) is not None:
            return path
    return None


def read_oom_kills(path):
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
    except OSError:
        return None
    return None


class Supervisor:
    """The loop: host requests in, answers out, every child process tracked by its pidfd."""

    def __init__(self, config):
        self.uid = config.get("agent_uid")
        self.gid = config.get("agent_gid")
        self.workdir = config["workdir"]
        self.python = config.get("python") or sys.executable
        self.env = config["env"]
        self.lease_path = config.get("lease_path")
        self.lease_s = config.get("lease_s")
        self.sweep_uid = config.get("sweep_uid", False)
        self.agent_nice = AGENT_NICE if config.get("own_cgroup") else 0
        self.oom_path = find_oom_counter() if config.get("oom_events", True) else None
        self.gauges = Gauges(config.get("tmpfs") or [])
        self.heartbeat_armed = False
        self.selector = selectors.DefaultSelector()
        self.timers = []
        self.timer_seq = 0
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.commands = {}
        self.interpreter = None
        self.interpreter_lost = False
        self.cells = []
        self.file_ops = set()
        self.stopping = False
        self.spawning = 0
        self.killed = set()  # pids we SIGKILLed since their pids were last all back (hold_start)
        self.held = 0  # starts waiting for the killed to free their pids
        self.cell_held = False  # the next cell waits for pids before its interpreter starts
        self.spawn_jobs = queue.SimpleQueue()
        self.spawned = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.spawner = None
        self.spawner_failures = 0  # spawners in a row that died before they were ready
        if config.get("align_pids"):
            align_pids(FIRST_PID)
        for _ in range(POPEN_THREADS):
            threading.Thread(target=self.popen_worker, daemon=True).start()

    # -- loop -------------------------------------------------------------------------------

    def run(self):
        os.chdir(self.workdir)  # a relative cwd in a request is relative to the workspace
        if self.lease_s:
            # The lease counts from now, not from the container's creation: a start slowed by
            # a loaded engine must not eat into the time before the host's first renewal.
            self.renew(self.lease_s)
        os.set_blocking(0, False)
        self.selector.register(0, selectors.EVENT_READ, self.on_host)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self.on_spawned)
        # Serve only once the spawner is ready (or has failed): which path the first commands
        # take, and so the pids they get, must not depend on how fast it started.
        spawner = self.get_spawner()
        if spawner is not None:
            spawner.wait_ready(SPAWNER_READY_S)
        self.send({"id": 0, "event": "ready", "pid": os.getpid(), "oom": bool(self.oom_path)})
        self.flush()
        while not self.stopping:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, _ in self.selector.select(timeout):
                # An earlier callback of this batch may have closed this fd, or even reused its
                # number for a new pipe: only a key that is still registered is current.
                if self.selector.get_map().get(key.fd) is key:
                    self.guarded(key.data, key.fd)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, callback = heapq.heappop(self.timers)
                self.guarded(callback)
            self.flush()
        self.shutdown()
        self.flush()

    def guarded(self, callback, *args):
        """Run a loop callback; a bug in one must not take down every other command. The
        traceback goes to stderr, which the host logs; the host's backstop answers the caller."""
        try:
            callback(*args)
        except Exception:
            traceback.print_exc()

    def at(self, when, callback):
        self.timer_seq += 1
        heapq.heappush(self.timers, (when, self.timer_seq, callback))

    def send(self, message):
        """Queue one frame; :meth:`flush` writes every frame of a loop turn with one write, so
        answers to concurrent requests cost the engine's stream proxy one wake-up, not many."""
        data = json.dumps(message, separators=(",", ":")).encode()
        self.outbox += HEADER.pack(len(data))
        self.outbox += data

    def flush(self):
        view = memoryview(self.outbox)
        while view:
            try:
                written = os.write(1, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[written:]
        view.release()
        self.outbox.clear()

    def on_host(self, fd):
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.stopping = True
            return
        self.inbox += data
        while len(self.inbox) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.inbox)
            if len(self.inbox) < HEADER.size + size:
                break
            body = bytes(self.inbox[HEADER.size : HEADER.size + size])
            del self.inbox[: HEADER.size + size]
            self.dispatch(json.loads(body))

    def dispatch(self, request):
        rid = request["id"]
        op = request["op"]
        try:
            if op == "exec":
                self.start_command(rid, request)
            elif op == "python":
                self.cells.append(request)
                self.next_cell()
            elif op in ("write", "read", "list"):
                self.file_op(rid, request)
            elif op == "lease":
                self.renew(request["seconds"])
                self.reply(rid, {})
            elif op == "ping":
                self.reply(rid, {"pid": os.getpid()}, pressure=True)
            else:
                self.fail(rid, "InvalidRequest", f"unknown op {op!r}")
        except Exception as exc:  # a bug here must answer the request, not kill the sandbox
            self.fail(rid, "SupervisorError", f"{type(exc).__name__}: {exc}")

    def reply(self, rid, result, pressure=False):
        """Answer a request; ``pressure`` adds the resource report, the host's evidence of what
        the agent's processes were doing to the sandbox's limits."""
        message = {"id": rid, "ok": True, "result": result}
        if pressure:
            message["pressure"] = self.gauges.report()
        self.send(message)

    def arm_heartbeat(self):
        if not self.heartbeat_armed:
            self.heartbeat_armed = True
            self.at(time.monotonic() + HEARTBEAT_S, self.heartbeat)

    def heartbeat(self):
        """While agent code runs, a pressure report every HEARTBEAT_S: if the agent takes the
        supervisor down, the host knows how full the sandbox was just before."""
        self.heartbeat_armed = False
        if (self.commands or self.spawning or self.held
                or (self.interpreter and self.interpreter.cell)):
            self.send({"id": 0, "event": "pressure", "pressure": self.gauges.report()})
            self.arm_heartbeat()
            if self.spawner is not None and self.spawner.stopped():
                self.spawner.close("was stopped (SIGSTOP or the like) by the agent's processes")

    def fail(self, rid, kind, message, code=None):
        self.send({"id": rid, "ok": False, "error": {"type": kind, "message": message,
                                                      "errno": code}})

    def renew(self, seconds):
        if self.lease_path:
            deadline = math.ceil(time.time() + seconds)
            tmp = self.lease_path + ".new"
            with open(tmp, "w") as f:
                f.write(f"{deadline}\n")
            os.replace(tmp, self.lease_path)

    def shutdown(self):
        if self.spawner is not None:
            self.spawner.kill()
        for command in list(self.commands.values()):
            command.kill_session()
        if self.interpreter:
            self.interpreter.kill()
        self.sweep()
        if self.lease_path:
            self.renew(-1)

    # -- processes ---------------------------------------------------------------------------

    def spawn(self, argv, *, cwd, env, stdin, pass_fds=()):
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=pass_fds, start_new_session=True, preexec_fn=self.become_agent,
        )

    def become_agent(self):
        """In a new child, before it runs agent code: make it the kernel's first choice for an
        OOM kill, then drop to the agent's uid. Only ``os`` calls: this runs between fork and
        exec, beside the Popen threads."""
        with contextlib.suppress(OSError):
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, b"%d" % AGENT_OOM_SCORE_ADJ)
            finally:
                os.close(fd)
        os.nice(self.agent_nice)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
            os.setresuid(self.uid, self.uid, self.uid)

    def kill_session(self, sid, keep=(), group=True):
        """SIGKILL every process of session ``sid``: its group atomically (``group``: where
        ``sid`` is known to be the agent's), stragglers of the agent's uid by scan."""
        if group:
            with contextlib.suppress(OSError):
                os.killpg(sid, signal.SIGKILL)
        uid = self.agent_uid
        self.kill_where(lambda pid: session_of(pid) == sid and real_uid_of(pid) == uid, keep)

    def sweep(self):
        """SIGKILL every leftover process of the agent's uid; False where that is not safe (a
        pid namespace shared with the host, where the uid may have unrelated processes)."""
        if not self.sweep_uid:
            return False
        keep = {os.getpid(), 1}
        if self.interpreter:
            keep.add(self.interpreter.proc.pid)
        if self.spawner is not None:
            keep.add(self.spawner.proc.pid)
        self.kill_where(lambda pid: owner_of(pid) == self.agent_uid, keep)
        return True

    @property
    def agent_uid(self):
        return self.uid if self.uid is not None else os.getuid()

    def kill_where(self, match, keep):
        # A process may fork while we scan; more rounds catch the children of the last round
        # (a fork bomb refills each freed pid until every parent is dead). Then wait, briefly,
        # for the killed to be reaped (REAP_WAIT_S): our own children are left out of that wait,
        # since only this loop reaps them.
        give_up = time.monotonic() + REAP_WAIT_S
        me = os.getpid()
        rounds = 0
        while True:
            victims = [pid for pid in list_pids() if pid not in keep and match(pid)]
            self.killed.update(victims)  # what outlasts the wait holds pids: see hold_start
            if rounds >= KILL_ROUNDS:
                victims = [pid for pid in victims if parent_of(pid) != me]
            if not victims:
                return
            for pid in victims:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            rounds += 1
            if rounds >= KILL_ROUNDS:
                if time.monotonic() >= give_up:
                    return
                time.sleep(0.005)

    def idle(self):
        """No command is running and no cell is executing: a sweep cannot hit innocent work."""
        running = any(not command.concluded for command in self.commands.values())
        return not (running or self.spawning or self.file_ops
                    or (self.interpreter and self.interpreter.cell))

    def oom_kills(self):
        return read_oom_kills(self.oom_path) if self.oom_path else None

    def hold_start(self, deadline, retry, failed=None):
        """Whether a start waits for pids on their way back to the limit: True when ``retry``
        (the start again) is set to run from a timer. ``failed`` is the OSError of the start
        just tried, None before a first try. The loop serves meanwhile: heartbeats, other
        requests, the lease, and the reaping of our own killed children.

        On their way back (``draining``): a process we killed that is a zombie, in its exit, or
        with SIGKILL still pending (under load it may not run for seconds), and pids still
        counted after their processes left /proc (whoever ended them: the OOM killer's too).
        When nothing runs, whatever holds the limit is: every process of the agent is then a
        leftover, swept here. Before a try a start waits when fewer than PIDS_HEADROOM pids are
        free while any is on its way back; after an EAGAIN, while any is, or while nothing runs,
        or when the limit has room again (the try raced the drain). A limit held by the live
        processes of commands still running is nothing to wait for: the answer is the same
        "process limit reached" as ever, at once. Past ``deadline`` (the call's own) nothing
        waits: a start tries, and a failure then is the answer."""
        if failed is None and not self.killed:
            return False  # every start asks: nothing killed is pending, at the cost of a test
        if failed is not None and failed.errno != errno.EAGAIN:
            return False
        now = time.monotonic()
        if now >= deadline:
            return False
        if failed is None:
            free = self.free_pids()
            if free is None or free >= PIDS_HEADROOM or not self.draining():
                return False
        elif not (self.draining() or (self.free_pids() or 0) > 0
                  or (self.idle() and self.sweep())):
            # Full (room, read after the drain was asked about, means the try raced the drain:
            # it is tried again), no pid is on its way back, and commands are running.
            # Their live processes hold it: nothing to wait for. When nothing runs, every
            # process of the agent is a leftover: swept just now, its pid comes back, and the
            # start waits for it (a fork bomb that outran the last sweep on a starved CPU, a
            # process the OOM killer ended, ...).
            return False

        def again():
            self.held -= 1
            retry()

        self.held += 1
        self.at(min(now + PIDS_RETRY_S, deadline), again)
        self.arm_heartbeat()  # the host's evidence of the full limit while the call waits
        return True

    def free_pids(self):
        """How many more tasks the pids limit allows now; None where it cannot be read."""
        used, cap = self.gauges.number("pids"), self.gauges.number("pids_max")
        return None if used is None or cap is None else cap - used

    def draining(self):
        """Whether pids are on their way back to the limit: a process we killed that is still
        on its way out, or pids the limit still counts after /proc stopped listing their
        processes (the kernel gives a dead process's pid back after it leaves /proc; under load
        a fork bomb's were seen counted 0.3 s later: 256 counted with 4 listed). The killed are
        forgotten once nothing is on its way back."""
        if any(on_its_way_out(pid) for pid in self.killed) or self.pids_unlisted() > 0:
            return True
        self.killed.clear()
        return False

    def pids_unlisted(self):
        """How many pids the limit counts beyond the tasks (threads included) /proc lists. The
        count is read first: a task started meanwhile is listed without being counted, which
        errs toward 0, never toward a wait."""
        counted = self.gauges.number("pids")
        if counted is None:
            return 0
        listed = 0
        for pid in list_pids():
            with contextlib.suppress(OSError):  # gone meanwhile: not listed
                listed += len(os.listdir(f"/proc/{pid}/task"))
        return counted - listed

    # -- commands ----------------------------------------------------------------------------

    def get_spawner(self):
        """The spawner, started if there is none; None where it cannot be (then commands take
        the Popen path, as they did before the spawner existed)."""
        if self.spawner is not None and self.spawner.stopped():
            # Stopped between commands: replaced before it owes anything.
            self.spawner.close("was stopped (SIGSTOP or the like) by the agent's processes")
        if self.spawner is None and self.spawner_failures < SPAWNER_STARTS:
            try:
                self.spawner = Spawner(self)
            except OSError as exc:  # e.g. the agent's processes hold the pids limit
                print(f"gymbox: cannot start the spawner: {exc}", file=sys.stderr)
        return self.spawner

    def start_command(self, rid, request, started=None):
        """Hand the command to the spawner (it vforks as the agent; the answer comes back to
        the loop). Without one: spawn in the loop when nothing else is in flight; else hand the
        spawn to a Popen thread. ``Popen`` blocks until its child has exec'd (to report exec
        errors): alone, that wait costs less than a hand-off; with commands in flight, the loop
        must not wait."""
        started = time.monotonic() if started is None else started
        if self.hold_start(started + request["timeout"],
                           lambda: self.start_command(rid, request, started)):
            return
        self.arm_heartbeat()
        spawner = self.get_spawner()
        if spawner is not None and spawner.start(rid, request, started):
            return
        if self.spawning or not self.idle():
            self.spawning += 1
            self.spawn_jobs.put((rid, request, started))
        else:
            self.adopt(rid, request, started, self.launch(request, started))

    def popen_worker(self):
        """A Popen thread's body. The threads exist from the start, so spawning never needs
        a new thread (a fork bomb may have used up the pids limit by then)."""
        while True:
            rid, request, started = self.spawn_jobs.get()
            self.spawned.append((rid, request, started, self.launch(request, started)))
            os.write(self.wake_w, b"!")

    def command_env(self, request):
        env = dict(self.env)
        env.update(request.get("env") or {})
        return env

    def launch(self, request, started):
        """The Popen path: a started ``Popen`` with our ends of its pipes, or why the command
        could not start (an OSError, or a Refusal)."""
        cwd = request.get("cwd") or self.workdir
        try:
            pipes = Pipes(self, request.get("stdin") is not None)
        except OSError as exc:
            return exc
        try:
            proc = subprocess.Popen(
                request["argv"], cwd=cwd, env=self.command_env(request), stdin=pipes.child[0],
                stdout=pipes.child[1], stderr=pipes.child[2], start_new_session=True,
                preexec_fn=self.become_agent)
        except OSError as exc:
            pipes.close()
            return exc
        except ValueError as exc:  # e.g. a string the OS cannot take (the host checks first)
            pipes.close()
            return Refusal(f"the command cannot be started: {exc}")
        pipes.close_child()
        return proc, pipes

    def on_spawned(self, fd):
        os.read(fd, 4096)
        while self.spawned:
            rid, request, started, outcome = self.spawned.popleft()
            self.spawning -= 1
            self.adopt(rid, request, started, outcome)

    def adopt(self, rid, request, started, outcome):
        if isinstance(outcome, Refusal):
            self.fail(rid, "InvalidRequest", outcome.message)
            return
        if isinstance(outcome, OSError):
            self.start_failed(rid, request, started, outcome)
            return
        proc, pipes = outcome
        command = Command(self, rid, request, started, pipes)
        command.attach(proc.pid, os.pidfd_open(proc.pid), proc=proc)

    def start_failed(self, rid, request, started, exc):
        """A command could not start (either path): it starts again once the killed have
        freed their pids (``hold_start``), or the answer is exit 126 or 127, as a shell's."""
        if self.hold_start(started + request["timeout"],
                           lambda: self.start_command(rid, request, started), failed=exc):
            return
        self.reply(rid, spawn_failure(request["argv"][0], request.get("cwd") or self.workdir,
                                      exc, started))

    def next_cell(self):
        if not self.cells or self.cell_held or (self.interpreter and self.interpreter.cell):
            return
        request = self.cells[0]
        reset = self.interpreter_lost
        # A cell's clock starts when it is first taken up. A wait for pids, the interpreter's
        # start and a respawn all come out of it: the host's backstop counts from the request.
        since = request.setdefault("taken_up", time.monotonic())
        if self.interpreter is None:
            deadline = since + request["timeout"]
            if self.hold_start(deadline, self.retry_cell):
                self.cell_held = True
                return
            try:
                self.interpreter = Interpreter(self)
            except OSError as exc:
                if self.hold_start(deadline, self.retry_cell, failed=exc):
                    self.cell_held = True
                    return
                self.cells.pop(0)
                self.reply(request["id"], spawn_failure(self.python, self.workdir, exc, since))
                self.next_cell()
                return
        self.cells.pop(0)
        self.interpreter_lost = False
        self.arm_heartbeat()
        self.interpreter.run_cell(request, reset)

    def retry_cell(self):
        self.cell_held = False
        self.next_cell()

    def file_op(self, rid, request, since=None):
        """Start a file operation (a forked child), unless it waits for pids (``hold_start``)
        within its own timeout, FILE_OP_TIMEOUT_S from when it came."""
        since = time.monotonic() if since is None else since
        if not self.hold_start(since + FILE_OP_TIMEOUT_S,
                               lambda: self.file_op(rid, request, since)):
            FileOp(self, rid, request, since)


class Refusal:
    """A request the supervisor could not even try (the host's checks should have caught it)."""

    def __init__(self, message):
        self.message = message


def spawn_failure(program, cwd, exc, started):
    """The result of a command that could not start: exit 127 or 126, as a shell reports it."""
    if exc.errno == errno.EAGAIN:
        why = "the sandbox's process limit is reached"
    elif exc.filename == cwd:
        why = f"working directory {cwd}: {exc.strerror}"
    else:
        why = exc.strerror
    code = 127 if isinstance(exc, FileNotFoundError) and exc.filename != cwd else 126
    err = Capped(1 << 16)
    err.feed(f"gymbox: cannot run {program}: {why}\n".encode())
    return result_dict(code, None, Capped(0), err, False, False, started)


def result_dict(exit_code, sig, out, err, timed_out, oom, started, **extra):
    return {
        "exit_code": exit_code, "signal": sig,
        "stdout": out.text(), "stderr": err.text(),
        "stdout_bytes": out.total, "stderr_bytes": err.total,
        "truncated": out.truncated or err.truncated,
        "timed_out": timed_out, "oom_killed": oom,
        "duration_s": time.monotonic() - started, **extra,
    }


def list_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def owner_of(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def proc_status(pid):
    """``/proc/<pid>/status`` as a dict of bytes, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = {}
    for line in text.split(b"\n"):
        name, _, value = line.partition(b":")
        fields[name] = value
    return fields


def parent_of(pid):
    status = proc_status(pid)
    try:
        return int(status[b"PPid"])
    except (TypeError, KeyError, ValueError):
        return None


def real_uid_of(pid):
    status = proc_status(pid)
    try:
        return int(status[b"Uid"].split()[0])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def check_child(pid, pidfd, spawner, uid):
    """Whether ``pidfd`` is the live process ``pid``, a session leader of ``uid`` that is
    neither the spawner nor a child of ours (the interpreter): True; False when that process
    was already reaped (it ran and is gone, so there is nothing left to check or to signal);
    None when it is anything else. Its parent may be the spawner or, once the agent killed the
    spawner, init. The status is read before the pidfd's holder, so a pid still held then was
    that process when read."""
    status = proc_status(pid)
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            info = f.read()
    except OSError:
        return None
    holder = None
    for line in info.split(b"\n"):
        if line.startswith(b"Pid:"):
            holder = int(line[4:])
    if holder == -1:
        return False
    if holder != pid or status is None:
        return None
    try:
        sid = int(status[b"NSsid"].split()[0])
        ppid = int(status[b"PPid"])
        uids = [int(u) for u in status[b"Uid"].split()]
    except (KeyError, IndexError, ValueError):
        return None
    ours = ppid == os.getpid() or pid == spawner
    return True if (sid == pid and not ours and uids == [uid] * 4) else None


def on_its_way_out(pid):
    """Whether ``pid`` is dying: a zombie not yet reaped, a process in its exit, or one with
    SIGKILL pending that has not yet run to act on it. False when it is gone, or when its pid
    now names a live process (reused)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        state, flags, pending = fields[0], int(fields[6]), int(fields[28])
    except (OSError, IndexError, ValueError):
        return False
    return state in (b"Z", b"X") or bool(flags & PF_EXITING or pending & SIGKILL_PENDING)


def session_of(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def decode_status(returncode):
    if returncode < 0:
        return None, -returncode
    return returncode, None


class Pipes:
    """A command's stdin, stdout and stderr: the child's ends (for ``Popen`` or the spawner,
    closed here once handed over) and ours. Without stdin data the child's stdin is
    /dev/null."""

    def __init__(self, sup, piped_stdin):
        made = []
        try:
            for _ in range(3 if piped_stdin else 2):
                made.extend(os.pipe())
        except OSError:
            for fd in made:
                os.close(fd)
            raise
        out_r, out_w, err_r, err_w = made[:4]
        in_r, in_w = made[4:] if piped_stdin else (sup.devnull, None)
        self.child = (in_r, out_w, err_w)
        self.ours = (in_w, out_r, err_r)
        self.piped = piped_stdin

    def close_child(self):
        for fd in self.child[1:] + (self.child[:1] if self.piped else ()):
            os.close(fd)

    def close(self):
        self.close_child()
        for fd in self.ours:
            if fd is not None:
                os.close(fd)


class Command:
    """One command in flight: its pipes, its pidfd, its deadline.

    Its process comes from the spawner (``attach`` when the spawner reports the pid, and the
    exit status from the spawner after the pidfd said the process ended) or from ``Popen``
    (``attach`` at once, the status from ``wait``). The pidfd is the only word on when it
    ended; the spawner's reports are the agent's to forge and decide nothing else."""

    def __init__(self, sup, rid, request, started, pipes):
        self.sup, self.rid = sup, rid
        self.started = started
        self.grace = request["grace"]
        self.request = request
        self.argv, self.cwd = request["argv"], request.get("cwd") or sup.workdir
        self.out, self.err = Capped(request["cap"]), Capped(request["cap"])
        self.oom_before = sup.oom_kills()
        self.spawner = None  # the spawner that owes this command its pid or exit status
        self.proc = None  # the Popen, on the Popen path
        self.pid = self.pidfd = None
        self.verified = False  # pid seen alive as a session leader of the agent's uid
        self.status = None  # the wait status, once known
        self.exited = False  # the pidfd said the process ended (or it never started)
        self.lost = None  # why the exit status will never come
        self.concluded = False
        self.timed_out = False
        self.ended = None
        self.pipes = {}
        in_w, out_r, err_r = pipes.ours
        for fd, capped in ((out_r, self.out), (err_r, self.err)):
            os.set_blocking(fd, False)
            self.pipes[fd] = capped
            sup.selector.register(fd, selectors.EVENT_READ, self.on_output)
        self.stdin_fd = in_w
        self.stdin = None
        if in_w is not None:
            self.stdin = memoryview(base64.b64decode(request["stdin"]))
            os.set_blocking(in_w, False)
            sup.selector.register(in_w, selectors.EVENT_WRITE, self.on_stdin)
        sup.commands[rid] = self
        sup.at(started + request["timeout"], self.on_deadline)

    def attach(self, pid, pidfd, proc=None, verified=True):
        self.pid, self.pidfd, self.proc, self.verified = pid, pidfd, proc, verified
        self.sup.selector.register(pidfd, selectors.EVENT_READ, self.on_exit)
        if self.timed_out and verified:  # it started after its deadline
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)

    def on_output(self, fd):
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            self.pipes[fd].feed(data)
        else:
            self.close_pipe(fd)
            self.end_if_untracked_and_quiet()
            self.maybe_finish()

    def close_pipe(self, fd):
        del self.pipes[fd]
        self.sup.selector.unregister(fd)
        os.close(fd)

    def on_stdin(self, fd):
        try:
            written = os.write(fd, self.stdin[: 1 << 16])
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin: what it did not read is not our concern
            written = len(self.stdin)
        self.stdin = self.stdin[written:]
        if not self.stdin:
            self.close_stdin()

    def close_stdin(self):
        if self.stdin_fd is not None:
            self.sup.selector.unregister(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def on_exit(self, _fd):
        self.sup.selector.unregister(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None
        self.exited = True
        self.ended = time.monotonic()
        if self.proc is not None:
            self.status = self.proc.wait()
        if self.status is not None or self.lost:
            self.conclude()
        else:
            self.sup.at(self.ended + STATUS_WAIT_S, self.on_status_overdue)

    def on_status(self, status):
        self.spawner = None
        self.status = status
        if self.exited:
            self.conclude()

    def on_status_overdue(self):
        if not self.concluded and self.spawner is not None:
            self.spawner.close(f"did not report the exit status of a command {STATUS_WAIT_S:g} s "
                               "after it ended")

    def on_lost(self, why):
        """The spawner is gone: what it owed this command will never come."""
        self.spawner = None
        self.lost = why
        if self.exited:
            self.conclude()
        else:
            self.end_if_untracked_and_quiet()

    def untracked(self):
        """Started, perhaps, with no pid we know: the spawner died between starting it and
        saying so (the command itself may have killed it, as ``kill -9 -1`` does). Such a
        command may still be running and writing, so it is not over until nothing holds its
        output pipes any more (every process that could write them has exited), or its
        deadline and grace have passed; ending it sooner would sweep away a live command."""
        return self.pid is None and self.lost is not None and not self.exited

    def end_if_untracked_and_quiet(self):
        if self.untracked() and not self.pipes:
            self.end_untracked()

    def end_untracked(self):
        self.exited = True
        self.ended = time.monotonic()
        self.conclude()

    def conclude(self):
        self.concluded = True
        self.close_stdin()
        # Leftovers: when nothing else runs, every process of the agent's uid; otherwise only
        # this command's session (the rest may belong to the commands still running).
        if not (self.sup.idle() and self.sup.sweep()):
            self.kill_session()
        self.sup.at(time.monotonic() + PIPE_LINGER_S, self.on_linger)
        self.maybe_finish()

    def past_deadline(self):
        return time.monotonic() >= self.started + self.request["timeout"]

    def resend(self):
        """The spawner died before it read this command: nothing ran; start it afresh."""
        self.withdraw()
        self.sup.start_command(self.rid, self.request, self.started)

    def abandon(self, why):
        """The spawner refused it (the host's checks should have): as the Popen path would."""
        self.withdraw()
        self.sup.fail(self.rid, "InvalidRequest", why)

    def withdraw(self):
        """Forget this command before it ran: no spawner owes it anything, its pipes close."""
        self.spawner = None
        self.concluded = True
        self.close_stdin()
        for fd in list(self.pipes):
            self.close_pipe(fd)
        del self.sup.commands[self.rid]

    def kill_session(self):
        if self.pid is not None:
            # A pid not seen alive may be any process by now: no group signal to it.
            self.sup.kill_session(self.pid, group=self.verified)

    def on_deadline(self):
        if self.concluded or self.exited:
            return
        self.timed_out = True
        if self.verified:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGTERM)
        self.sup.at(time.monotonic() + self.grace, self.on_grace_over)

    def on_grace_over(self):
        if self.concluded:
            return
        if self.pid is not None and not self.exited:
            self.kill_session()
            return
        if self.pid is None and self.spawner is not None:
            self.spawner.close("did not start a command within its deadline and grace")
        if self.untracked():
            self.end_untracked()  # the sweep at its end is what stops it

    def on_linger(self):
        if self.rid in self.sup.commands and self.concluded:
            for fd in list(self.pipes):
                self.close_pipe(fd)
            self.maybe_finish()

    def maybe_finish(self):
        if not self.concluded or self.pipes or self.rid not in self.sup.commands:
            return
        del self.sup.commands[self.rid]
        exit_code, sig = decode_status(self.status) if self.status is not None else (None, None)
        if self.lost:
            self.err.feed(f"[gymbox] this command's exit status is lost: {self.lost}\n".encode())
        after = self.sup.oom_kills()
        oom = after is not None and self.oom_before is not None and after > self.oom_before
        result = result_dict(exit_code, sig, self.out, self.err, self.timed_out, oom,
                             self.started)
        result["duration_s"] = self.ended - self.started
        self.sup.reply(self.rid, result, pressure=True)


class Garbage(Exception):
    """The spawner sent what it should not have."""


class Spawner:
    """The supervisor's side of the spawner process (``SPAWNER_SOURCE``): a socket and a pidfd.

    The spawner runs as the agent's uid, so the agent may kill it, stop it, or starve it of
    CPU or fds; everything it reports is checked. One that dies, stops, stalls past a
    command's deadline or its exit, or reports what it should not is killed; the commands it
    owed a pid or an exit status end with that status lost (a note in their stderr): the
    agent's outcome. A command it never read never ran, and goes to a fresh spawner; so does
    the next command."""

    def __init__(self, sup):
        self.sup = sup
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = {"uid": sup.uid, "gid": sup.gid, "workdir": sup.workdir,
                  "oom_score_adj": AGENT_OOM_SCORE_ADJ, "nice": sup.agent_nice,
                  "limit": SPAWN_MESSAGE_MAX}
        try:
            self.proc = subprocess.Popen(
                [sup.python, "-I", "-S", "-c", SPAWNER_SOURCE, "gymbox-spawner",
                 str(theirs.fileno()), json.dumps(config)],
                pass_fds=(theirs.fileno(),), stdin=sup.devnull, stdout=sup.devnull, cwd="/",
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
        except OSError:
            self.proc.kill()
            self.proc.wait()
            ours.close()
            raise
        self.sock = ours
        ours.setblocking(False)
        self.ready = False
        self.closed = False
        self.seq = 0
        self.read_upto = 0  # the requests up to this number were read: they may have run
        self.commands = {}  # request number -> Command, until its exit status has come
        sup.selector.register(ours.fileno(), selectors.EVENT_READ, self.on_message)
        sup.selector.register(self.pidfd, selectors.EVENT_READ, self.on_death)

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while not (self.ready or self.closed):
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(f"was not ready {timeout:g} s after it started")
                return
            readable, _, _ = select.select([self.sock, self.pidfd], [], [], left)
            if self.pidfd in readable:
                self.on_death(self.pidfd)
            elif readable:
                self.on_message(self.sock.fileno())

    def stopped(self):
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state in (b"T", b"t")

    def start(self, rid, request, started):
        """Send the command; False (nothing sent) when it must take the Popen path."""
        self.seq += 1
        try:
            message = json.dumps({
                "n": self.seq, "argv": request["argv"],
                "cwd": request.get("cwd") or self.sup.workdir,
                "env": self.sup.command_env(request)}).encode()
        except ValueError:  # not UTF-8: the Popen path refuses it as it always did
            return False
        if len(message) > SPAWN_MESSAGE_MAX:
            return False
        try:
            pipes = Pipes(self.sup, request.get("stdin") is not None)
        except OSError:
            return False
        try:
            socket.send_fds(self.sock, [message], pipes.child)
        except OSError as exc:
            pipes.close()
            if not isinstance(exc, BlockingIOError) and exc.errno != errno.EMSGSIZE:
                self.close(f"could not be written to ({exc.strerror})")
            return False
        pipes.close_child()
        command = Command(self.sup, rid, request, started, pipes)
        command.spawner = self
        self.commands[self.seq] = command
        return True

    def on_message(self, _fd):
        while not self.closed:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, 4096, 2)
            except BlockingIOError:
                return
            except ConnectionResetError:  # it died with requests unread
                self.close(SPAWNER_DIED)
                return
            except OSError as exc:
                self.close(f"could not be read ({exc.strerror})")
                return
            if not data:
                self.close(SPAWNER_DIED)
                return
            try:
                self.handle(data, fds, flags)
            except (Garbage, ValueError, TypeError, KeyError, AttributeError) as exc:
                for fd in fds:
                    os.close(fd)
                self.close(f"answered what it should not ({exc or type(exc).__name__})")

    def handle(self, data, fds, flags):
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise Garbage("a truncated message")
        message = json.loads(data)
        if not self.ready:
            if fds or message != {"ready": self.proc.pid}:
                raise Garbage("not a ready message")
            self.check_ready()
            return
        if set(message) == {"read"}:
            upto = message["read"]
            if fds or type(upto) is not int or not self.read_upto <= upto <= self.seq:
                raise Garbage(f"read up to {upto!r}")
            self.read_upto = upto
            return
        n = message["n"]
        command = self.commands.get(n) if type(n) is int else None
        if command is None:
            raise Garbage(f"a message about no command of ours: {n!r}")
        keys = set(message)
        if keys == {"n", "pid"} and len(fds) == 1 and command.pid is None:
            pid = message["pid"]
            verified = check_child(pid, fds[0], self.proc.pid, self.sup.agent_uid) \
                if type(pid) is int and pid > 1 else None
            if verified is None:
                raise Garbage(f"pid {pid!r} is not the command it started")
            command.attach(pid, fds[0], verified=verified)
            return
        if fds:
            raise Garbage("file descriptors with a message that takes none")
        if keys == {"n", "status"} and command.pid is not None:
            status = message["status"]
            if type(status) is not int or not -64 <= status <= 255:
                raise Garbage(f"exit status {status!r}")
            del self.commands[n]
            command.on_status(status)
        elif keys == {"n", "errno", "strerror", "filename"} and command.pid is None:
            code, why, name = message["errno"], message["strerror"], message["filename"]
            if type(code) is not int or type(why) is not str or not isinstance(name, (str,
                                                                                     type(None))):
                raise Garbage("a malformed start failure")
            del self.commands[n]
            command.withdraw()
            self.sup.start_failed(command.rid, command.request, command.started,
                                  OSError(code, why, name))
        elif keys == {"n", "refused"} and type(message["refused"]) is str and command.pid is None:
            del self.commands[n]
            command.abandon(f"the command cannot be started: {message['refused']}")
        else:
            raise Garbage(f"an unknown message {sorted(keys)}")

    def check_ready(self):
        """It must be the agent, with no groups, and non-dumpable: its /proc files owned by
        root, so the agent's uid cannot ptrace it or read its memory. One that is not never
        will be: the Popen path serves from now on."""
        status = proc_status(self.proc.pid)
        uid = self.sup.agent_uid
        good = (status is not None and status.get(b"Uid", b"").split() == [b"%d" % uid] * 4
                and status.get(b"Groups", b"").split() == ([] if self.sup.uid is not None
                                                           else status[b"Groups"].split()))
        if good and self.sup.uid is not None:
            # The kernel gives a non-dumpable process's /proc files (not its directory) to root.
            try:
                good = os.stat(f"/proc/{self.proc.pid}/mem").st_uid == 0
            except OSError:
                good = False
        if not good:
            self.sup.spawner_failures = SPAWNER_STARTS
            self.close("did not come up as the agent's uid, without groups and non-dumpable")
            return
        self.ready = True
        self.sup.spawner_failures = 0

    def on_death(self, _fd):
        if not self.closed:
            self.on_message(self.sock.fileno())  # what it sent before it died still counts
        if not self.closed:
            self.close(SPAWNER_DIED)
        self.sup.selector.unregister(self.pidfd)
        os.close(self.pidfd)
        self.proc.wait()

    def kill(self):
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self, why):
        """Kill it, and end what it owed; its pidfd stays registered until it is reaped."""
        if self.closed:
            return
        self.closed = True
        print(f"gymbox: the spawner (pid {self.proc.pid}) {why}", file=sys.stderr)
        if not self.ready:
            self.sup.spawner_failures += 1
        self.kill()
        self.sup.selector.unregister(self.sock.fileno())
        self.sock.close()
        if self.sup.spawner is self:
            self.sup.spawner = None
        owed, self.commands = self.commands, {}
        for n, command in owed.items():
            if n > self.read_upto and not command.past_deadline():
                command.resend()  # never read, so never started: it goes to a new spawner
            else:
                command.on_lost(f"gymbox's spawner (the agent-uid process that starts "
                                f"commands) {why}")


class Interpreter:
    """The persistent Python process behind ``run_python``; runs one cell at a time."""

    def __init__(self, sup):
        self.sup = sup
        code_r, self.code_w = os.pipe()
        control_r, control_w = os.pipe()
        try:
            self.proc = sup.spawn(
                [sup.python, "-I", "-c", INTERPRETER_SOURCE, str(code_r), str(control_w)],
                cwd=sup.workdir, env=sup.env, stdin=subprocess.DEVNULL,
                pass_fds=(code_r, control_w),
            )
        except OSError:
            os.close(self.code_w)
            os.close(control_r)
            raise
        finally:
            os.close(code_r)
            os.close(control_w)
        self.control = control_r
        self.control_buffer = b""
        self.cell = None
        self.streams = {}
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            os.set_blocking(stream.fileno(), False)
            self.streams[stream.fileno()] = name
            sup.selector.register(stream.fileno(), selectors.EVENT_READ, self.on_output)
        sup.selector.register(control_r, selectors.EVENT_READ, self.on_control)
        self.pidfd = os.pidfd_open(self.proc.pid)
        sup.selector.register(self.pidfd, selectors.EVENT_READ, self.on_exit)

    def run_cell(self, request, reset):
        try:
            source = request["code"].encode("utf-8")
        except UnicodeEncodeError as exc:  # the host checks first; never wedge the interpreter
            self.sup.fail(request["id"], "InvalidRequest", f"the code is not valid UTF-8: {exc}")
            self.sup.next_cell()
            return
        self.cell = Cell(request, reset, self.sup.oom_kills())
        try:
            os.write(self.code_w, b"%d\n" % len(source))
            view = memoryview(source)
            while view:
                view = view[os.write(self.code_w, view):]
        except BrokenPipeError:
            return  # the interpreter is dying; on_exit finishes the cell
        cell = self.cell
        self.sup.at(cell.started + request["timeout"], lambda: self.on_deadline(cell))

    def on_output(self, fd):
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if data and self.cell:
            getattr(self.cell, self.streams[fd]).feed(data)

    def drain(self):
        for fd in list(self.streams):
            while True:
                try:
                    data = os.read(fd, READ_CHUNK)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                if self.cell:
                    getattr(self.cell, self.streams[fd]).feed(data)

    def on_control(self, fd):
        data = os.read(fd, 64)
        if not data:
            return self.on_exit(None)
        self.control_buffer += data
        while b"\n" in self.control_buffer:
            line, self.control_buffer = self.control_buffer.split(b"\n", 1)
            if line == b"started":
                self.cell.started_running = True
                continue
            self.drain()
            status, _, threads = line.partition(b" ")
            self.finish(int(status), None, threads=int(threads or 0))

    def on_deadline(self, cell):
        if self.cell is not cell:
            return
        cell.timed_out = True
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.sup.at(time.monotonic() + cell.request["grace"], lambda: self.on_grace_over(cell))

    def on_grace_over(self, cell):
        if self.cell is cell:
            self.sup.kill_session(self.proc.pid)

    def on_exit(self, _fd):
        if self.sup.interpreter is not self:
            return
        returncode = self.proc.wait()
        self.drain()
        self.close()
        self.sup.interpreter = None
        exit_code, sig = decode_status(returncode)
        # A fresh interpreter that dies before it begins its first cell cannot start at all
        # (its stderr, in the result, says why): answer rather than respawn it forever.
        cell = self.cell
        if cell and (cell.started_running or cell.timed_out or cell.request.get("respawned")):
            # (A cell that timed out before it began: we ended this interpreter, at its
            # deadline; a respawn would run the cell past it.)
            self.finish(exit_code, sig, reset=True)
        else:
            # It died between cells (say, the agent ran `kill -9 -1`). A cell it had not begun
            # is safe to give to a fresh interpreter; that cell's result reports the reset.
            self.sup.interpreter_lost = True
            if cell:
                self.sup.cells.insert(0, {**cell.request, "respawned": True})
                self.cell = None
        self.sup.next_cell()

    def finish(self, exit_code, sig, reset=False, threads=0):
        cell, self.cell = self.cell, None
        if reset:
            note = "[gymbox] the Python interpreter was restarted; names defined before are gone\n"
            cell.err.feed(note.encode())
        if threads:
            # A thread cannot be stopped from outside, and one left running would act between
            # calls (and differently on a replay): the interpreter goes, after this answer.
            cell.err.feed(f"[gymbox] the cell left {threads} thread(s) running: the "
                          "interpreter restarts before the next cell\n".encode())
        after = self.sup.oom_kills()
        oom = after is not None and cell.oom_before is not None and after > cell.oom_before
        result = result_dict(exit_code, sig, cell.out, cell.err, cell.timed_out, oom,
                             cell.started, interpreter_reset=reset or cell.reset)
        self.sup.reply(cell.request["id"], result, pressure=True)
        if reset:
            return
        # Processes the cell started do not outlive it (the interpreter itself stays).
        self.sup.kill_where(lambda pid: session_of(pid) == self.proc.pid, {self.proc.pid})
        if self.sup.idle():
            self.sup.sweep()
        if threads:
            self.close()
            self.sup.interpreter = None
            self.sup.interpreter_lost = True
        self.sup.next_cell()

    def kill(self):
        self.sup.kill_session(self.proc.pid)

    def close(self):
        for fd in (*self.streams, self.control, self.pidfd):
            self.sup.selector.unregister(fd)
        self.proc.stdout.close()
        self.proc.stderr.close()
        for fd in (self.control, self.pidfd, self.code_w):
            os.close(fd)
        self.sup.kill_session(self.proc.pid)


class Cell:
    def __init__(self, request, reset, oom_before):
        self.request = request
        self.reset = reset
        self.oom_before = oom_before
        self.started = request["taken_up"]  # see Supervisor.next_cell
        self.out = Capped(request["cap"])
        self.err = Capped(request["cap"])
        self.timed_out = False
        self.started_running = False


class FileOp:
    """A file operation, done by a forked child that has dropped to the agent's uid."""

    def __init__(self, sup, rid, request, since):
        self.sup, self.rid = sup, rid
        read_end, write_end = os.pipe()
        try:
            self.pid = os.fork()
        except OSError as exc:  # the agent's processes hold the pids limit: its outcome
            os.close(read_end)
            os.close(write_end)
            self.done = True
            if not sup.hold_start(since + FILE_OP_TIMEOUT_S,
                                  lambda: sup.file_op(rid, request, since), failed=exc):
                sup.fail(rid, "OSError", f"cannot start the file operation: {exc.strerror} "
                         "(the sandbox's process limit is reached?)", exc.errno)
            return
        if self.pid == 0:
            os.close(read_end)
            payload = b""
            try:
                payload = run_file_op(sup, request)
            finally:
                view = memoryview(payload)
                while view:
                    view = view[os.write(write_end, view):]
                os._exit(0)
        os.close(write_end)
        sup.file_ops.add(self)
        self.pipe = read_end
        self.data = bytearray()
        self.done = False
        os.set_blocking(read_end, False)
        sup.selector.register(read_end, selectors.EVENT_READ, self.on_data)
        sup.at(since + FILE_OP_TIMEOUT_S, self.on_deadline)

    def on_data(self, fd):
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if chunk:
            self.data += chunk
            return
        self.close()
        os.waitpid(self.pid, 0)
        try:
            message = json.loads(self.data)
        except ValueError:
            self.sup.fail(self.rid, "SupervisorError", "the file operation died before answering")
            return
        self.sup.send({"id": self.rid, **message})

    def close(self):
        self.done = True
        self.sup.file_ops.discard(self)
        self.sup.selector.unregister(self.pipe)
        os.close(self.pipe)

    def on_deadline(self):
        if self.done:
            return
        os.kill(self.pid, signal.SIGKILL)
        self.close()
        os.waitpid(self.pid, 0)
        self.sup.fail(self.rid, "OSError", f"timed out after {FILE_OP_TIMEOUT_S:.0f} s "
                      "(a FIFO or a device that never answers?)", errno.ETIMEDOUT)


def run_file_op(sup, request):
    try:
        sup.become_agent()
        os.chdir(sup.workdir)
        result = FILE_OPS[request["op"]](request)
        return json.dumps({"ok": True, "result": result}).encode()
    except OSError as exc:
        error = {"type": "OSError", "message": f"{exc.strerror}: {exc.filename or request['path']}",
                 "errno": exc.errno}
        return json.dumps({"ok": False, "error": error}).encode()


def write_file(request):
    path = request["path"]
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as f:
        f.write(base64.b64decode(request["data"]))
    os.chmod(path, request["mode"])
    return {}


def read_file(request):
    with open(request["path"], "rb") as f:
        size = os.fstat(f.fileno()).st_size
        limit = request["limit"]
        if size > limit:
            raise OSError(errno.EFBIG, f"file is {size} bytes, over the read limit of {limit}",
                          request["path"])
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"file is over the read limit of {limit} bytes",
                      request["path"])
    return {"data": base64.b64encode(data).decode()}


def list_dir(request):
    entries = []
    with os.scandir(request["path"]) as it:
        for entry in it:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                kind = "dir"
            elif stat.S_ISREG(info.st_mode):
                kind = "file"
            elif stat.S_ISLNK(info.st_mode):
                kind = "symlink"
            else:
                kind = "other"
            entries.append({"name": entry.name, "kind": kind, "size": info.st_size})
    entries.sort(key=lambda e: e["name"])
    return {"entries": entries}


FILE_OPS = {"write": write_file, "read": read_file, "list": list_dir}


if __name__ == "__main__":
    Supervisor(json.loads(sys.argv[1])).run()
