"""Sandbox: run an agent's commands and Python cells, and touch its files.

Async first. Every call validates its arguments before anything runs (:class:`InvalidRequest`),
returns the agent's outcome as an :class:`ExecResult`, and raises an :class:`InfraError` only
when the platform failed:

* the engine reports the sandbox paused while a call waits (a supervisor silent for half of
  ``spec.liveness_probe_s`` is pinged, and a ping unanswered for the other half makes the host
  ask the engine), or no answer comes within the call's backstop (``timeout + grace_s +
  backstop_margin_s``):
  :class:`SandboxUnresponsive`;
* the supervisor's stream ended and the instance is gone or stopped: :class:`SandboxDied`;
* the stream ended but the instance still runs, after the request had been sent: the command may
  have run and the answer is lost, so :class:`AmbiguousExecution` (requests are never re-sent);
* the engine cannot be asked: :class:`EngineUnavailable`.

After any of these the sandbox is broken: every later call raises :class:`SandboxDied` with
``retry_safe=True`` (nothing was sent), and the caller takes a fresh sandbox. The failure
carries the platform's :class:`~gymbox.runtime.attribution.Evidence` (``error.evidence``): the
engine's record and events for the instance around the call, and the supervisor's last
resource-pressure report; :func:`~gymbox.runtime.attribution.attribute` decides who caused it.

Arguments are checked on the host before anything is sent (:class:`InvalidRequest`, and the
sandbox stays usable): strings must be text UTF-8 can carry (no lone surrogates, no NUL),
timeouts finite, positive and at most ``spec.max_timeout_s``, ``env`` a ``str`` → ``str``
mapping, payloads (``stdin``, ``write_file`` data) at most ``spec.read_limit_bytes`` and within
the workspace, modes between 0 and 0o7777.

File operations run as the agent's uid; their own failures (no such file, permission denied)
raise the matching built-in ``OSError`` subclass, as ``open()`` would.

:class:`SyncSandbox` is the sync twin for Gymnasium's sync API: it owns a :class:`Sandbox` that
lives on one background event-loop thread shared by every sync object in the process, and each
method blocks on the coroutine run there.

Example:
    >>> async def main():
    ...     async with await Sandbox.open() as sandbox:
    ...         result = await sandbox.exec("echo hello", timeout=10)
    ...         return result.stdout
    >>> asyncio.run(main())  # doctest: +SKIP
    'hello\\n'
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from gymbox.runtime.attribution import Evidence, Pressure
from gymbox.runtime.backend import Backend, Instance, InstanceState
from gymbox.runtime.backends import select_backend
from gymbox.runtime.channel import Channel, Garbled, LinkLost, RemoteError
from gymbox.runtime.errors import (
    AmbiguousExecution,
    ConfigurationError,
    InfraError,
    InvalidRequest,
    SandboxDied,
    SandboxStartError,
    SandboxUnresponsive,
    SupervisorFault,
)
from gymbox.runtime.result import ExecResult
from gymbox.runtime.spec import MiB, SandboxSpec

T = TypeVar("T")
POSTMORTEM_S = 10.0
"""The most time gathering the evidence of a failure may take (the engine may be down)."""

READY_TIMEOUT_S = 30.0
DIAGNOSE_LOOKS = 3
FILE_OP_BACKSTOP_S = 35.0  # the supervisor gives up on a file operation after 30 s


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of :meth:`Sandbox.list_dir`."""

    name: str
    kind: Literal["file", "dir", "symlink", "other"]
    size: int


