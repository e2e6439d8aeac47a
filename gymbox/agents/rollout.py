r"""Multi-turn rollouts: episodes of a policy in tool environments, as token sequences to train on.

An episode becomes ONE token sequence, built turn by turn::

    [system + user prompt, chat-templated]  loss 0     the env's text
    [model turn 1 ... <|im_end|>]           loss 1     sampled: behaviour log-probs recorded
    [\n<|im_start|>tool\n 4 <|im_end|> ...]  loss 0     the env's reply + the next turn's header
    [model turn 2 ...]                      loss 1
    ...

The env's text between two model turns is whatever the chat template renders for the new
messages, found by rendering the whole conversation and cutting off the part already in the
sequence; the model's turns are its sampled tokens, never re-tokenised. So the sequence is
exactly what the model conditioned on when it sampled, and the trainer's forward pass over it
reproduces the recorded behaviour log-probs.

Budgets: ``max_tokens`` bounds the whole sequence (each turn may sample at most what is left)
and ``max_turns`` the model's turns; an episode the env has not ended when a budget runs out is
``"truncated"`` with gold reward 0, as the env scores its own truncations. The env's own
``max_turns`` / ``max_tokens`` apply too; whichever runs out first ends the episode.

Failures: an episode whose sandbox broke (``"infra_failed"``) still yields its trajectory, with
the env's invalid :class:`~gymbox.rewards.record.RewardRecord`; the consumer masks it out.

Example:
    >>> import asyncio
    >>> from gymbox.envs.builtin.calculator import Calculator
    >>> policy = TransformersPolicy.load()                                   # doctest: +SKIP
    >>> envs = [Calculator() for _ in range(4)]
    >>> group = asyncio.run(rollout(policy, envs, seeds=[7] * 4))            # doctest: +SKIP
    >>> len(group), all(len(t.token_ids) == len(t.loss_mask) for t in group)  # doctest: +SKIP
    (4, True)
    >>> group[0].status in ("completed", "truncated", "infra_failed")        # doctest: +SKIP
    True
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from gymbox.agents.policy import Completion, Policy, SamplingParams
from gymbox.envs.core import Status, ToolEnv
from gymbox.rewards.record import RewardComponent, RewardRecord
from gymbox.runtime.errors import ConfigurationError, InfraError, InvalidRequest

TURN_STOPS = ("</tool_call>", "</answer>")
"""Stop strings that end a turn where the env must act: after a tool call (so the model does
not invent the tool's output) and after a final answer."""

DEFAULT_SAMPLING = SamplingParams(max_new_tokens=256, temperature=1.0, stop=TURN_STOPS)

Message = dict[str, Any]


class ChatTemplateMismatch(ConfigurationError):
    """The tokenizer's chat template re-renders earlier turns differently once later turns are
    added, so a conversation cannot be extended token by token. Use a model whose template
    renders each message independently of what follows (ChatML-style templates do)."""


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits on one episode, on top of the env's own.

    Attributes:
        max_tokens: the longest token sequence (prompt, model turns and env replies together).
        max_turns: the most model turns; ``None`` leaves it to the env.
    """

    max_tokens: int = 2048
    max_turns: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise InvalidRequest(f"max_tokens must be >= 2, got {self.max_tokens}")
        if self.max_turns is not None and self.max_turns < 1:
            raise InvalidRequest(f"max_turns must be >= 1 or None, got {self.max_turns}")


@dataclass(frozen=True, slots=True)
class Trajectory:
    """One episode, ready for rewards and the loss.

    All per-token fields are aligned with ``token_ids``. ``logprobs``, ``entropy`` and
    ``self_certainty`` hold the policy's values where ``loss_mask`` is 1 and 0 elsewhere; the
    log-probs are under the sampling temperature ``temperature`` (see
    :mod:`gymbox.agents.policy`). The sequence ends with the model's last token: the env's last
    reply conditions nothing and is only in ``messages``.

    Attributes:
        token_ids: the whole episode as one sequence.
        loss_mask: 1 on tokens the model sampled, 0 on the prompt and the env's text.
        logprobs: behaviour log-probs, float32.
        entropy: per-token entropy of the sampling distribution, float32.
        self_certainty: per-token KL(U ‖ p), float32.
        prompt_length: tokens before the first model turn.
        status: ``"completed"``, ``"truncated"`` or ``"infra_failed"``.
        reward: the episode's record; ``reward.valid`` is False for ``"infra_failed"``, and
            such a trajectory must add nothing to any statistic or loss.
        answer: the final answer the env scored, if any.
        turns: the model's turns.
        seed: the seed the env's task was drawn with.
        temperature: τ of ``logprobs``.
        messages: the conversation as the env recorded it.
        info: the env's last ``info`` (tool results, ``infra_error``...).
    """

    token_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    logprobs: Tensor
    entropy: Tensor
    self_certainty: Tensor
    prompt_length: int
    status: Status
    reward: RewardRecord
    answer: str | None
    turns: int
    seed: int | None
    temperature: float
    messages: list[Message] = field(repr=False)
    info: Mapping[str, Any] = field(repr=False)

    @property
    def valid(self) -> bool:
        """False when the infrastructure, not the agent, ended the episode."""
        return self.reward.valid

    @property
    def model_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def ran_a_tool(self) -> bool:
        """True when one of the model's calls reached one of the env's tools (whatever the tool
        answered). The env answers a call it could not parse, or one naming no tool it has,
        with a tool message too: those name no tool of ``info["tools"]``."""
        tools = {schema["function"]["name"] for schema in self.info.get("tools", ())}
        return any(m["role"] == "tool" and m.get("name") in tools for m in self.messages)


class ChatFormat:
    """Renders a conversation with a tokenizer's chat template, tools included.

    Tool schemas go where the template puts them (``apply_chat_template(..., tools=...)``).
    A template that ignores ``tools`` (SmolLM2's does) would leave the model blind to them, so
    they are then listed, as JSON, at the end of the system message instead.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.chat_template is None:
            raise ConfigurationError(
                "the tokenizer has no chat template; rollouts need an instruction-tuned model "
                "whose tokenizer_config.json or chat_template.jinja defines one"
            )
        self.tokenizer = tokenizer
        probe = [{"role": "user", "content": "x"}]
        schema = {"type": "function", "function": {"name": "probe_tool", "parameters": {}}}
        self.template_renders_tools = self._apply(probe, [schema]) != self._apply(probe, None)

    def render(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]) -> str:
        """The conversation's text, ending with the header of the assistant's next turn."""
        if not tools or self.template_renders_tools:
            return self._apply(messages, list(tools) or None)
        listing = "\n".join(json.dumps(t, sort_keys=True) for t in tools)
        note = f"\n\nYou can call these tools (JSON schemas):\n{listing}"
        messages = [dict(m) for m in messages]
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}{note}"
        else:
            messages.insert(0, {"role": "system", "content": note.lstrip()})
        return self._apply(messages, None)

    def _apply(self, messages: Sequence[Message], tools: list[Any] | None) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tools=tools, add_generation_prompt=True, tokenize=False
        )


