"""Any registered gymbox env behind the OpenEnv protocol (openenv-core), for OpenEnv clients.

``gymbox serve ENV`` (or :class:`GymboxServer`) runs OpenEnv's own FastAPI server
(``openenv.core.env_server.create_fastapi_app``): each WebSocket session gets its own gymbox
env; every episode takes a fresh sandbox from one warm pool behind
:class:`~gymbox.runtime.recovery.RecoveringSandboxes` and an
:class:`~gymbox.runtime.breaker.InfraCircuitBreaker`, as under ``gymbox train``.

The protocol's types:

* :class:`GymboxAction` — ``message``: the model's raw text for one turn (tool calls in the
  Hermes ``<tool_call>{json}</tool_call>`` form, a final answer in ``<answer>...</answer>``).
* :class:`GymboxObservation` — ``text`` (the prompt after a reset, the env's reply after a step),
  ``messages`` and ``tools`` (the whole conversation and the tools' JSON schemas, for a chat
  template), ``status``, ``valid``, ``infra_error``, ``answer``, ``task_id``, ``turn``; and the
  protocol's ``done`` and ``reward``.

**An infrastructure failure is visible as such**: an episode the platform broke (recovery could
not save it, or no sandbox could be prepared at reset) comes back with ``done=True``,
``status="infra_failed"``, ``valid=False``, ``infra_error`` set to the failure's kind, and
``reward=None`` — not 0. A client must leave such an episode out of its statistics and loss.
The agent's own mistakes are ordinary observations; the client's mistakes (a step after the
episode ended, an unknown reset option) are the protocol's error responses, with gymbox's message.

Example (a client; the server runs with ``gymbox serve gymbox/PythonCalc-v0 --port 8000``)::

    from openenv.core import GenericEnvClient

    with GenericEnvClient(base_url="http://127.0.0.1:8000").sync() as env:
        result = env.reset(seed=3)
        print(result.observation["text"])
        result = env.step({"message": '<tool_call>{"name": "python", '
                                      '"arguments": {"code": "print(6 * 7)"}}</tool_call>'})
        if result.done and not result.observation["valid"]:
            ...  # infra-failed: unscorable, drop it
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

import uvicorn
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field

from gymbox.agents.run_config import TrainConfig
from gymbox.agents.supply import make_env_factory
from gymbox.envs.core import ToolEnv
from gymbox.envs.registry import require_registered
from gymbox.runtime.backend import Backend
from gymbox.runtime.breaker import InfraCircuitBreaker
from gymbox.runtime.errors import ConfigurationError, InfraError
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.recovery import RecoveringSandboxes, RecoveryPolicy
from gymbox.runtime.spec import SandboxSpec


class GymboxAction(Action):
    """One agent turn: the model's raw text."""

    message: str = Field(..., description="the model's text for this turn, exactly as sampled")


class GymboxObservation(Observation):
    """What the env says back; ``reward`` is None while running and for an infra-failed episode."""

    text: str = Field(default="", description="the prompt after reset, the env's reply after step")
    messages: list[dict[str, Any]] = Field(default_factory=list,
                                           description="the conversation so far")
    tools: list[dict[str, Any]] = Field(default_factory=list,
                                        description="the tools' JSON schemas")
    status: str = Field(default="running",
                        description="running, completed, truncated or infra_failed")
    valid: bool = Field(default=True, description="False: the platform broke the episode; "
                        "leave it out of every statistic and loss")
    infra_error: str | None = Field(default=None, description="the infrastructure failure's kind")
    answer: str | None = Field(default=None, description="the final answer the env scored")
    task_id: str = Field(default="", description="a stable name of the task")
    turn: int = Field(default=0, description="agent turns so far")


class GymboxState(State):
    """The session's env and episode."""

    env_id: str = ""
    status: str = "running"
    task_id: str = ""