class Sandbox:
    """One isolated place to run an agent's tool calls. Make one with :meth:`open`.

    Calls may run concurrently; each is matched to its answer by id.
    """

    def __init__(self, instance: Instance, channel: Channel, spec: SandboxSpec,
                 backend_name: str) -> None:
        self._instance = instance
        self._channel = channel
        self.spec = spec
        self.backend_name = backend_name
        self._broken: InfraError | None = None
        self._closed = False
        self._touched = False  # a call other than the health check's ping has been sent
        self._lease_task = asyncio.create_task(self._renew_lease())
        self._watched = 0  # calls waiting that the liveness watch covers
        self._last_call = 0.0
        self._watch_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, spec: SandboxSpec | None = None, *,
                   backend: Backend | None = None) -> Sandbox:
        """Start a sandbox and wait until its supervisor answers.

        ``backend`` defaults to :func:`gymbox.runtime.select_backend` (Docker, unless
        ``GYMBOX_BACKEND=local`` asks for the local backend; never a silent fallback).

        Raises:
            SandboxStartError, EngineUnavailable: no sandbox could be started; nothing is
                left behind.
            ImageMissing, ConfigurationError: the image is not there, or the engine rejected
                the spec's settings; the message says what to fix.
        """
        spec = spec or SandboxSpec()
        backend = backend or select_backend()
        instance = await backend.launch(spec)
        channel = Channel(instance.link)
        try:
            await channel.wait_ready(READY_TIMEOUT_S)
        except BaseException as exc:
            channel.close()
            with contextlib.suppress(Exception):
                await asyncio.shield(instance.destroy())
            if isinstance(exc, LinkLost | Garbled | TimeoutError):
                raise SandboxStartError(
                    f"the supervisor in a sandbox of {spec.image} did not say it was ready "
                    f"({exc}); its own messages are logged as warnings", cause=exc) from exc
            raise
        return cls(instance, channel, spec, backend.name)

    @property
    def id(self) -> str:
        """The backend's id of this sandbox (the container id for Docker)."""
        return self._instance.id

    @property
    def workdir(self) -> str:
        """The agent's working directory: where relative paths and commands start."""
        return self._instance.workdir

    @property
    def instance(self) -> Instance:
        """The backend's handle, for fault injection and diagnostics."""
        return self._instance

    @property
    def broken(self) -> InfraError | None:
        """The failure that made this sandbox unusable, or None while it is healthy."""
        return self._broken

    @property
    def untouched(self) -> bool:
        """True while nothing but :meth:`ping` was ever sent to the supervisor, and the sandbox
        is open and healthy: nothing anyone asked for has run in it, so it is as it started."""
        return not self._touched and self._broken is None and not self._closed

    def hand_on(self) -> Sandbox:
        """A new handle on this :attr:`untouched` sandbox, for its next holder; this handle is
        closed (every later call through it is refused) but the sandbox keeps running. A pool
        hands an episode's unused sandbox to the next episode this way, so that whoever kept
        the old handle cannot reach the sandbox of someone else's episode.

        Raises:
            InvalidRequest: the sandbox is not untouched; close it instead.

        Example:
            >>> kept = sandbox  # doctest: +SKIP
            >>> if sandbox.untouched:  # doctest: +SKIP
            ...     sandbox = sandbox.hand_on()
            >>> await kept.exec("true")  # doctest: +SKIP
            Traceback (most recent call last):
            gymbox.runtime.errors.InvalidRequest: ...
        """
        if not self.untouched:
            raise InvalidRequest("only an untouched sandbox can be handed on; close this one")
        self._closed = True
        self._lease_task.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()
        return Sandbox(self._instance, self._channel, self.spec, self.backend_name)

    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
    ) -> ExecResult:
        """Run a command as the agent and return what it did.

        ``cmd`` is a shell string (run by ``/bin/sh -c``) or an argv list. The command gets its
        own session, stdin at EOF unless ``stdin`` is given, and ``timeout`` seconds (default
        ``spec.default_timeout_s``) before SIGTERM, then SIGKILL after ``spec.grace_s``.

        Raises:
            InvalidRequest: bad arguments; nothing ran.
            InfraError: the platform failed (see the module docstring).

        Example:
            >>> (await sandbox.exec(["echo", "hi"], timeout=5)).stdout  # doctest: +SKIP
            'hi\\n'
        """
        argv = _argv(cmd)
        deadline = self._timeout(timeout)
        fields: dict[str, Any] = {"argv": argv, "timeout": deadline, "grace": self.spec.grace_s,
                                  "cap": self.spec.output_cap_bytes}
        if cwd is not None:
            fields["cwd"] = _text("cwd", cwd)
        if env is not None:
            fields["env"] = _env(env)
        if stdin is not None:
            fields["stdin"] = base64.b64encode(self._payload("stdin", stdin)).decode()
        answer = await self._call("exec", self._backstop(deadline),
                                  fields)
        return _result(answer)

    async def run_python(self, code: str, *, timeout: float | None = None) -> ExecResult:
        """Run a cell in the sandbox's persistent Python interpreter, as the agent.

        Names defined by one cell are visible to the next. The value of a final expression is
        printed (like a notebook). An exception gives ``exit_code=1`` and the traceback on
        stderr. A timeout or a crash kills the interpreter: the result says
        ``interpreter_reset=True`` and the next cell starts from a fresh one.

        Example:
            >>> await sandbox.run_python("x = 20")  # doctest: +SKIP
            >>> (await sandbox.run_python("x * 2 + 2")).stdout  # doctest: +SKIP
            '42\\n'
        """
        if not isinstance(code, str):
            raise InvalidRequest(f"code must be a str of Python source, got {type(code).__name__}")
        if "\0" in code:
            raise InvalidRequest("code contains a NUL byte, which Python source cannot contain")
        _encodable("code", code)
        deadline = self._timeout(timeout)
        answer = await self._call(
            "python", self._backstop(deadline),
            {"code": code, "timeout": deadline, "grace": self.spec.grace_s,
             "cap": self.spec.output_cap_bytes},
        )
        return _result(answer)

    async def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` (relative to :attr:`workdir`), creating parent folders.

        Raises:
            PermissionError, IsADirectoryError, OSError: the agent may not write there.
        """
        raw = self._payload("data", data)
        limit = min(self.spec.fsize_mb, int(self.spec.workspace_mb or 0)) * MiB
        if len(raw) > limit:
            raise InvalidRequest(f"data is {len(raw)} bytes, more than the workspace or a file "
                                 f"may hold ({limit} bytes)")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise InvalidRequest(f"mode must be an int from 0 to 0o7777, e.g. 0o644, got {mode!r}")
        await self._call("write", FILE_OP_BACKSTOP_S, {
            "path": _text("path", path), "data": base64.b64encode(raw).decode(), "mode": mode})

    async def read_file(self, path: str) -> bytes:
        """The bytes of ``path`` (at most ``spec.read_limit_bytes``; a larger file raises
        ``OSError(EFBIG)``)."""
        answer = await self._call("read", FILE_OP_BACKSTOP_S, {
            "path": _text("path", path), "limit": self.spec.read_limit_bytes})
        return base64.b64decode(answer["data"])

    async def list_dir(self, path: str = ".") -> list[DirEntry]:
        """The entries of the folder ``path``, sorted by name."""
        answer = await self._call("list", FILE_OP_BACKSTOP_S, {"path": _text("path", path)})
        return [DirEntry(e["name"], e["kind"], e["size"]) for e in answer["entries"]]

    async def ping(self, *, timeout: float = 5.0) -> None:
        """Check that the supervisor answers (used by the pool's health check)."""
        await self._call("ping", timeout, {})

    async def close(self) -> None:
        """Destroy the sandbox and everything in it. Idempotent."""
        if self.shut():
            await self._instance.destroy()

    def shut(self) -> bool:
        """Refuse every later call at once and end the supervisor (its stdin closes: it kills
        every command and exits); only :meth:`close`'s removal of the instance is left to do.

        Returns:
            True the first time, when the caller is the one to remove the instance.
        """
        if self._closed:
            return False
        self._closed = True
        self._lease_task.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._channel.close()
        return True

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return float(self.spec.default_timeout_s)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidRequest(f"timeout must be a number of seconds, got {timeout!r}")
        if not math.isfinite(timeout) or timeout <= 0:
            raise InvalidRequest(
                f"timeout must be a positive, finite number of seconds, got {timeout!r}; "
                "pass e.g. timeout=10")
        if timeout > self.spec.max_timeout_s:
            raise InvalidRequest(
                f"timeout {timeout:g} s is over the sandbox's maximum of "
                f"{self.spec.max_timeout_s:g} s (SandboxSpec.max_timeout_s)")
        return float(timeout)

    def _payload(self, name: str, data: object) -> bytes:
        if not isinstance(data, bytes | str):
            raise InvalidRequest(f"{name} must be bytes or str, got {type(data).__name__}")
        raw = _encodable(name, data).encode() if isinstance(data, str) else data
        if len(raw) > self.spec.read_limit_bytes:
            raise InvalidRequest(
                f"{name} is {len(raw)} bytes, more than one call carries "
                f"({self.spec.read_limit_bytes} bytes, SandboxSpec.read_limit_bytes)")
        return raw

    def _backstop(self, deadline: float) -> float:
        return deadline + self.spec.grace_s + self.spec.backstop_margin_s

    async def _call(self, op: str, backstop_s: float, fields: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise InvalidRequest("this sandbox is closed; open a new one")
        if self._broken is not None:
            error = SandboxDied(f"this sandbox is broken ({self._broken}); take a fresh one",
                                cause=self._broken)
            error.retry_safe = True
            raise error
        # Set before sending: a call that fails on the way may still have run.
        self._touched = self._touched or op != "ping"
        watched = backstop_s > self.spec.liveness_probe_s
        sent_at = time.time()
        if watched:
            self._watched += 1
            self._last_call = time.monotonic()
            if self._watch_task is None or self._watch_task.done():
                self._watch_task = asyncio.create_task(self._watch())
        try:
            return await self._channel.call(op, backstop_s, **fields)
        except RemoteError as exc:
            raise _remote(exc) from None
        except InfraError as exc:  # the liveness watch's finding
            self._broken = exc
        except TimeoutError as exc:
            self._broken = SandboxUnresponsive(
                f"the supervisor did not answer {op!r} within the {backstop_s:.1f} s backstop",
                cause=exc)
        except Garbled as exc:
            self._broken = SupervisorFault(str(exc), cause=exc)
        except LinkLost as exc:
            self._broken = await self._diagnose(exc)
        finally:
            self._watched -= watched
        # A retry-safe failure ran nothing of the call: its cause is not in question.
        if self._broken.evidence is None and not self._broken.retry_safe:
            self._broken.evidence = await self._observe(sent_at)
        raise self._broken

    async def _observe(self, since: float) -> Evidence | None:
        """What the platform saw of this sandbox since ``since`` (``time.time()``): the backend's
        postmortem of the instance, with the supervisor's last pressure report."""
        pressure = None
        if self._channel.last_pressure is not None:
            at, report = self._channel.last_pressure
            pressure = Pressure.from_wire(report, age_s=time.monotonic() - at)
        try:
            async with asyncio.timeout(POSTMORTEM_S):
                evidence = await self._instance.postmortem(since)
        except TimeoutError:
            evidence = Evidence(engine_answered=False)
        except Exception:  # evidence is best effort: without it the failure is ambiguous
            return None
        return replace(evidence, pressure=pressure)

    async def _watch(self) -> None:
        """The liveness watch: runs while watched calls wait, and fails them all with
        :class:`SandboxUnresponsive` as soon as the engine says that the sandbox is paused.

        Silence alone proves nothing (a command may print nothing for minutes, and the host's
        event loop may be late), so a supervisor silent for half of ``liveness_probe_s`` is
        pinged (it answers pings while commands run), and only a ping unanswered for the other
        half makes the host ask the engine. A stopped sandbox needs no watch: its stream ends,
        and :meth:`_diagnose` says why. One watch serves every call in flight, and costs a call
        nothing unless it waits longer than half a probe.
        """
        probe = self.spec.liveness_probe_s / 2
        while self._watched:
            quiet = time.monotonic() - max(self._channel.last_heard, self._last_call)
            if quiet < probe:
                await asyncio.sleep(probe - quiet)
                continue
            try:
                await self._channel.call("ping", probe)
                continue
            except TimeoutError:
                pass
            except (LinkLost, Garbled):
                return  # the waiting calls fail the same way
            try:
                state = await self._instance.state()
            except InfraError:
                continue  # the engine cannot tell now; each call's backstop still bounds it
            if state is InstanceState.PAUSED:
                self._channel.abort(SandboxUnresponsive(
                    f"the sandbox is paused: its supervisor did not answer a ping within "
                    f"{probe:g} s, and the engine reports it paused"))
                return

    async def _diagnose(self, lost: LinkLost) -> InfraError:
        """Why did the stream end? The instance's state decides (may raise EngineUnavailable)."""
        # A container being killed closes its streams a moment before the engine reports it
        # stopped: look a few times before calling a live container's lost stream ambiguous.
        for attempt in range(DIAGNOSE_LOOKS):
            try:
                state = await self._instance.state()
            except InfraError as exc:
                if lost.sent:  # the engine went away with the request: it may have run
                    exc.retry_safe = False
                return exc
            if state in (InstanceState.EXITED, InstanceState.GONE):
                return SandboxDied(f"the sandbox {state.value} ({lost})", cause=lost)
            if attempt < DIAGNOSE_LOOKS - 1:
                await asyncio.sleep(0.1)
        if lost.sent:
            return AmbiguousExecution(
                f"the supervisor stream broke after the request was sent ({lost}); "
                "it may have run, and its result is lost", cause=lost)
        error = SandboxDied(f"the supervisor stream is gone ({lost})", cause=lost)
        error.retry_safe = True
        return error

    async def _renew_lease(self) -> None:
        period = self.spec.lease_s / 3
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(Exception):  # a failure here surfaces on the next call
                await self._channel.call("lease", period, seconds=self.spec.lease_s)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name} must be a non-empty str, got {value!r}")
    if "\0" in value:
        raise InvalidRequest(f"{name} contains a NUL byte: {value!r}")
    return _encodable(name, value)


def _encodable(name: str, value: str) -> str:
    """``value``, if UTF-8 can carry it to the sandbox (a lone surrogate cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{name} contains {value[exc.start:exc.end]!r} at index {exc.start}, a lone "
            "surrogate that UTF-8 cannot carry; pass valid text (or bytes, for data and "
            "stdin)") from None
    return value


def _argv(cmd: str | Sequence[str]) -> list[str]:
    if isinstance(cmd, str):
        if not cmd.strip():
            raise InvalidRequest("the command is empty; pass a shell string or an argv list")
        return ["/bin/sh", "-c", _text("command", cmd)]
    if isinstance(cmd, bytes) or not isinstance(cmd, Sequence):
        raise InvalidRequest(f"the command must be a str or a list of str, got {cmd!r}")
    argv = list(cmd)
    if not argv:
        raise InvalidRequest("the argv list is empty; give at least the program to run")
    for index, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise InvalidRequest(f"argv[{index}] must be a str, got {arg!r}")
        if "\0" in arg:
            raise InvalidRequest(f"argv[{index}] contains a NUL byte: {arg!r}")
        _encodable(f"argv[{index}]", arg)
    if not argv[0]:
        raise InvalidRequest("argv[0] is empty; name the program to run")
    return argv


def _env(env: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise InvalidRequest(f"env must be a mapping of str to str, got {type(env).__name__}")
    checked = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidRequest(f"environment variable name {key!r} is not valid")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidRequest(f"environment variable {key} must be a str without NUL bytes, "
                                 f"got {value!r}")
        checked[_encodable("env name", key)] = _encodable(f"env[{key!r}]", value)
    return checked


def _result(answer: dict[str, Any]) -> ExecResult:
    try:
        return ExecResult(**answer)
    except TypeError as exc:
        raise SupervisorFault(f"the supervisor's result does not fit ExecResult: {exc}",
                              cause=exc) from exc


def _remote(exc: RemoteError) -> Exception:
    if exc.kind == "OSError" and exc.errno is not None:
        return OSError(exc.errno, str(exc))
    if exc.kind == "InvalidRequest":
        return InvalidRequest(str(exc))
    if exc.kind == "ConfigurationError":
        return ConfigurationError(str(exc))
    return SupervisorFault(f"the supervisor failed: {exc}", cause=exc)


class _LoopThread:
    """The one background event loop that every sync facade in the process runs on."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T]) -> T:
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, name="gymbox-sync-loop",
                                 daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, cls._loop).result()


class SyncSandbox:
    """The blocking twin of :class:`Sandbox`, with the same methods and semantics.

    Example:
        >>> with SyncSandbox.open() as sandbox:  # doctest: +SKIP
        ...     print(sandbox.run_python("6 * 7").stdout)
        42
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    @classmethod
    def open(cls, spec: SandboxSpec | None = None, *,
             backend: Backend | None = None) -> SyncSandbox:
        return cls(_LoopThread.run(Sandbox.open(spec, backend=backend)))

    @property
    def id(self) -> str:
        return self.sandbox.id

    @property
    def workdir(self) -> str:
        return self.sandbox.workdir

    def exec(self, cmd: str | Sequence[str], *, timeout: float | None = None,
             cwd: str | None = None, env: Mapping[str, str] | None = None,
             stdin: bytes | str | None = None) -> ExecResult:
        return _LoopThread.run(self.sandbox.exec(cmd, timeout=timeout, cwd=cwd, env=env,
                                                 stdin=stdin))

    def run_python(self, code: str, *, timeout: float | None = None) -> ExecResult:
        return _LoopThread.run(self.sandbox.run_python(code, timeout=timeout))

    def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        _LoopThread.run(self.sandbox.write_file(path, data, mode=mode))

    def read_file(self, path: str) -> bytes:
        return _LoopThread.run(self.sandbox.read_file(path))

    def list_dir(self, path: str = ".") -> list[DirEntry]:
        return _LoopThread.run(self.sandbox.list_dir(path))

    def close(self) -> None:
        _LoopThread.run(self.sandbox.close())

    def __enter__(self) -> SyncSandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
