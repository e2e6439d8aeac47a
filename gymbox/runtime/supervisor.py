"""The supervisor that runs inside every sandbox. Python standard library only.

The host starts it once per sandbox, as root, over an attached exec stream: a short bootstrap
reads this file's source from the stream and runs it with the JSON config as ``argv[1]``. From
then on every command is one framed request on its stdin and one framed response on its stdout;
no network, no port.

Frames, both ways: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. Requests carry
an ``id`` that the response repeats, so many requests can be in flight at once. The first frame
the supervisor writes is ``{"id": 0, "event": "ready"}``.

Everything runs around one ``selectors`` loop, plus a few spawner threads started at boot (a
``Popen`` blocks until its child has exec'd; with other commands in flight the loop must not).
A fork bomb that exhausts the pids limit cannot stop the supervisor from serving, because
serving never needs a new thread. Answers produced in one loop turn leave in one write. Per
command:

* the command runs in its own session, as the agent's uid (no capabilities), stdin at EOF unless
  the request gives stdin;
* its exit is seen through a pidfd, so a background child holding the output pipes cannot make
  the command look alive; at exit its whole session is killed, and when no other command is
  running every leftover process of the agent's uid is swept;
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
import selectors
import signal
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
SPAWNER_THREADS = 4
HEARTBEAT_S = 0.25  # how often a pressure report goes out while agent code runs
AGENT_OOM_SCORE_ADJ = 1000  # the kernel's first choice when the sandbox's memory is full
KILL_ROUNDS = 64  # scans of /proc that a sweep may take to catch a fork bomb's last children
FIRST_PID = 100  # where the supervisor's own threads, then the agent's processes, start

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
        self.spawn_jobs = queue.SimpleQueue()
        self.spawned = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        if config.get("align_pids"):
            align_pids(FIRST_PID)
        for _ in range(SPAWNER_THREADS):
            threading.Thread(target=self.spawner, daemon=True).start()

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
                FileOp(self, rid, request)
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
        if self.commands or self.spawning or (self.interpreter and self.interpreter.cell):
            self.send({"id": 0, "event": "pressure", "pressure": self.gauges.report()})
            self.arm_heartbeat()

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
        exec, beside the spawner threads."""
        with contextlib.suppress(OSError):
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, b"%d" % AGENT_OOM_SCORE_ADJ)
            finally:
                os.close(fd)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
            os.setresuid(self.uid, self.uid, self.uid)

    def kill_session(self, sid, keep=()):
        """SIGKILL every process of session ``sid``: its group atomically, stragglers by scan."""
        with contextlib.suppress(OSError):
            os.killpg(sid, signal.SIGKILL)
        self.kill_where(lambda pid: session_of(pid) == sid, keep)

    def sweep(self):
        """SIGKILL every leftover process of the agent's uid; False where that is not safe (a
        pid namespace shared with the host, where the uid may have unrelated processes)."""
        if not self.sweep_uid:
            return False
        keep = {os.getpid(), 1}
        if self.interpreter:
            keep.add(self.interpreter.proc.pid)
        uid = self.uid if self.uid is not None else os.getuid()
        self.kill_where(lambda pid: owner_of(pid) == uid, keep)
        return True

    def kill_where(self, match, keep):
        # A process may fork while we scan; more rounds catch the children of the last round
        # (a fork bomb refills each freed pid until every parent is dead).
        for _ in range(KILL_ROUNDS):
            victims = [pid for pid in list_pids() if pid not in keep and match(pid)]
            if not victims:
                return
            for pid in victims:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def idle(self):
        """No command is running and no cell is executing: a sweep cannot hit innocent work."""
        running = any(command.returncode is None for command in self.commands.values())
        return not (running or self.spawning or self.file_ops
                    or (self.interpreter and self.interpreter.cell))

    def oom_kills(self):
        return read_oom_kills(self.oom_path) if self.oom_path else None

    # -- commands ----------------------------------------------------------------------------

    def start_command(self, rid, request):
        """Spawn in the loop when nothing else is in flight; else hand the spawn to a spawner
        thread. ``Popen`` blocks until its child has exec'd (to report exec errors): alone,
        that wait costs less than a hand-off; with commands in flight, the loop must not wait."""
        started = time.monotonic()
        self.arm_heartbeat()
        if self.spawning or not self.idle():
            self.spawning += 1
            self.spawn_jobs.put((rid, request, started))
        else:
            self.adopt(rid, request, started, self.launch(request, started))

    def spawner(self):
        """A spawner thread's body. The threads exist from the start, so spawning never needs
        a new thread (a fork bomb may have used up the pids limit by then)."""
        while True:
            rid, request, started = self.spawn_jobs.get()
            self.spawned.append((rid, request, started, self.launch(request, started)))
            os.write(self.wake_w, b"!")

    def launch(self, request, started):
        """A started ``Popen``, or the result of a command that could not start."""
        env = dict(self.env)
        env.update(request.get("env") or {})
        cwd = request.get("cwd") or self.workdir
        piped = request.get("stdin") is not None
        try:
            return self.spawn(request["argv"], cwd=cwd, env=env,
                              stdin=subprocess.PIPE if piped else subprocess.DEVNULL)
        except OSError as exc:
            return spawn_failure(request["argv"][0], cwd, exc, started)
        except ValueError as exc:  # e.g. a string the OS cannot take (the host checks first)
            return Refusal(f"the command cannot be started: {exc}")

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
        if isinstance(outcome, dict):
            self.reply(rid, outcome)
            return
        stdin = request.get("stdin")
        stdin_data = base64.b64decode(stdin) if stdin is not None else None
        self.commands[rid] = Command(self, rid, outcome, request, stdin_data, started)

    def next_cell(self):
        if not self.cells or (self.interpreter and self.interpreter.cell):
            return
        request = self.cells.pop(0)
        reset = self.interpreter_lost
        if self.interpreter is None:
            try:
                self.interpreter = Interpreter(self)
            except OSError as exc:
                self.reply(request["id"], spawn_failure(self.python, self.workdir, exc,
                                                        time.monotonic()))
                self.next_cell()
                return
        self.interpreter_lost = False
        self.arm_heartbeat()
        self.interpreter.run_cell(request, reset)


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


