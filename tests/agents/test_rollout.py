"""Multi-turn rollouts: one token sequence per episode, the loss only on the model's tokens."""

from __future__ import annotations

import asyncio
import copy

import numpy as np
import pytest
import torch

from gymbox.agents.loss import token_logprobs
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.agents.rollout import (
    Budget,
    ChatFormat,
    ChatTemplateMismatch,
    Trajectory,
    rollout,
)
from gymbox.envs.builtin.calculator import Calculator
from gymbox.envs.core import Reply, Task
from gymbox.rewards.tokens import token_stats
from gymbox.runtime.errors import InvalidRequest, SandboxDied, SandboxStartError

# Every test here needs SmolLM2 converted (its tokenizer, at least).
pytestmark = pytest.mark.model

SAMPLING = SamplingParams(max_new_tokens=10, temperature=0.8, seed=0)
BUDGET = Budget(max_tokens=480)


def play(policy, envs, seeds, sampling=SAMPLING, budget=BUDGET):
    return asyncio.run(rollout(policy, envs, seeds=seeds, sampling=sampling, budget=budget))


def runs(mask: tuple[int, ...], value: int) -> list[range]:
    """The maximal runs of ``value`` in ``mask``, as index ranges."""
    found, start = [], None
    for i, m in enumerate((*mask, 1 - value)):
        if m == value and start is None:
            start = i
        elif m != value and start is not None:
            found.append(range(start, i))
            start = None
    return found


@pytest.fixture(scope="module")
def calculator_group(tiny: TransformersPolicy) -> list[Trajectory]:
    return play(tiny, [Calculator(max_turns=3) for _ in range(3)], seeds=[1, 2, 3])


def test_exactly_one_trajectory_per_episode_in_order(calculator_group):
    assert [t.seed for t in calculator_group] == [1, 2, 3]
    for t in calculator_group:
        assert t.status == "truncated" and t.turns == 3, "random weights never answer"
        assert t.valid and t.reward.components["gold"].value == 0.0


def test_the_loss_mask_is_one_exactly_on_the_models_turns(tiny, calculator_group):
    decode = tiny.tokenizer.decode
    for t in calculator_group:
        assert not any(t.loss_mask[: t.prompt_length])
        model_runs = runs(t.loss_mask, 1)
        assert len(model_runs) == t.turns
        assert t.loss_mask[-1] == 1, "the sequence ends with the model's last token"
        said = [m["content"] for m in t.messages if m["role"] == "assistant"]
        eos = tiny.tokenizer.eos_token_id
        turns = [[t.token_ids[i] for i in r] for r in model_runs]
        assert [decode(ids[:-1] if ids[-1] == eos else ids) for ids in turns] == said
        replies = [m["content"] for m in t.messages[2:] if m["role"] != "assistant"]
        between = [decode([t.token_ids[i] for i in r]) for r in runs(t.loss_mask, 0)[1:]]
        assert len(between) == t.turns - 1
        for text, reply in zip(between, replies, strict=False):
            assert reply in text and text.endswith("<|im_start|>assistant\n")


def test_values_are_recorded_on_model_tokens_and_zero_elsewhere(calculator_group):
    for t in calculator_group:
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        n = len(t.token_ids)
        assert t.logprobs.shape == t.entropy.shape == t.self_certainty.shape == (n,)
        assert (t.logprobs[mask] < 0).all() and (t.entropy[mask] > 0).all()
        for values in (t.logprobs, t.entropy, t.self_certainty):
            assert (values[~mask] == 0).all()


def test_the_trainers_forward_pass_reproduces_the_behaviour_logprobs(tiny, calculator_group):
    """The sequence is exactly what the model conditioned on while sampling, turn after turn:
    one forward pass over it gives back every recorded value (importance ratio 1)."""
    for t in calculator_group:
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            logits = tiny.model(input_ids=ids).logits
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        recomputed = token_logprobs(logits, ids, temperature=t.temperature)[0]
        torch.testing.assert_close(recomputed[mask], t.logprobs[mask], atol=1e-4, rtol=1e-4)
        stats = token_stats(logits[:, :-1], ids[:, 1:], temperature=t.temperature)
        entropy = torch.nn.functional.pad(stats.entropy[0], (1, 0))
        torch.testing.assert_close(entropy[mask], t.entropy[mask], atol=1e-4, rtol=1e-4)


def test_a_seeded_rollout_is_reproducible(tiny, calculator_group):
    again = play(tiny, [Calculator(max_turns=3) for _ in range(3)], seeds=[1, 2, 3])
    assert [t.token_ids for t in again] == [t.token_ids for t in calculator_group]


def test_the_token_budget_bounds_the_sequence(tiny):
    [t] = play(tiny, [Calculator(max_turns=8)], seeds=[4], budget=Budget(max_tokens=260))
    assert len(t.token_ids) <= 260
    assert t.turns >= 1
    assert t.status == "truncated" and t.reward.reason == "rollout_budget"
    assert t.valid and t.reward.value == 0.0


def test_the_turn_budget_bounds_the_model_turns(tiny):
    [t] = play(tiny, [Calculator(max_turns=8)], seeds=[4], budget=Budget(max_turns=2))
    assert t.turns == 2
    assert t.status == "truncated" and t.reward.reason == "rollout_budget"


