"""VLLMPolicy keeps TransformersPolicy's contract: same fields, same log-prob meaning, the same
errors, and per-row seeds; its numbers agree with the trainer's own recomputation."""

from __future__ import annotations

import threading

import pytest
import torch

from gymbox.agents.loss import token_logprobs
from gymbox.agents.policy import Interrupted, Policy, SamplingParams
from gymbox.rewards.tokens import token_stats
from gymbox.runtime.errors import InvalidRequest
from tests.vllm.conftest import load_hf, needs_vllm

pytestmark = needs_vllm

# float32 engine vs float32 transformers on CPU: the kernels differ (paged attention, fused
# q/k/v), so agreement is to rounding, not bit-exact. Measured: ≤ 5e-5 on SmolLM2-135M.
LOGPROB_TOLERANCE = 1e-3


def chat(policy, text: str) -> list[int]:
    return policy.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False
    )


def recompute(model, prompt: list[int], completion: tuple[int, ...], temperature: float):
    """What the trainer computes for these tokens: one unpadded forward pass, then the same
    functions the loss and the rewards use."""
    ids = torch.tensor([prompt + list(completion)])
    with torch.no_grad():
        logits = model(ids).logits
    n = len(prompt)
    stats = token_stats(logits[:, n - 1:-1], ids[:, n:], temperature=temperature)
    return (token_logprobs(logits, ids, temperature=temperature)[0, n:],
            stats.entropy[0], stats.self_certainty[0])


def test_it_is_a_policy_with_the_completion_contract(vllm_policy):
    assert isinstance(vllm_policy, Policy)
    prompts = [chat(vllm_policy, "hello"), chat(vllm_policy, "what is 2+2, really?")]
    completions = vllm_policy.generate(prompts, SamplingParams(max_new_tokens=5, seed=0))
    assert len(completions) == 2
    for c in completions:
        assert 1 <= len(c.token_ids) <= 5
        for values in (c.logprobs, c.entropy, c.self_certainty):
            assert values.dtype == torch.float32 and values.shape == (len(c.token_ids),)
        assert c.text == vllm_policy.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert c.finish_reason == ("length" if len(c.token_ids) == 5 else "eos")
        assert (c.logprobs <= 0).all() and (c.entropy >= 0).all()


@pytest.mark.parametrize("temperature", [0.7, 1.0, 0.0])
def test_logprobs_and_token_stats_agree_with_the_trainers_recomputation(
    vllm_policy, vllm_tiny_dir, temperature
):
    trainer_model = load_hf(vllm_tiny_dir)
    prompts = [chat(vllm_policy, "Tell me a story."), chat(vllm_policy, "2+2?")] * 2
    sampling = SamplingParams(max_new_tokens=24, temperature=temperature, seed=1)
    gaps = []
    for prompt, c in zip(prompts, vllm_policy.generate(prompts, sampling), strict=True):
        logprobs, entropy, certainty = recompute(
            trainer_model, prompt, c.token_ids, sampling.stats_temperature
        )
        gaps.append((c.logprobs - logprobs).abs().max().item())
        torch.testing.assert_close(c.entropy, entropy, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(c.self_certainty, certainty, atol=1e-4, rtol=1e-4)
    print(f"max |vLLM - trainer| log-prob gap at τ={temperature}: {max(gaps):.2e}")
    assert max(gaps) < LOGPROB_TOLERANCE


def test_top_p_logprobs_are_the_tempered_full_vocabulary_ones(vllm_policy, vllm_tiny_dir):
    """vLLM renormalises over the nucleus; gymbox records log p_τ over the whole vocabulary
    (on-policy ratio exactly 1), as TransformersPolicy does. The tiny random model is nearly
    uniform, so the nucleus of 0.5 holds about half the mass: the two differ by ~log 2."""
    trainer_model = load_hf(vllm_tiny_dir)
    prompt = chat(vllm_policy, "Tell me a story.")
    sampling = SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.5, seed=2)
    [c] = vllm_policy.generate([prompt], sampling)
    logprobs, _, _ = recompute(trainer_model, prompt, c.token_ids, 0.8)
    torch.testing.assert_close(c.logprobs, logprobs, atol=LOGPROB_TOLERANCE, rtol=0)


def test_a_group_of_one_prompt_gets_different_samples_and_a_seed_repeats_them(vllm_policy):
    group = [chat(vllm_policy, "Write anything.")] * 6
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
    first = [c.token_ids for c in vllm_policy.generate(group, sampling)]
    assert len(set(first)) == len(first), "rows of one seeded batch must not share a stream"
    again = [c.token_ids for c in vllm_policy.generate(group, sampling)]
    assert again == first
    other = [c.token_ids for c in vllm_policy.generate(group, SamplingParams(
        max_new_tokens=8, temperature=1.0, seed=8))]
    assert other != first


def test_a_stop_string_ends_the_completion_on_the_token_that_completes_it(vllm_policy):
    # Near-uniform sampling over 49k tokens hits one holding "e" within a few tokens.
    prompts = [chat(vllm_policy, "Say something.")] * 4
    sampling = SamplingParams(max_new_tokens=64, temperature=1.0, stop=("e",), seed=3)
    for c in vllm_policy.generate(prompts, sampling):
        assert c.finish_reason == "stop"
        assert "e" in c.text
        before = vllm_policy.tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True)
        assert "e" not in before


def test_bad_prompts_are_refused_with_transformers_policys_errors(vllm_policy):
    sampling = SamplingParams(max_new_tokens=4)
    vocab = len(vllm_policy.tokenizer)
    with pytest.raises(InvalidRequest, match="empty batch"):
        vllm_policy.generate([], sampling)
    with pytest.raises(InvalidRequest, match="prompt 1 is empty"):
        vllm_policy.generate([[1, 2], []], sampling)
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        vllm_policy.generate([[1, vocab + 5]], sampling)
    with pytest.raises(InvalidRequest, match="not a sequence of int token ids"):
        vllm_policy.generate(["hello"], sampling)
    with pytest.raises(InvalidRequest, match="exceeds the context"):
        vllm_policy.generate([[1] * 1021], sampling)


def test_an_interrupt_stops_generation_at_the_next_engine_step_and_leaves_no_request_behind(
    vllm_policy, monkeypatch
):
    """How Ctrl-C stops a vLLM run within a token's time: the event is checked between engine
    steps, and the interrupted call's requests are aborted, so the next call is unaffected."""
    prompts = [chat(vllm_policy, "Tell me a long story.")] * 3
    sampling = SamplingParams(max_new_tokens=200, temperature=1.0, seed=5)
    uninterrupted = [c.token_ids for c in vllm_policy.generate(prompts, sampling)]

    engine = vllm_policy.llm.llm_engine
    real_step, steps = engine.step, []
    stop = threading.Event()

    def step():  # the real engine step; the stop arrives (as Ctrl-C would) during the 5th
        steps.append(1)
        if len(steps) == 5:
            stop.set()
        return real_step()

    monkeypatch.setattr(engine, "step", step)
    vllm_policy.interrupt = stop
    try:
        with pytest.raises(Interrupted):
            vllm_policy.generate(prompts, sampling)
    finally:
        vllm_policy.interrupt = None
    assert len(steps) == 5, "generation went on past the step in which the stop arrived"
    assert not engine.has_unfinished_requests()
    monkeypatch.setattr(engine, "step", real_step)
    assert [c.token_ids for c in vllm_policy.generate(prompts, sampling)] == uninterrupted
