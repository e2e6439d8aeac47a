"""Host work under a deadline: tools and graders that run on the host run in worker processes.

The model's text reaches host code through tool arguments (a calculator's expression) and
final answers (a verifier's input). A CPU-bound computation in pure Python cannot be interrupted
in a thread, so every such call runs in a worker process that is killed when its deadline
passes: ``env.step`` returns on time, and the host is not left computing
``((9**64)**64)**64`` in the background. Each worker has a memory limit (an allocation past it
is a ``MemoryError`` in the worker, not the host's OOM killer) and its stdout goes nowhere, so
nothing a tool prints reaches the protocol; results larger than :data:`MAX_RESULT_BYTES` are
refused.

What runs is pickled with ``cloudpickle`` (a dependency of gymnasium), so closures and functions
defined in tests or ``__main__`` work; the worker sees *copies*: a host tool cannot change the
host's state. Workers start on first use (about a second) and are reused; a killed or crashed
worker is replaced on the next call.

Every outcome is one of: the function's value; the
:class:`~gymbox.runtime.errors.InfraError` it raised (the platform's failure, as the tool says);
:class:`HostTimeout`; :class:`HostCrashed` (the worker died: a segfault, the memory limit hit
outside Python); or :class:`HostRaised` (the function raised: the exception's type name and
message, since arbitrary exceptions do not always survive pickling).

Example:
    >>> run_on_host(pow, 2, 10, timeout_s=10)
    1024
    >>> try:
    ...     run_on_host(eval, "sum(range(10**12))", timeout_s=0.5)
    ... except HostTimeout as exc:
    ...     print(exc)
    the host computation ran past its 0.5 s deadline and was stopped
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

MEMORY_LIMIT_BYTES = 2 << 30
"""Address space a worker may use (2 GiB): a computation that wants more gets ``MemoryError``."""
MAX_RESULT_BYTES = 16 << 20
"""The largest pickled result a worker sends back (16 MiB)."""
WORKERS = 2
"""Worker processes per host process: host work is short; more would only hold memory."""

_HEADER = struct.Struct(">Q")
STARTUP_TIMEOUT_S = 120.0
"""How long a new worker may take to start (imports on a loaded machine); not the call's time."""


class HostWorkError(Exception):
    """A function run by :func:`run_on_host` did not return a value."""


class HostTimeout(HostWorkError, TimeoutError):
    """The function ran past its deadline; its worker was killed."""


class HostCrashed(HostWorkError):
    """The worker died while running the function (a crash, not a Python exception)."""


class HostRaised(HostWorkError):
    """The function raised. ``type_name`` is the exception's class name (``ValueError``...)."""

    def __init__(self, type_name: str, message: str, *, tool_error: bool = False) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.tool_error = tool_error
        """True when it was a :class:`~gymbox.envs.errors.ToolError`: the tool's own message
        for the agent."""


def run_on_host(function: Callable[..., Any], *args: Any, timeout_s: float,
                **kwargs: Any) -> Any:
    """Run ``function(*args, **kwargs)`` in a worker process and return its value.

    Blocking: call it from a thread (``asyncio.to_thread``) on an event loop. The deadline
    counts from when a worker takes the call: waiting for a free worker, or for one to start,
    is not the function's time.

    Raises:
        HostTimeout, HostCrashed, HostRaised: see the module docstring.
        ValueError: ``timeout_s`` is not a finite positive number.
    """
    if not (isinstance(timeout_s, int | float) and 0 < timeout_s < float("inf")):
        raise ValueError(f"timeout_s must be a finite positive number, got {timeout_s!r}")
    payload = cloudpickle.dumps((function, args, kwargs))
    return _workers().run(payload, timeout_s)