async def rollout(
    policy: Policy,
    envs: Sequence[ToolEnv],
    *,
    seeds: Sequence[int | None],
    sampling: SamplingParams = DEFAULT_SAMPLING,
    budget: Budget = Budget(),
    options: Mapping[str, Any] | None = None,
) -> list[Trajectory]:
    """Play one episode on each env, all in step, and return exactly one trajectory each.

    Each turn, every episode still running is sampled in one batch (``policy.generate`` runs in
    a worker thread, so sandbox I/O of other coroutines goes on meanwhile), then all their envs
    step concurrently. A GRPO group is the same seed on ``n`` envs.

    Args:
        policy: samples the model's turns.
        envs: one env per episode; each is reset here and left at the end of its episode (its
            sandbox is released by the env when the episode ends, or at its next reset).
        seeds: the task seed for each env.
        sampling: per-turn sampling; ``max_new_tokens`` is further capped by the budget. When
            it has a seed, turn ``k`` samples with ``seed + k``.
        budget: see :class:`Budget`.
        options: reset options for every env (e.g. ``{"difficulty": 1}``).

    Raises:
        InvalidRequest: ``envs`` and ``seeds`` differ in length.
        ChatTemplateMismatch: the chat template cannot extend a conversation token by token.
        Exception: an error of an env's own code (a bug, neither the agent's nor the
            infrastructure's) propagates once every episode of the turn has stepped.
    """
    async def sample(running: list[_Episode], turn: int) -> list[Completion]:
        turn_sampling = sampling
        if sampling.seed is not None:
            turn_sampling = dataclasses.replace(sampling, seed=sampling.seed + turn)
        return await asyncio.to_thread(_generate, policy, running, turn_sampling, budget)

    episodes = await _play(policy.tokenizer, envs, seeds, sample, budget, options)
    return [e.trajectory(sampling.stats_temperature) for e in episodes]


