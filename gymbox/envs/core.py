"""``ToolEnv``: a multi-turn, tool-using task as a Gymnasium environment.

One episode is one conversation. ``reset`` draws a task and returns its prompt; each ``step``
takes the model's raw text for one turn, runs the tool calls in it, and returns what the
environment says back. A final answer (``<answer>...</answer>``) ends the episode and is scored;
running out of turns or tokens truncates it. Tools that need a sandbox get one per episode.

Three kinds of failure are kept apart:

* the agent's mistakes — a malformed call, an unknown tool, bad arguments, a tool's
  :class:`~gymbox.envs.errors.ToolError`, failing code, *any* exception a tool raises on the
  agent's arguments, a host tool past its deadline — are answered with an observation that
  says what was wrong, and the episode goes on. No model output makes ``step`` raise or hang;
* the platform's failures — :class:`~gymbox.runtime.errors.InfraError` from the sandbox, or a
  :class:`~gymbox.envs.errors.GraderFailed` that the evidence does not pin on the answer — end
  the episode with status ``"infra_failed"`` and an *invalid* reward record, never an
  observation and never a score;
* the caller's mistakes — a step after the end, an unknown reset option — raise a typed error.

Sandboxes recover by default: whatever source an env is given (or the private pool it makes),
its episodes get :class:`~gymbox.runtime.recovery.RecoveringSandboxes`' sandboxes, so an infra
failure is recovered (or masked when it cannot be) and a crash the agent causes is scored.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import math
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import gymnasium
import numpy as np
from gymnasium import spaces

from gymbox.envs import host
from gymbox.envs.errors import (
    EpisodeOver,
    GraderCrashed,
    GraderFailed,
    GraderTimeout,
    InvalidOption,
    ToolDefinitionError,
    ToolError,
)
from gymbox.envs.parsing import (
    ANSWER_FORMAT,
    CALL_FORMAT,
    ParsedCalls,
    ToolCall,
    extract_answer,
    parse_tool_calls,
)
from gymbox.envs.tools import ArgumentError, Tool
from gymbox.rewards.gold import Verifier
from gymbox.rewards.record import RewardComponent, RewardRecord
from gymbox.runtime.api import SandboxAPI, SandboxSource
from gymbox.runtime.errors import InfraError, InvalidRequest
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.recovery import RecoveringSandboxes
from gymbox.runtime.result import ExecResult
from gymbox.runtime.spec import SandboxSpec

log = logging.getLogger(__name__)

Status = Literal["running", "completed", "truncated", "infra_failed"]
Message = dict[str, Any]
T = TypeVar("T")

MAX_ACTION_CHARS = 1 << 20
"""The longest action the action space holds (1 Mi characters)."""
MAX_OBSERVATION_CHARS = 1 << 24
"""The longest observation the observation space holds: up to 16 calls a turn, each with up to
64 KiB of stdout and of stderr by default, stay well inside it."""


class ChatText(spaces.Text):
    """A :class:`gymnasium.spaces.Text` that holds any Unicode string up to ``max_length``.

    ``Text`` checks every character against a fixed charset; model output and tool output use
    all of Unicode, so membership here only bounds the length. Samples are printable ASCII.
    """

    def __init__(self, max_length: int, *, seed: int | None = None) -> None:
        printable = "".join(chr(c) for c in range(32, 127)) + "\n\t"
        super().__init__(max_length=max_length, min_length=0, charset=printable, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"ChatText(max_length={self.max_length})"


@dataclass(frozen=True, slots=True)
class Task:
    """One thing to do: the prompt the agent sees and what the env checks against.

    Attributes:
        prompt: the user message that opens the episode.
        reference: the gold answer, when there is one (a string, for the verifiers).
        data: anything else the env needs to set up or score the task.
        id: a stable name for logs and datasets.
    """

    prompt: str
    reference: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What one call did, as the agent saw it (recovery keeps its own journal of sandbox calls).

    Attributes:
        call: the call, with its id.
        content: the text of the ``tool`` message the agent gets back.
        ok: False when the call was the agent's error (unknown tool, bad arguments, a
            ``ToolError``, code that failed).
        exec_result: the sandbox's :class:`ExecResult`, when the tool returned one.
    """

    call: ToolCall
    content: str
    ok: bool
    exec_result: ExecResult | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The env's answer to a turn that has no tool call.

    ``answer`` not None ends the episode, scored on that answer.
    """

    content: str
    answer: str | None = None


def approx_token_count(text: str) -> int:
    """About four bytes of UTF-8 per token: the budget's default when no tokenizer is given."""
    return math.ceil(len(text.encode("utf-8", "replace")) / 4)