class Command:
    """One command in flight: its pipes, its pidfd, its deadline."""

    def __init__(self, sup, rid, proc, request, stdin_data, started):
        self.sup, self.rid, self.proc = sup, rid, proc
        self.started = started
        self.grace = request["grace"]
        self.out, self.err = Capped(request["cap"]), Capped(request["cap"])
        self.oom_before = sup.oom_kills()
        self.returncode = None
        self.timed_out = False
        self.pipes = {}
        for stream, capped in ((proc.stdout, self.out), (proc.stderr, self.err)):
            os.set_blocking(stream.fileno(), False)
            self.pipes[stream.fileno()] = (stream, capped)
            sup.selector.register(stream.fileno(), selectors.EVENT_READ, self.on_output)
        self.pidfd = os.pidfd_open(proc.pid)
        sup.selector.register(self.pidfd, selectors.EVENT_READ, self.on_exit)
        self.stdin = None
        if stdin_data is not None:
            self.stdin = memoryview(stdin_data)
            os.set_blocking(proc.stdin.fileno(), False)
            sup.selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE, self.on_stdin)
        sup.at(started + request["timeout"], self.on_deadline)

    def on_output(self, fd):
        _stream, capped = self.pipes[fd]
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            capped.feed(data)
        else:
            self.close_pipe(fd)
            self.maybe_finish()

    def close_pipe(self, fd):
        stream, _ = self.pipes.pop(fd)
        self.sup.selector.unregister(fd)
        stream.close()

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
        if self.proc.stdin and not self.proc.stdin.closed:
            if self.stdin is not None:
                self.sup.selector.unregister(self.proc.stdin.fileno())
            self.proc.stdin.close()

    def on_exit(self, _fd):
        self.sup.selector.unregister(self.pidfd)
        os.close(self.pidfd)
        self.returncode = self.proc.wait()
        self.ended = time.monotonic()
        self.close_stdin()
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        # Leftovers: when nothing else runs, every process of the agent's uid; otherwise only
        # this command's session (the rest may belong to the commands still running).
        if not (self.sup.idle() and self.sup.sweep()):
            self.kill_session()
        self.sup.at(time.monotonic() + PIPE_LINGER_S, self.on_linger)
        self.maybe_finish()

    def kill_session(self):
        self.sup.kill_session(self.proc.pid)

    def on_deadline(self):
        if self.returncode is not None:
            return
        self.timed_out = True
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.sup.at(time.monotonic() + self.grace, self.on_grace_over)

    def on_grace_over(self):
        if self.returncode is None:
            self.kill_session()

    def on_linger(self):
        if self.rid in self.sup.commands and self.returncode is not None:
            for fd in list(self.pipes):
                self.close_pipe(fd)
            self.maybe_finish()

    def maybe_finish(self):
        if self.returncode is None or self.pipes or self.rid not in self.sup.commands:
            return
        del self.sup.commands[self.rid]
        exit_code, sig = decode_status(self.returncode)
        after = self.sup.oom_kills()
        oom = after is not None and self.oom_before is not None and after > self.oom_before
        result = result_dict(exit_code, sig, self.out, self.err, self.timed_out, oom,
                             self.started)
        result["duration_s"] = self.ended - self.started
        self.sup.reply(self.rid, result, pressure=True)


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
        if self.cell and (self.cell.started_running or self.cell.request.get("respawned")):
            self.finish(exit_code, sig, reset=True)
        else:
            # It died between cells (say, the agent ran `kill -9 -1`). A cell it had not begun
            # is safe to give to a fresh interpreter; that cell's result reports the reset.
            self.sup.interpreter_lost = True
            if self.cell:
                self.sup.cells.insert(0, {**self.cell.request, "respawned": True})
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
        self.started = time.monotonic()
        self.out = Capped(request["cap"])
        self.err = Capped(request["cap"])
        self.timed_out = False
        self.started_running = False


class FileOp:
    """A file operation, done by a forked child that has dropped to the agent's uid."""

    def __init__(self, sup, rid, request):
        self.sup, self.rid = sup, rid
        read_end, write_end = os.pipe()
        try:
            self.pid = os.fork()
        except OSError as exc:  # the agent's processes hold the pids limit: its outcome
            os.close(read_end)
            os.close(write_end)
            self.done = True
            sup.fail(rid, "OSError", f"cannot start the file operation: {exc.strerror} (the "
                     "sandbox's process limit is reached?)", exc.errno)
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
        sup.at(time.monotonic() + FILE_OP_TIMEOUT_S, self.on_deadline)

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