async def demonstrate(
    tokenizer: PreTrainedTokenizerBase,
    envs: Sequence[ToolEnv],
    *,
    seeds: Sequence[int | None],
    budget: Budget = Budget(),
    options: Mapping[str, Any] | None = None,
) -> list[Trajectory]:
    """Play one episode on each env with the env's scripted expert (:meth:`ToolEnv.demonstrate`)
    and return the trajectories, built exactly as :func:`rollout` builds the model's.

    Each expert turn is tokenised and ends where a sampled turn would (on its stop string), so
    its tokens carry loss mask 1 and the rest of the sequence is what a policy would have seen:
    the imitation loss on these trajectories teaches the model the turns it will later sample
    in the same positions. Log-probs and token statistics are 0 (nothing was sampled).

    Raises:
        InvalidRequest: ``envs`` and ``seeds`` differ in length.
        NotImplementedError: an env has no scripted expert.
    """
    async def script(running: list[_Episode], turn: int) -> list[Completion]:
        del turn
        return [_scripted_turn(tokenizer, e.env.demonstrate()) for e in running]

    episodes = await _play(tokenizer, envs, seeds, script, budget, options)
    return [e.trajectory(1.0) for e in episodes]


TurnSource = Callable[[list["_Episode"], int], Awaitable[list[Completion]]]
"""Writes turn ``k`` of every running episode: the policy's samples, or the expert's text."""


async def _play(
    tokenizer: PreTrainedTokenizerBase,
    envs: Sequence[ToolEnv],
    seeds: Sequence[int | None],
    next_turns: TurnSource,
    budget: Budget,
    options: Mapping[str, Any] | None,
) -> list[_Episode]:
    if len(envs) != len(seeds):
        raise InvalidRequest(f"got {len(envs)} envs but {len(seeds)} seeds; give one seed per env")
    chat = ChatFormat(tokenizer)
    episodes = [_Episode(env, seed, chat) for env, seed in zip(envs, seeds, strict=True)]
    await _gather_all(e.start(options) for e in episodes)
    for turn in itertools.count():
        for episode in episodes:
            episode.truncate_if_over(budget, turn)
        running = [e for e in episodes if e.status == "running"]
        if not running:
            break
        completions = await next_turns(running, turn)
        await _gather_all(e.act(c) for e, c in zip(running, completions, strict=True))
    return episodes


def _scripted_turn(tokenizer: PreTrainedTokenizerBase, text: str) -> Completion:
    """A turn the policy did not sample, as the policy's output would hold it."""
    ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    stopped = any(text.endswith(stop) for stop in TURN_STOPS)
    if not stopped:  # a turn with no stop string ends the way the model ends one: with EOS
        ids += (tokenizer.eos_token_id,)
    zeros = torch.zeros(len(ids), dtype=torch.float32)
    return Completion(ids, text, zeros, zeros.clone(), zeros.clone(),
                      finish_reason="stop" if stopped else "eos")


def _generate(policy: Policy, episodes: list[_Episode], sampling: SamplingParams,
              budget: Budget) -> list[Completion]:
    """One completion per episode; episodes near the token budget sample fewer tokens."""
    by_cap: dict[int, list[int]] = {}
    for index, episode in enumerate(episodes):
        cap = min(sampling.max_new_tokens, budget.max_tokens - len(episode.token_ids))
        by_cap.setdefault(cap, []).append(index)
    completions: list[Completion | None] = [None] * len(episodes)
    for call, (cap, indices) in enumerate(by_cap.items()):
        # Each call gets its own seed: the same seed twice would give row i of both calls the
        # same random draws.
        seed = None if sampling.seed is None else sampling.seed + 1_000_003 * call
        batch = policy.generate(
            [episodes[i].token_ids for i in indices],
            dataclasses.replace(sampling, max_new_tokens=cap, seed=seed),
        )
        for i, completion in zip(indices, batch, strict=True):
            completions[i] = completion
    return [c for c in completions if c is not None]