class ToolEnv(gymnasium.Env[str, str]):
    """A multi-turn tool-using task. Subclass it, or use a registered one.

    **Driving it** (the trainer's view; the sync ``reset``/``step`` take the same arguments)::

        obs, info = await env.areset(seed=7)
        # info["messages"]: [{"role": "system", ...}, {"role": "user", "content": obs}]
        # info["tools"]:    JSON schemas for tokenizer.apply_chat_template(..., tools=...)
        while True:
            text = policy(info["messages"], info["tools"])
            obs, reward, terminated, truncated, info = await env.astep(text)
            if terminated or truncated:
                break
        info["status"], info["reward_record"]   # "completed" | "truncated" | "infra_failed"

    ``info`` after every call holds:

    - ``messages``: the whole conversation as role/content dicts; the agent's turns are
      ``assistant`` messages holding the raw text exactly; tool results are ``tool`` messages
      (with ``name`` and ``tool_call_id``); other env replies are ``user`` messages.
    - ``tools``: the tools' JSON schemas.
    - ``tool_calls`` / ``tool_results``: this step's parsed :class:`ToolCall`\\ s and their
      :class:`ToolResult`\\ s (each with its :class:`ExecResult`, if any).
    - ``status``: ``"running"``, ``"completed"`` (a final answer), ``"truncated"`` (turn or
      token budget) or ``"infra_failed"`` (the platform failed; ``truncated`` is True).
    - ``reward_record``: the :class:`RewardRecord` once the episode has ended, else None. An
      ``infra_failed`` episode's record is invalid: mask it out of every statistic and loss.
    - ``answer``, ``turn``, ``tokens``, ``task_id``; ``infra_error`` (its kind) when one occurred.

    The step reward is 0.0 until the last step, which carries ``reward_record.value``.

    **Writing one**: set ``tools`` (from ``@tool``), implement ``draw_task``, and either set
    ``verifier`` (the answer is compared with ``task.reference``) or implement ``score``;
    optionally ``setup`` (prepare the sandbox), ``reply`` (answer a turn without a tool
    call), ``answer_instruction`` (how the system prompt asks for the final answer) and
    ``demonstrate`` (a scripted expert's turn, for warm-up demonstrations).
    Keyword-only parameters of ``draw_task`` are the env's reset options. A tool that takes
    ``sandbox`` makes the env acquire one sandbox per episode from ``sandboxes``.

    **Grading** (:meth:`grade`): an answer longer than ``max_answer_chars`` scores 0 without
    reaching the grader; ``score`` runs under ``score_timeout_s``. A grader that raises or
    times out is retried once; if it also fails on ``task.reference`` (or the task has none),
    the grader is broken and the episode is masked (``GraderCrashed``/``GraderTimeout``, status
    ``infra_failed``); if it judges the reference fine, the answer broke it: scored 0, with
    ``reason="answer_broke_grader"``. So an agent cannot escape a bad score by breaking the
    grader, and a broken grader never becomes a reward of 0.

    Use the sync API or the async API for an episode, not both: the sync calls run the async
    ones on the env's own event-loop thread, where its sandboxes live.

    Args:
        max_turns: the agent's turns before the episode is truncated.
        max_tokens: the budget for everything after the prompt (the agent's turns and the env's
            replies), counted by ``count_tokens``; None for no budget.
        count_tokens: the tokenizer's count, e.g. ``lambda s: len(tok.encode(s))``.
        max_action_chars: a longer turn is not parsed; the agent is told it was too long.
        sandboxes: a started :class:`~gymbox.runtime.SandboxPool` (shared by many envs), or
            another :class:`~gymbox.runtime.SandboxSource`, that gives each episode a fresh
            sandbox. It must live on the loop that drives the env, so pass one only with the
            async API. A source that is not a
            :class:`~gymbox.runtime.recovery.RecoveringSandboxes` is wrapped in one (default
            :class:`~gymbox.runtime.recovery.RecoveryPolicy`), so recovery and attribution are
            always on. None makes a private one-sandbox pool of ``sandbox_spec`` on first
            use, behind recovery too, closed by ``close``.
        recovery: False hands ``sandboxes``' sandboxes to episodes as they are, so every infra
            failure ends its episode ``infra_failed`` and an agent-caused crash is masked too.
            Less safe on purpose: only for measuring what recovery buys
            (``benchmarks/claim_masking.py``); never a default.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}
    tools: Sequence[Tool] = ()
    sandbox_spec: SandboxSpec = SandboxSpec()
    verifier: Verifier | None = None
    """Compares a final answer with ``task.reference`` for the default :meth:`score`."""
    max_answer_chars: int = 1000
    """A longer final answer is the agent's outcome, scored 0, and never reaches the grader."""
    score_timeout_s: float = 10.0
    """The deadline of one :meth:`score` call (of an override: all of its time; of the default:
    the verifier's run in its host worker); see :meth:`grade`."""
    answer_instruction: str = f"When you are done, write your final answer as {ANSWER_FORMAT}."
    """How the default system prompt asks for the final answer."""

    @property
    def system_prompt(self) -> str:
        """The system message: how to call tools, then :attr:`answer_instruction`. A subclass
        may set its own string instead."""
        return (
            "You are an agent that solves the task by calling tools. To call a tool, write "
            f"{CALL_FORMAT}; you may make several calls in one turn and you will get their "
            f"results. {self.answer_instruction}"
        )

    def __init__(
        self,
        *,
        max_turns: int = 8,
        max_tokens: int | None = None,
        count_tokens: Callable[[str], int] = approx_token_count,
        max_action_chars: int = 32_768,
        sandboxes: SandboxSource | None = None,
        render_mode: str | None = None,
        recovery: bool = True,
    ) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.count_tokens = count_tokens
        self.max_action_chars = max_action_chars
        self.render_mode = render_mode
        self.observation_space = ChatText(MAX_OBSERVATION_CHARS)
        self.action_space = ChatText(MAX_ACTION_CHARS)
        self._sandboxes = (
            sandboxes if sandboxes is None or isinstance(sandboxes, RecoveringSandboxes)
            or not recovery else RecoveringSandboxes(sandboxes)
        )
        self._private_pool: SandboxPool | None = None
        self._episode_resources = contextlib.AsyncExitStack()
        self._tools_by_name = _index_tools(self.tools)
        self._loop_thread: _LoopThread | None = None
        self._sandbox: SandboxAPI | None = None
        self._sandbox_loop: asyncio.AbstractEventLoop | None = None
        self._clear_episode()

    # -- what a subclass provides -------------------------------------------------------------

    def draw_task(self, rng: np.random.Generator) -> Task:
        """Draw a task with ``rng`` (seeded by ``reset``). Keyword-only parameters added by a
        subclass are its reset options; raise :class:`InvalidOption` for a bad value."""
        raise NotImplementedError(f"{type(self).__name__} must implement draw_task")

    async def score(self, answer: str, task: Task, sandbox: SandboxAPI | None) -> RewardRecord:
        """The reward of a final ``answer``. ``sandbox`` is the episode's, still open.

        The default compares ``answer`` with ``task.reference`` using :attr:`verifier`, in a
        host worker process (:mod:`gymbox.envs.host`) killed at :attr:`score_timeout_s`, so a
        verifier that loops or allocates without bound cannot stall the host. An override that
        computes on the host should do the same with :func:`gymbox.envs.host.run_on_host`.
        Called through :meth:`grade`, which bounds and classifies what it does.

        Example:
            >>> from gymbox.rewards.gold import NumericMatch
            >>> class Sums(ToolEnv):
            ...     verifier = NumericMatch()
            ...     def draw_task(self, rng):
            ...         return Task(prompt="What is 2 + 3?", reference="5")
            >>> env = Sums()
            >>> _ = env.reset(seed=0)
            >>> env.step("<answer>5.0</answer>")[1]
            1.0
            >>> env.close()
        """
        if self.verifier is None or task.reference is None:
            raise NotImplementedError(
                f"{type(self).__name__} must set `verifier` (with tasks that have a reference) "
                "or implement score"
            )
        same = await asyncio.to_thread(host.run_on_host, self.verifier.equivalent, answer,
                                       task.reference, timeout_s=self.score_timeout_s)
        return RewardRecord.of(gold=float(bool(same)))

    async def setup(self, task: Task, sandbox: SandboxAPI) -> None:
        """Prepare the episode's sandbox for ``task`` (write files...). Default: nothing."""

    def demonstrate(self) -> str:
        """A scripted expert's next turn in the running episode (it may read the task and the
        journal), for warm-up demonstrations (``[warmup]`` in ``gymbox train``). Optional."""
        raise NotImplementedError(
            f"{type(self).__name__} has no scripted expert; implement demonstrate() to use it "
            "for warm-up demonstrations, or set warmup.sft_steps = 0"
        )

    @property
    def can_demonstrate(self) -> bool:
        """True when the env overrides :meth:`demonstrate`."""
        return type(self).demonstrate is not ToolEnv.demonstrate

    def reply(self, text: str) -> Reply:
        """Answer a turn that holds no tool call and no final answer."""
        del text
        return Reply(
            "Your message has no tool call and no final answer. "
            f"Call a tool with {CALL_FORMAT}, or answer with {ANSWER_FORMAT}."
        )

    # -- the Gymnasium API ---------------------------------------------------------------------

    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        """The tools' JSON schemas, for ``apply_chat_template(..., tools=...)``."""
        return [copy.deepcopy(dict(t.schema)) for t in self.tools]

    @property
    def needs_sandbox(self) -> bool:
        """True when a tool takes ``sandbox`` or the env overrides :meth:`setup`: then each
        episode gets its own sandbox."""
        return any(t.in_sandbox for t in self.tools) or type(self).setup is not ToolEnv.setup

    @property
    def task(self) -> Task | None:
        """The current episode's task; None before the first reset."""
        return self._task

    @property
    def sandbox(self) -> SandboxAPI | None:
        """The running episode's sandbox (a recovering one: its ``id`` is that of the sandbox
        serving calls now); None when the env needs none or no episode runs."""
        return self._sandbox

    @property
    def status(self) -> Status:
        """The episode's status: ``running``, ``completed``, ``truncated`` or
        ``infra_failed``."""
        return self._status

    @property
    def messages(self) -> list[Message]:
        """A copy of the conversation so far."""
        return copy.deepcopy(self._messages)

    @property
    def journal(self) -> list[ToolResult]:
        """Every call of the episode that reached a tool, in order, with its result."""
        return list(self._journal)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode and return ``(prompt, info)``; the sync twin of :meth:`areset`.

        Example:
            >>> from gymbox.envs.builtin.calculator import Calculator
            >>> env = Calculator()
            >>> prompt, info = env.reset(seed=0, options={"difficulty": 1})
            >>> prompt
            'What is 85 - 52? Use the calculate tool, then give the value.'
            >>> [m["role"] for m in info["messages"]], info["status"]
            (['system', 'user'], 'running')
            >>> env.close()
        """
        return self._run_sync(self.areset(seed=seed, options=options))

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Play one agent turn (the model's raw text); the sync twin of :meth:`astep`.

        Returns ``(observation, reward, terminated, truncated, info)``. Any text is a valid
        action: what cannot be read is answered with an observation saying so.

        Example:
            >>> from gymbox.envs.builtin.calculator import Calculator
            >>> env = Calculator()
            >>> _ = env.reset(seed=0, options={"difficulty": 1})
            >>> env.step('<tool_call>{"name": "calculate", '
            ...          '"arguments": {"expression": "85 - 52"}}</tool_call>')[0]
            '33'
            >>> env.step('<tool_call>{"name": "calculate"}</tool_call>')[0][:48]
            "Error: tool 'calculate': missing argument 'expre"
            >>> obs, reward, terminated, truncated, info = env.step("<answer>33</answer>")
            >>> reward, terminated, info["status"]
            (1.0, True, 'completed')
            >>> env.close()
        """
        return self._run_sync(self.astep(action))

    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode: release the last one's sandbox, draw a task, prepare a sandbox.

        ``options`` are the keyword-only parameters of :meth:`draw_task`, plus ``"task"``: a
        :class:`Task` to play instead of drawing one.

        Raises:
            InvalidOption: an option the env does not take, or a bad value.
            InfraError: no sandbox could be prepared; no episode started.
        """
        super().reset(seed=seed)
        task = self._task_from_options(dict(options or {}))
        await self._release_sandbox()
        self._clear_episode()
        if self.needs_sandbox:
            self._sandbox = await self._acquire_sandbox()
            try:
                await self.setup(task, self._sandbox)
            except BaseException:
                await self._release_sandbox()
                raise
        self._task = task
        self._status = "running"
        self._messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": task.prompt},
        ]
        return task.prompt, self._info()

    async def astep(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Play one agent turn; see the class docstring for what comes back.

        Whatever the text holds, this returns: the agent's errors and anything a tool raises
        are observations, host tools run under their deadlines, and the final answer is graded
        by :meth:`grade`.

        Raises:
            EpisodeOver: no episode is running (never reset, or already ended).
            TypeError: ``action`` is not a string.
        """
        if self._status != "running" or self._task is None:
            raise EpisodeOver(
                f"the episode is {self._status}; call reset() to start a new one"
                if self._task is not None else "no episode is running; call reset() first"
            )
        if not isinstance(action, str):
            raise TypeError(f"an action is the model's text (str), got {type(action).__name__}")
        self._turn += 1
        self._messages.append({"role": "assistant", "content": action})
        self._tokens += self._count(action)
        first_new = len(self._messages)
        try:
            answer, calls, results = await self._respond(action)
        except InfraError as exc:
            return await self._end_infra_failed(exc)
        self._tokens += sum(self._count(m["content"]) for m in self._messages[first_new:])
        observation = "\n\n".join(m["content"] for m in self._messages[first_new:])
        if answer is not None:
            try:
                record = await self.grade(answer)
            except InfraError as exc:  # GraderFailed included: masked, never a 0
                return await self._end_infra_failed(exc)
            return await self._end("completed", record, observation, answer, calls, results)
        if self._turn >= self.max_turns or (
            self.max_tokens is not None and self._tokens >= self.max_tokens
        ):
            return await self._end("truncated", RewardRecord.of(gold=0.0), observation, None,
                                   calls, results)
        return observation, 0.0, False, False, self._info(calls, results)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self._messages)

    def close(self) -> None:
        """Release the episode's sandbox and the env's event-loop thread. Safe to call twice."""
        if self._sandbox_loop is not None:
            if self._sandbox_loop is self._own_loop():
                self._run_sync(self._release_everything())
            elif self._sandbox_loop.is_running():
                # Acquired by the async API: the sandbox lives on the caller's loop.
                asyncio.run_coroutine_threadsafe(self._release_everything(), self._sandbox_loop)
            self._sandbox_loop = None
        if self._loop_thread is not None:
            self._loop_thread.stop()
            self._loop_thread = None

    async def aclose(self) -> None:
        """The async twin of :meth:`close`, for envs driven with ``areset``/``astep``."""
        await self._release_everything()
        self._sandbox_loop = None

    async def grade(self, answer: str) -> RewardRecord:
        """The running episode's reward for its final ``answer``: :meth:`score`, bounded.

        1. An answer longer than :attr:`max_answer_chars` scores 0
           (``reason="answer_too_long"``): the grader never sees it.
        2. :meth:`score` runs under :attr:`score_timeout_s`. If it raises (anything but
           ``InfraError``, which is the sandbox's and propagates) or times out, it is tried once
           more: a transient failure gives the grade then.
        3. If it fails again, the grader is tried on ``task.reference``. When it fails there
           too, or the task has no reference to try, the grader is broken: the failure is
           raised, and the episode is masked. When it grades the reference, the failure is
           the answer's doing: scored 0, ``reason="answer_broke_grader"``.

        Raises:
            GraderCrashed, GraderTimeout: the grader failed and the evidence does not pin it
                on the answer.
            InfraError: the sandbox failed while ``score`` used it.
        """
        assert self._task is not None
        if len(answer) > self.max_answer_chars:
            return _zero("answer_too_long")
        first = await self._try_score(answer)
        if isinstance(first, RewardRecord):
            return first
        again = await self._try_score(answer)
        if isinstance(again, RewardRecord):
            return again
        reference = self._task.reference
        control = None if reference is None else await self._try_score(reference)
        if not isinstance(control, RewardRecord):
            raise again
        log.warning("%s: the grader failed on an answer but not on the reference (%s); the "
                    "answer scores 0", type(self).__name__, again)
        self._grader_failure = again.kind
        return _zero("answer_broke_grader")

    async def _try_score(self, answer: str) -> RewardRecord | GraderFailed:
        assert self._task is not None
        scoring = self.score(answer, self._task, self._sandbox)
        if type(self).score is not ToolEnv.score:
            # The default runs in a host worker under this deadline already; it excludes the
            # wait for a worker to be free, which is the platform's time, not the grader's.
            scoring = asyncio.wait_for(scoring, self.score_timeout_s)
        try:
            record = await scoring
        except InfraError:
            raise
        except NotImplementedError:
            raise  # the env is incomplete: the author's error, loud
        except (TimeoutError, host.HostTimeout):
            return GraderTimeout(f"{type(self).__name__}.score ran past its "
                                 f"{self.score_timeout_s:g} s deadline")
        except Exception as exc:  # every grader failure is classified here
            log.warning("%s.score raised on an answer", type(self).__name__, exc_info=True)
            return GraderCrashed(f"{type(self).__name__}.score raised {exc!r}"[:500], cause=exc)
        if not isinstance(record, RewardRecord):
            return GraderCrashed(f"{type(self).__name__}.score returned {type(record).__name__},"
                                 " not a RewardRecord")
        return record

    # -- one turn --------------------------------------------------------------------------------

    def _count(self, text: str) -> int:
        try:
            return self.count_tokens(text)
        except Exception:  # a tokenizer refusing odd text (lone surrogates)
            return self.count_tokens(text.encode("utf-8", "replace").decode("utf-8"))

    async def _respond(self, text: str) -> tuple[str | None, list[ToolCall], list[ToolResult]]:
        if len(text) > self.max_action_chars:
            self._messages.append({"role": "user", "content": (
                f"Your message was {len(text)} characters long; the limit is "
                f"{self.max_action_chars}. It was not read. Write a shorter turn."
            )})
            return None, [], []
        try:
            parsed, answer = parse_tool_calls(text), extract_answer(text)
        except Exception as exc:  # the parser promises not to; defence in depth
            log.warning("parsing a turn raised", exc_info=True)
            parsed, answer = ParsedCalls(errors=(f"the message could not be read "
                                                 f"({_describe(exc)})",)), None
        if parsed.empty and answer is None:
            try:
                env_reply = self.reply(text)
            except InfraError:  # the platform failed under the env's reply: never the agent's
                raise
            except Exception as exc:  # no text may stop the episode
                log.warning("%s.reply raised", type(self).__name__, exc_info=True)
                env_reply = Reply(f"Error: your message could not be read ({_describe(exc)}).")
            self._messages.append({"role": "user", "content": env_reply.content})
            return env_reply.answer, [], []
        calls = [
            ToolCall(c.name, c.arguments, id=f"call_{self._turn}_{i}")
            for i, c in enumerate(parsed.calls)
        ]
        results = [await self._run_call(call) for call in calls]
        for result in results:
            self._messages.append({"role": "tool", "name": result.call.name,
                                   "tool_call_id": result.call.id, "content": result.content})
        for error in parsed.errors:
            self._messages.append({"role": "tool", "name": "error", "content": f"Error: {error}"})
        return answer, calls, results

    async def _run_call(self, call: ToolCall) -> ToolResult:
        """Run one call: the single path every tool call takes, and where its failures are
        classified.

        The agent's errors come back as a result with ``ok=False``: bad arguments, a
        ``ToolError``, a refused sandbox call, a host tool past its deadline, and any other
        exception the tool raised on these arguments (logged: it may be a bug in the tool).
        Only ``InfraError`` propagates.
        """
        chosen = self._tools_by_name.get(call.name)
        if chosen is None:
            known = ", ".join(repr(n) for n in self._tools_by_name) or "none"
            return ToolResult(
                call, f"Error: there is no tool {call.name!r}; tools: {known}.", ok=False
            )
        try:
            arguments = chosen.check_arguments(call.arguments)
        except ArgumentError as exc:
            return ToolResult(call, f"Error: {exc}.", ok=False)
        except Exception as exc:  # odd values (deep nesting...) are the agent's
            return ToolResult(call, f"Error: the arguments could not be checked "
                              f"({_describe(exc)}).", ok=False)
        try:
            output = await chosen.invoke(arguments, sandbox=self._sandbox)
        except InfraError:
            raise
        except ToolError as exc:
            result = ToolResult(call, f"Error: {exc}", ok=False)
        except InvalidRequest as exc:
            # The sandbox refused what the agent's arguments asked for (a NUL byte in code...):
            # nothing ran, and the agent can fix it.
            result = ToolResult(call, f"Error: the sandbox refused the call: {exc}", ok=False)
        except host.HostTimeout as exc:
            result = ToolResult(call, f"Error: {exc}.", ok=False)
        except host.HostRaised as exc:
            if not exc.tool_error:
                log.warning("tool %r raised %s", call.name, exc)
            result = ToolResult(call, f"Error: {exc.message if exc.tool_error else exc}",
                                ok=False)
        except Exception as exc:  # no argument may stop the episode
            log.warning("tool %r raised", call.name, exc_info=True)
            result = ToolResult(call, f"Error: the tool failed: {_describe(exc)}", ok=False)
        else:
            result = _result_of(call, output)
        self._journal.append(result)
        return result

    # -- episode bookkeeping ----------------------------------------------------------------------

    async def _end(
        self, status: Status, record: RewardRecord, observation: str, answer: str | None,
        calls: list[ToolCall], results: list[ToolResult],
    ) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._status, self._record, self._answer = status, record, answer
        await self._release_sandbox()
        info = self._info(calls, results)
        return observation, float(record.value), status == "completed", status != "completed", info

    async def _end_infra_failed(self, exc: InfraError) -> tuple[str, float, bool, bool, dict]:
        # What the agent would have seen is unknown: drop the env messages of this step.
        while self._messages and self._messages[-1]["role"] != "assistant":
            self._messages.pop()
        self._infra_error = exc.kind
        return await self._end("infra_failed", RewardRecord.invalid(exc.kind), "", None, [], [])

    def _info(
        self, calls: list[ToolCall] | None = None, results: list[ToolResult] | None = None
    ) -> dict[str, Any]:
        info: dict[str, Any] = {
            "messages": copy.deepcopy(self._messages),
            "tools": self.tool_schemas,
            "tool_calls": list(calls or []),
            "tool_results": list(results or []),
            "status": self._status,
            "reward_record": self._record,
            "answer": self._answer,
            "turn": self._turn,
            "tokens": self._tokens,
            "task_id": self._task.id if self._task is not None else "",
        }
        if self._infra_error is not None:
            info["infra_error"] = self._infra_error
        if self._grader_failure is not None:
            info["grader_failure"] = self._grader_failure
        return info

    def _clear_episode(self) -> None:
        self._task: Task | None = None
        self._status: Status = "running"
        self._messages: list[Message] = []
        self._journal: list[ToolResult] = []
        self._turn = 0
        self._tokens = 0
        self._record: RewardRecord | None = None
        self._answer: str | None = None
        self._infra_error: str | None = None
        self._grader_failure: str | None = None

    def _task_from_options(self, options: dict[str, Any]) -> Task:
        if "task" in options:
            task = options.pop("task")
            if not isinstance(task, Task):
                raise InvalidOption(f"option 'task' must be a gymbox.envs.Task, got {task!r}")
            if options:
                raise InvalidOption(f"option 'task' cannot be combined with {sorted(options)}")
            return task
        accepted = [
            p.name for p in inspect.signature(self.draw_task).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise InvalidOption(
                f"{type(self).__name__} has no reset option {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(map(repr, [*accepted, 'task']))}"
            )
        return self.draw_task(self.np_random, **options)

    async def _acquire_sandbox(self) -> SandboxAPI:
        if self._sandboxes is None:
            self._private_pool = SandboxPool(self.sandbox_spec, size=1)
            await self._private_pool.start()
            self._sandboxes = RecoveringSandboxes(self._private_pool)
        self._sandbox_loop = asyncio.get_running_loop()
        return await self._episode_resources.enter_async_context(self._sandboxes.acquire())

    async def _release_sandbox(self) -> None:
        self._sandbox = None
        resources, self._episode_resources = self._episode_resources, contextlib.AsyncExitStack()
        # A sandbox that fails to close is the reaper's to collect; the episode is over anyway.
        try:
            await resources.aclose()
        except Exception:
            log.warning("releasing the episode's sandbox failed", exc_info=True)

    async def _release_everything(self) -> None:
        await self._release_sandbox()
        pool, self._private_pool = self._private_pool, None
        if pool is not None:
            self._sandboxes = None
            await pool.close()

    def _own_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop_thread.loop if self._loop_thread is not None else None

    def _run_sync(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop_thread is None:
            self._loop_thread = _LoopThread()
        return self._loop_thread.run(coroutine)


def _index_tools(tools: Sequence[Tool]) -> dict[str, Tool]:
    by_name: dict[str, Tool] = {}
    for candidate in tools:
        if not isinstance(candidate, Tool):
            raise ToolDefinitionError(
                f"{candidate!r} in tools is not a Tool; decorate it with @tool"
            )
        if candidate.name in by_name:
            raise ToolDefinitionError(f"two tools are named {candidate.name!r}; rename one")
        by_name[candidate.name] = candidate
    return by_name


def _result_of(call: ToolCall, output: Any) -> ToolResult:
    if isinstance(output, ExecResult):
        return ToolResult(call, render_exec_result(output), ok=output.ok, exec_result=output)
    return ToolResult(call, str(output), ok=True)


def _zero(reason: str) -> RewardRecord:
    """The agent's outcome of an answer the grader must not or cannot judge: gold 0."""
    return RewardRecord(value=0.0, components={"gold": RewardComponent(0.0)}, reason=reason)


def _describe(exc: BaseException) -> str:
    """``Type: message``, short, for an observation; never raises."""
    try:
        message = str(exc)
    except Exception:
        message = ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def render_exec_result(result: ExecResult) -> str:
    """The text an agent sees for a command's outcome: output, then what went wrong if anything."""
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append(f"[stderr]\n{result.stderr.rstrip(chr(10))}")
    if result.timed_out:
        parts.append(f"[timed out after {result.duration_s:.1f}s and was killed]")
    elif result.oom_killed:
        parts.append("[killed: out of memory]")
    elif result.signal is not None:
        parts.append(f"[killed by signal {result.signal}]")
    elif result.exit_code not in (0, None):
        parts.append(f"[exit code {result.exit_code}]")
    if result.interpreter_reset:
        parts.append("[the Python interpreter was restarted: names defined before are gone]")
    if result.truncated:
        parts.append(
            f"[output truncated: {result.stdout_bytes} bytes of stdout, "
            f"{result.stderr_bytes} of stderr]"
        )
    return "\n".join(parts) if parts else "[no output]"


class _LoopThread:
    """An event loop on a daemon thread, so the sync API works even inside a running loop.

    One per env, not one per process: an env's sandboxes live on the loop that acquired them,
    and a close() of one env must not stop the loop another env's episode is using."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="gymbox-env-loop")
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