class GymboxEnvironment(Environment[GymboxAction, GymboxObservation, GymboxState]):
    """One session's gymbox env as an OpenEnv ``Environment`` (async: the sandboxes live on the
    server's event loop).

    Args:
        make: makes the gymbox env this session plays.
        env_id: its id, for the state.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # each session has its own env; sandboxes are per episode

    def __init__(self, make: Callable[[], ToolEnv], env_id: str) -> None:
        super().__init__()
        self._env = make()
        self._state = GymboxState(env_id=env_id)

    async def reset_async(self, seed: int | None = None, episode_id: str | None = None,
                          **options: Any) -> GymboxObservation:
        """Start an episode; ``options`` are the env's reset options.

        Raises:
            InvalidOption: an option the env does not take (the client gets the message).
        """
        self._state = GymboxState(env_id=self._state.env_id, episode_id=episode_id)
        try:
            prompt, info = await self._env.areset(seed=seed, options=options)
        except InfraError as exc:
            self._state.status = "infra_failed"
            return GymboxObservation(done=True, reward=None, status="infra_failed", valid=False,
                                     infra_error=exc.kind)
        self._state.task_id = info["task_id"]
        return _observation(prompt, info, done=False, reward=None)

    async def step_async(self, action: GymboxAction, timeout_s: float | None = None,
                         **kwargs: Any) -> GymboxObservation:
        """Play one turn.

        Raises:
            EpisodeOver: no episode is running (the client gets the message).
        """
        text, reward, terminated, truncated, info = await self._env.astep(action.message)
        self._state.step_count += 1
        self._state.status = info["status"]
        done = terminated or truncated
        record = info["reward_record"]
        scored = float(reward) if done and record is not None and record.valid else None
        return _observation(text, info, done=done, reward=scored)

    def reset(self, seed: int | None = None, episode_id: str | None = None,
              **options: Any) -> GymboxObservation:
        raise NotImplementedError("a GymboxEnvironment is driven by reset_async/step_async")

    def step(self, action: GymboxAction, timeout_s: float | None = None,
             **kwargs: Any) -> GymboxObservation:
        raise NotImplementedError("a GymboxEnvironment is driven by reset_async/step_async")

    @property
    def state(self) -> GymboxState:
        return self._state

    def close(self) -> None:
        self._env.close()


def _observation(text: str, info: Mapping[str, Any], *, done: bool,
                 reward: float | None) -> GymboxObservation:
    valid = info["status"] != "infra_failed"
    return GymboxObservation(
        text=text, messages=info["messages"], tools=info["tools"], status=info["status"],
        valid=valid, infra_error=info.get("infra_error"), answer=info.get("answer"),
        task_id=info["task_id"], turn=info["turn"], done=done, reward=reward,
    )


class GymboxServer:
    """An OpenEnv server for one gymbox env, on one event loop with its sandbox pool.

    Args:
        env_id: a registered env id, or ``module:Env-v0``.
        host, port: where to listen (port 0 picks a free one; see :attr:`url`).
        max_sessions: concurrent WebSocket sessions (each plays one episode at a time).
        pool_size: warm sandboxes (sandboxed envs only).
        env_kwargs: the env's constructor arguments.
        sandbox_spec, backend, recovery, breaker: as for :class:`~gymbox.runtime.SandboxPool`
            and :class:`~gymbox.runtime.recovery.RecoveringSandboxes`; defaults when None.

    Raises:
        ConfigurationError: ``env_id`` is not a registered gymbox env; from :meth:`serve`, the
            address cannot be listened on.
        ValueError: ``max_sessions`` or ``pool_size`` below 1.

    Example::

        server = GymboxServer("gymbox/PythonCalc-v0", port=8000)
        asyncio.run(server.serve(on_ready=print))   # until server.stop() or Ctrl-C
    """

    def __init__(self, env_id: str, *, host: str = "127.0.0.1", port: int = 8000,
                 max_sessions: int = 8, pool_size: int = 4,
                 env_kwargs: Mapping[str, Any] | None = None,
                 sandbox_spec: SandboxSpec | None = None, backend: Backend | None = None,
                 recovery: RecoveryPolicy | None = None,
                 breaker: InfraCircuitBreaker | None = None) -> None:
        if max_sessions < 1 or pool_size < 1:
            raise ValueError(f"max_sessions and pool_size must be at least 1, "
                             f"got {max_sessions} and {pool_size}")
        self.env_id = require_registered(env_id)
        self._make = make_env_factory(
            TrainConfig(env=self.env_id, env_kwargs=dict(env_kwargs or {})))
        self.host, self.port = host, port
        self.max_sessions, self.pool_size = max_sessions, pool_size
        self.sandbox_spec, self.backend, self.recovery = sandbox_spec, backend, recovery
        self.breaker = breaker if breaker is not None else InfraCircuitBreaker()
        self.sandboxes: RecoveringSandboxes | None = None
        """The sessions' sandbox source while serving (its ``metrics`` say what recovery did)."""
        self.url: str | None = None
        """``http://host:port`` once the server listens."""
        self._server: Any = None
        self._stop_requested = False
        self.stopped_by: signal.Signals | None = None
        """The signal (SIGINT, SIGTERM) that stopped :meth:`serve`; None when :meth:`stop` did."""

    async def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until :meth:`stop` (or SIGINT/SIGTERM in the main thread); then close every
        session's env and remove the sandboxes. ``on_ready`` gets the URL once it listens."""
        from openenv.core.env_server.http_server import create_fastapi_app

        probe = self._make()
        needs_sandbox = probe.needs_sandbox
        probe.close()
        async with contextlib.AsyncExitStack() as stack:
            extra: dict[str, Any] = {}
            if needs_sandbox:
                pool = await stack.enter_async_context(SandboxPool(
                    self.sandbox_spec, size=self.pool_size, backend=self.backend))
                self.sandboxes = RecoveringSandboxes(pool, self.recovery, breaker=self.breaker)
                extra["sandboxes"] = self.sandboxes
            make = self._make
            app = create_fastapi_app(
                # A partial of the class: OpenEnv reads the concurrency flag off it.
                functools.partial(GymboxEnvironment, make=lambda: make(**extra),
                                  env_id=self.env_id),
                GymboxAction, GymboxObservation, max_concurrent_envs=self.max_sessions)
            config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                    ws_max_size=1 << 24)
            self._server = _QuietSignalServer(config)
            if self._stop_requested:
                self._server.should_exit = True
            announce = asyncio.create_task(self._announce(on_ready))
            try:
                await self._server.serve()
            except SystemExit:
                if self._server.started:
                    raise
                # uvicorn has logged why (an address in use...) and exits; say what to do.
                raise ConfigurationError(
                    f"the OpenEnv server could not listen on {self.host}:{self.port} (see the "
                    "error above); choose another --host/--port") from None
            finally:
                announce.cancel()
                self.url = None
                self.stopped_by = self._server.stopped_by

    def stop(self) -> None:
        """Ask the server to stop (thread-safe); :meth:`serve` returns once it has."""
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True

    async def _announce(self, on_ready: Callable[[str], None] | None) -> None:
        while not self._server.started:
            await asyncio.sleep(0.05)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        if on_ready is not None:
            on_ready(self.url)



class _QuietSignalServer(uvicorn.Server):
    """uvicorn's server, except that the signal it shut down on is recorded, not raised again.

    uvicorn raises a captured SIGINT again once it has stopped. Under ``asyncio.run`` that reaches
    asyncio's own handler, which cancels the main task wherever it then is -- in the middle of
    removing the sessions' sandboxes -- and whether the process then exits 130 or 0 depends on
    where the cancellation lands. Recording it lets the cleanup finish and the caller choose the
    exit status."""

    stopped_by: signal.Signals | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach only the main thread; stop() is the way in from others
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stopped_by is None:
            self.stopped_by = signal.Signals(sig)
        super().handle_exit(sig, frame)
