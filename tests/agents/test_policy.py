"""Batched sampling: what the trainer and the rewards rely on from each completion."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gymbox.agents.loss import token_logprobs
from gymbox.agents.policy import Completion, Policy, SamplingParams, TransformersPolicy
from gymbox.rewards.tokens import token_stats
from gymbox.runtime.errors import InvalidRequest

# Every test here needs SmolLM2 converted (its tokenizer, at least).
pytestmark = pytest.mark.model


def chat(policy: TransformersPolicy, *questions: str) -> list[list[int]]:
    return [
        policy.tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in questions
    ]


def recompute(policy: TransformersPolicy, prompt: list[int], completion: Completion, tau: float):
    """What the trainer sees: one full forward pass over prompt + completion, no cache."""
    ids = torch.tensor([prompt + list(completion.token_ids)])
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits
    n = len(completion.token_ids)
    logprobs = token_logprobs(logits, ids, temperature=tau)[0, -n:]
    stats = token_stats(logits[:, -n - 1 : -1], ids[:, -n:], temperature=tau)
    return logprobs, stats


def test_transformers_policy_satisfies_the_protocol(tiny: TransformersPolicy):
    assert isinstance(tiny, Policy)


def test_one_completion_per_prompt_with_aligned_per_token_values(tiny: TransformersPolicy):
    prompts = chat(tiny, "a", "a much longer question than the first one", "b")
    completions = tiny.generate(prompts, SamplingParams(max_new_tokens=7, seed=0))
    assert len(completions) == 3
    for c in completions:
        n = len(c.token_ids)
        assert 1 <= n <= 7
        assert c.logprobs.shape == c.entropy.shape == c.self_certainty.shape == (n,)
        assert c.logprobs.dtype == torch.float32
        assert (c.logprobs <= 0).all()
        assert ((c.entropy >= -1e-4) & (c.entropy <= math.log(len(tiny.tokenizer)) + 1e-4)).all()
        assert (c.self_certainty >= -1e-4).all(), "KL(U‖p) is never negative"
        assert c.finish_reason == ("length" if n == 7 else "eos")


@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_behaviour_logprobs_are_what_the_trainer_recomputes(tiny: TransformersPolicy, tau: float):
    """KV-cached, left-padded sampling must give exactly the trainer's full-forward values, or
    the on-policy importance ratio is not 1."""
    prompts = chat(tiny, "short", "a noticeably longer prompt, so the first one is padded")
    completions = tiny.generate(prompts, SamplingParams(max_new_tokens=12, temperature=tau, seed=3))
    for prompt, c in zip(prompts, completions, strict=True):
        logprobs, stats = recompute(tiny, prompt, c, tau)
        torch.testing.assert_close(c.logprobs, logprobs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(c.entropy, stats.entropy[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(c.self_certainty, stats.self_certainty[0], atol=1e-4, rtol=1e-4)
    untempered, _ = recompute(tiny, prompts[0], completions[0], 1.0)
    if tau != 1.0:
        assert not torch.allclose(completions[0].logprobs, untempered, atol=1e-3)


def test_same_seed_same_samples_other_seed_other_samples(tiny: TransformersPolicy):
    prompts = chat(tiny, "x", "y", "z")
    first = tiny.generate(prompts, SamplingParams(max_new_tokens=10, seed=42))
    again = tiny.generate(prompts, SamplingParams(max_new_tokens=10, seed=42))
    other = tiny.generate(prompts, SamplingParams(max_new_tokens=10, seed=43))
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.logprobs, b.logprobs)
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_a_tiny_top_p_samples_the_argmax_but_records_the_tempered_logprob(
    tiny: TransformersPolicy,
):
    prompts = chat(tiny, "q")
    greedy = tiny.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0))
    nucleus = tiny.generate(prompts, SamplingParams(max_new_tokens=8, top_p=1e-6, seed=1))
    assert nucleus[0].token_ids == greedy[0].token_ids
    assert (nucleus[0].logprobs < 0).all(), "the full tempered distribution, not the nucleus"


def test_max_new_tokens_bounds_every_completion(tiny: TransformersPolicy):
    completions = tiny.generate(chat(tiny, "q", "r"), SamplingParams(max_new_tokens=3, seed=0))
    assert all(len(c.token_ids) <= 3 for c in completions)
    assert {c.finish_reason for c in completions if len(c.token_ids) == 3} <= {"length", "eos"}


def test_a_stop_string_ends_the_completion_at_the_token_that_completes_it(
    tiny: TransformersPolicy,
):
    prompts = chat(tiny, "q")
    sampling = SamplingParams(max_new_tokens=24, seed=5)
    free = tiny.generate(prompts, sampling)[0]
    decode = tiny.tokenizer.decode
    # The first token that completes a 3-character string not seen in the text before it.
    cut, stop = next(
        (k, text[-3:])
        for k in range(1, len(free.token_ids))
        if len(text := decode(free.token_ids[: k + 1])) >= 3
        and text[-3:] not in decode(free.token_ids[:k])
    )
    stopped = tiny.generate(prompts, dataclasses.replace(sampling, stop=("never there", stop)))
    [c] = stopped
    assert c.finish_reason == "stop"
    assert stop in c.text
    assert c.token_ids == free.token_ids[: cut + 1]


def test_batching_changes_no_greedy_completion(smollm2: TransformersPolicy):
    """Left padding, positions, the KV cache and dropping finished rows are invisible: each
    prompt decodes in a batch exactly as it does alone, down to the log-probs."""
    prompts = chat(smollm2, "What is 2+2?", "Name a color.")
    sampling = SamplingParams(max_new_tokens=40, temperature=0)
    together = smollm2.generate(prompts, sampling)
    alone = [smollm2.generate([p], sampling)[0] for p in prompts]
    assert len(together[0].token_ids) != len(together[1].token_ids)
    for batched, single in zip(together, alone, strict=True):
        assert batched.token_ids == single.token_ids
        assert batched.finish_reason == single.finish_reason
        torch.testing.assert_close(batched.logprobs, single.logprobs, atol=1e-3, rtol=1e-3)


def test_eos_ends_the_completion_and_is_kept_for_training(smollm2: TransformersPolicy):
    [c] = smollm2.generate(
        chat(smollm2, "What is 2+2?"), SamplingParams(max_new_tokens=40, temperature=0)
    )
    assert c.finish_reason == "eos"
    assert c.token_ids[-1] == smollm2.tokenizer.eos_token_id
    assert "<|im_end|>" not in c.text


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ([], "empty batch"),
        ([[]], "empty"),
        (["What is 2+2?"], "not a sequence of int token ids"),
        ([[1, 2, 10**9]], "outside the vocabulary"),
        ([[1, -3]], "outside the vocabulary"),
        ([[1] * 5000], "exceeds the model's context"),  # tiny: 2048 positions
    ],
)
def test_bad_prompts_are_rejected_before_sampling(tiny: TransformersPolicy, prompts, match):
    with pytest.raises(InvalidRequest, match=match):
        tiny.generate(prompts, SamplingParams(max_new_tokens=4))


def test_a_batch_encoding_is_rejected_with_the_fix(tiny: TransformersPolicy):
    encoding = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    with pytest.raises(InvalidRequest, match="return_dict=False"):
        tiny.generate([encoding], SamplingParams(max_new_tokens=4))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"stop": ("",)},
        {"stop": "</tool_call>"},
    ],
)
def test_bad_sampling_params_are_rejected(kwargs):
    with pytest.raises(InvalidRequest):
        SamplingParams(**kwargs)


def test_sampling_ignores_dropout_and_leaves_the_trainers_mode_alone(tiny: TransformersPolicy):
    """The trainer shares the model and leaves it in train mode; sampling must still use the
    deterministic network, or the recorded log-probs belong to a random sub-network."""
    config = tiny.model.config.to_dict() | {"attention_dropout": 0.5}
    model = type(tiny.model)(type(tiny.model.config).from_dict(config))
    model.load_state_dict(tiny.model.state_dict())
    policy = TransformersPolicy(model, tiny.tokenizer)
    model.train()
    prompts = chat(policy, "dropout?")
    [c] = policy.generate(prompts, SamplingParams(max_new_tokens=8, seed=0))
    assert model.training
    model.eval()
    logprobs, _ = recompute(policy, prompts[0], c, 1.0)
    torch.testing.assert_close(c.logprobs, logprobs, atol=1e-4, rtol=1e-4)