class _DiesOnSecondTurn(Calculator):
    """A fault injected on purpose: the sandbox dies while the env answers turn 2."""

    def reply(self, text: str) -> Reply:
        if self._turn == 2:
            raise SandboxDied("injected: the container went away")
        return super().reply(text)


class _NoSandboxAtReset(Calculator):
    """A fault injected on purpose: no sandbox can be started for the episode."""

    def draw_task(self, rng: np.random.Generator, *, difficulty: int = 2) -> Task:
        raise SandboxStartError("injected: the engine refused to create the container")


def test_an_infra_failure_ends_only_its_episode_with_an_invalid_record(tiny):
    broken, healthy = play(
        tiny, [_DiesOnSecondTurn(max_turns=3), Calculator(max_turns=3)], seeds=[5, 5]
    )
    assert broken.status == "infra_failed"
    assert not broken.valid and broken.reward.reason == "sandbox_died"
    assert broken.turns == 2 and len(runs(broken.loss_mask, 1)) == 2
    assert broken.info["infra_error"] == "sandbox_died"
    assert healthy.valid and healthy.status == "truncated" and healthy.turns == 3


def test_an_episode_that_cannot_start_still_yields_one_invalid_trajectory(tiny):
    failed, healthy = play(tiny, [_NoSandboxAtReset(), Calculator(max_turns=1)], seeds=[6, 6])
    assert failed.status == "infra_failed" and not failed.valid
    assert failed.token_ids == () and failed.turns == 0
    assert healthy.valid and healthy.turns == 1


def test_a_bug_in_env_code_is_raised_not_hidden(tiny):
    class Buggy(Calculator):
        def draw_task(self, rng: np.random.Generator, *, difficulty: int = 2) -> Task:
            raise KeyError("a bug in the env")

    with pytest.raises(KeyError, match="a bug in the env"):
        play(tiny, [Buggy(), Calculator(max_turns=1)], seeds=[0, 0])


def test_one_seed_per_env_is_required(tiny):
    with pytest.raises(InvalidRequest, match="one seed per env"):
        play(tiny, [Calculator()], seeds=[1, 2])


def test_tools_reach_the_model_even_when_the_template_ignores_them(tiny):
    env = Calculator()
    _, info = env.reset(seed=0)
    env.close()
    chat = ChatFormat(tiny.tokenizer)
    assert not chat.template_renders_tools, "SmolLM2's template has no tools section"
    text = chat.render(info["messages"], info["tools"])
    system = text.split("<|im_end|>")[0]
    assert '"name": "calculate"' in system and "expression" in system

    aware = copy.deepcopy(tiny.tokenizer)
    aware.chat_template = (
        "{% if tools %}TOOLS:{{ tools | map(attribute='function.name') | join(',') }}\n{% endif %}"
        + tiny.tokenizer.chat_template
    )
    chat = ChatFormat(aware)
    assert chat.template_renders_tools
    text = chat.render(info["messages"], info["tools"])
    assert text.startswith("TOOLS:calculate\n") and "JSON schemas" not in text


def test_a_template_that_rewrites_earlier_turns_is_rejected(tiny):
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = "turns={{ messages | length }}\n" + tokenizer.chat_template
    policy = TransformersPolicy(tiny.model, tokenizer)
    with pytest.raises(ChatTemplateMismatch, match="diverge at character 6"):
        play(policy, [Calculator(max_turns=3)], seeds=[0])


def test_special_tokens_written_mid_turn_keep_the_sequence_exact(tiny):
    """A model that writes chat-control tokens inside its turn (its logits pushed on purpose
    towards <|im_start|>) must neither break the rollout nor desynchronise its tokens."""
    model = copy.deepcopy(tiny.model)
    im_start = tiny.tokenizer.convert_tokens_to_ids("<|im_start|>")

    def favour_im_start(module, inputs, logits):
        logits[..., im_start] += 6.0
        return logits

    model.lm_head.register_forward_hook(favour_im_start)
    policy = TransformersPolicy(model, tiny.tokenizer)
    [t] = play(policy, [Calculator(max_turns=2)], seeds=[0])
    assert t.turns == 2
    assert sum(i == im_start for i, m in zip(t.token_ids, t.loss_mask, strict=True) if m) >= 1
    assert "<|im_start|>" in t.messages[2]["content"]
    ids = torch.tensor([t.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    mask = torch.tensor(t.loss_mask, dtype=torch.bool)
    recomputed = token_logprobs(logits, ids, temperature=t.temperature)[0]
    torch.testing.assert_close(recomputed[mask], t.logprobs[mask], atol=1e-4, rtol=1e-4)


def test_smollm2_episodes_round_trip_through_the_trainers_forward_pass(smollm2):
    sampling = SamplingParams(max_new_tokens=48, temperature=0.7, seed=1,
                              stop=("</tool_call>", "</answer>"))
    group = play(smollm2, [Calculator(max_turns=2) for _ in range(2)], seeds=[3, 3],
                 sampling=sampling, budget=Budget(max_tokens=700))
    for t in group:
        assert t.valid and t.turns >= 1
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            logits = smollm2.model(input_ids=ids).logits
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        recomputed = token_logprobs(logits, ids, temperature=0.7)[0]
        torch.testing.assert_close(recomputed[mask], t.logprobs[mask], atol=2e-3, rtol=1e-3)