async def _gather_all(coroutines: Iterable[Awaitable[None]]) -> None:
    """Run all to the end, then raise the first failure: no episode is left half-stepped."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class _Episode:
    """The token sequence of one episode being played, and the env's view of it."""

    def __init__(self, env: ToolEnv, seed: int | None, chat: ChatFormat) -> None:
        self.env, self.seed, self.chat = env, seed, chat
        self.token_ids: list[int] = []
        self.loss_mask: list[int] = []
        self.logprobs: list[float] = []
        self.entropy: list[float] = []
        self.self_certainty: list[float] = []
        self.prompt_length = 0
        self.turns = 0
        self.info: dict[str, Any] = {}
        self.status: Status = "running"
        self.reward: RewardRecord | None = None
        # The text of token_ids as the chat template sees it (special tokens included).
        self._committed = ""

    async def start(self, options: Mapping[str, Any] | None) -> None:
        try:
            _, self.info = await self.env.areset(seed=self.seed, options=dict(options or {}))
        except InfraError as exc:
            self.status, self.reward = "infra_failed", RewardRecord.invalid(exc.kind)
            self.info = {"messages": [], "infra_error": exc.kind}
            return
        self._append_env_text()
        self.prompt_length = len(self.token_ids)

    def truncate_if_over(self, budget: Budget, turn: int) -> None:
        """End a running episode as truncated when a budget leaves no room for model turn
        ``turn``."""
        tokens_left = len(self.token_ids) < budget.max_tokens
        turns_left = budget.max_turns is None or turn < budget.max_turns
        if self.status != "running" or (tokens_left and turns_left):
            return
        self.status = "truncated"
        self.reward = RewardRecord(
            value=0.0, components={"gold": RewardComponent(0.0)}, reason="rollout_budget"
        )

    async def act(self, completion: Completion) -> None:
        """Append the model's turn, let the env answer it, and append that answer if the
        episode goes on."""
        self.token_ids += completion.token_ids
        self.loss_mask += [1] * len(completion.token_ids)
        self.logprobs += completion.logprobs.tolist()
        self.entropy += completion.entropy.tolist()
        self.self_certainty += completion.self_certainty.tolist()
        decode = self.chat.tokenizer.decode
        self._committed += decode(completion.token_ids, skip_special_tokens=False)
        # The env gets the turn as the template will render it back: special tokens the model
        # wrote mid-turn stay in (dropping them would make the re-rendered conversation differ
        # from the sampled tokens); only the EOS that closes the turn goes, the template adds it.
        said = completion.token_ids
        if completion.finish_reason == "eos":
            said = said[:-1]
        self.turns += 1
        *_, self.info = await self.env.astep(decode(said, skip_special_tokens=False))
        self.status = self.info["status"]
        if self.status == "running":
            self._append_env_text()
        else:
            self.reward = self.info["reward_record"]

    def _append_env_text(self) -> None:
        rendered = self.chat.render(self.info["messages"], self.info["tools"])
        if not rendered.startswith(self._committed):
            raise ChatTemplateMismatch(
                "the chat template rendered the conversation so far differently from the tokens "
                "already sampled (they diverge at character "
                f"{_divergence(rendered, self._committed)}); use a model whose template renders "
                "each message independently"
            )
        env_text = rendered[len(self._committed):]
        ids = self.chat.tokenizer.encode(env_text, add_special_tokens=False)
        self.token_ids += ids
        self.loss_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.entropy += [0.0] * len(ids)
        self.self_certainty += [0.0] * len(ids)
        self._committed = rendered

    def trajectory(self, temperature: float) -> Trajectory:
        assert self.reward is not None and self.status != "running"
        # Cut the env's text after the last model turn (left there when a budget ran out): it
        # conditions nothing, and it may overrun the token budget.
        end = len(self.token_ids)
        if self.turns:
            end = max(i for i, m in enumerate(self.loss_mask) if m) + 1
        return Trajectory(
            token_ids=tuple(self.token_ids[:end]),
            loss_mask=tuple(self.loss_mask[:end]),
            logprobs=torch.tensor(self.logprobs[:end], dtype=torch.float32),
            entropy=torch.tensor(self.entropy[:end], dtype=torch.float32),
            self_certainty=torch.tensor(self.self_certainty[:end], dtype=torch.float32),
            prompt_length=self.prompt_length,
            status=self.status,
            reward=self.reward,
            answer=self.info.get("answer"),
            turns=self.turns,
            seed=self.seed,
            temperature=temperature,
            messages=list(self.info.get("messages", [])),
            info=self.info,
        )


def _divergence(a: str, b: str) -> int:
    same = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return next(same, min(len(a), len(b)))