class _Worker:
    """One worker process and its pipes. Used by one call at a time."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The worker imports what the pickled function refers to, by the host's own paths.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["GYMBOX_HOST_MEMORY"] = str(MEMORY_LIMIT_BYTES)
        for threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[threads] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        try:
            self._read(_HEADER.size, time.monotonic() + STARTUP_TIMEOUT_S)
        except (_Broken, EOFError, OSError):
            self.kill()
            raise

    def call(self, payload: bytes, timeout_s: float) -> bytes:
        """Send one call and return the pickled reply."""
        assert self.process.stdin is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            self.process.stdin.write(_HEADER.pack(len(payload)) + payload)
            self.process.stdin.flush()
            (size,) = _HEADER.unpack(self._read(_HEADER.size, deadline))
            if size > MAX_RESULT_BYTES:
                raise _Broken("result")
            return self._read(size, deadline)
        except (EOFError, OSError) as exc:
            raise _Broken("crashed") from exc

    def _read(self, n: int, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        chunks: list[bytes] = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise _Broken("timeout")
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        # The whole session: processes the function started die with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]


class _Broken(Exception):
    """The worker cannot be used again: ``reason`` is timeout, crashed or result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Workers:
    """Up to :data:`WORKERS` workers, shared by every thread and event loop of the process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        for _ in range(WORKERS):
            self._replace_soon()  # all start at once, in the background

    def run(self, payload: bytes, timeout_s: float) -> Any:
        worker = self._idle.get()
        if worker is None:
            try:
                worker = self._start()
            except (_Broken, EOFError, OSError) as exc:
                self._idle.put(None)
                raise HostCrashed(f"a host worker process could not start ({exc!r})") from exc
        try:
            reply = worker.call(payload, timeout_s)
        except _Broken as broken:
            self._retire(worker)
            worker = None
            self._replace_soon()
            if broken.reason == "timeout":
                raise HostTimeout(f"the host computation ran past its {timeout_s:g} s deadline "
                                  "and was stopped") from None
            if broken.reason == "result":
                raise HostRaised("ValueError", f"the result is larger than {MAX_RESULT_BYTES} "
                                 "bytes") from None
            raise HostCrashed("the host worker process died while computing") from None
        finally:
            if worker is not None:
                self._idle.put(worker)
        try:
            status, value = pickle.loads(reply)
        except Exception as exc:  # a value the host cannot load is no value
            raise HostRaised(type(exc).__name__, f"the result cannot be loaded: {exc}") from None
        if status == "ok":
            return value
        if status == "infra":
            kind, message = value
            raise kind(message)
        raise HostRaised(*value[:2], tool_error=value[2])

    def _replace_soon(self) -> None:
        """Start a worker (a first one, or the replacement of a killed one) in the background,
        so that the next call finds it ready; if it cannot start, the slot is left empty for
        the next call to try."""

        def start() -> None:
            try:
                self._idle.put(self._start())
            except (_Broken, EOFError, OSError):
                self._idle.put(None)

        threading.Thread(target=start, daemon=True, name="gymbox-host-worker-start").start()

    def _start(self) -> _Worker:
        worker = _Worker()
        with self._lock:
            self._all.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)
        worker.kill()

    def close(self) -> None:
        with self._lock:
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()


_shared: _Workers | None = None
_shared_lock = threading.Lock()


def _workers() -> _Workers:
    global _shared
    with _shared_lock:
        # A forked child (a rollout worker process) must not share its parent's pipes.
        if _shared is None or _shared.pid != os.getpid():
            _shared = _Workers()
        return _shared


@atexit.register
def _close_workers() -> None:
    if _shared is not None and _shared.pid == os.getpid():
        _shared.close()


# -- inside the worker ----------------------------------------------------------------------------

# The worker runs this source with ``python -c``: no ``__main__`` of the host is re-imported. It
# preloads gymbox.envs (what tools and verifiers refer to) before it says it is ready, so that
# import time never counts against a call's deadline.
_WORKER_SOURCE = """
import os, pickle, resource, struct, sys, threading, time
host = os.getppid()

def orphaned():  # the host died (even by SIGKILL): stop whatever is computing
    while os.getppid() == host:
        time.sleep(1.0)
    os._exit(1)

threading.Thread(target=orphaned, daemon=True).start()
limit = int(os.environ["GYMBOX_HOST_MEMORY"])
try:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except (ValueError, OSError):  # a hard limit already below ours stands, which is stricter
    pass
requests, replies = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(devnull, 0)
os.dup2(devnull, 1)  # what a function prints must not reach the reply pipe
sys.stdout = open(os.devnull, "w")
import gymbox.envs
from gymbox.envs.errors import ToolError
from gymbox.runtime.errors import InfraError
HEADER = struct.Struct(">Q")

def describe(exc):
    try:
        message = str(exc)
    except Exception:
        message = ""
    return type(exc).__name__, message[:2000], isinstance(exc, ToolError)

replies.write(HEADER.pack(0))
replies.flush()
while True:
    header = requests.read(HEADER.size)
    if len(header) < HEADER.size:
        break
    payload = requests.read(HEADER.unpack(header)[0])
    try:
        function, args, kwargs = pickle.loads(payload)
        reply = pickle.dumps(("ok", function(*args, **kwargs)))
    except BaseException as exc:
        try:
            if isinstance(exc, InfraError):  # the platform's failure, declared by the tool
                reply = pickle.dumps(("infra", (type(exc), str(exc))))
            else:
                reply = pickle.dumps(("raised", describe(exc)))
        except BaseException:
            reply = pickle.dumps(("raised", ("Exception", "", False)))
    replies.write(HEADER.pack(len(reply)) + reply)
    replies.flush()
"""
