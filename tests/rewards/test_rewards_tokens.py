"""Per-token entropy, self-certainty and log-probs, and the trajectory rewards built on them."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gymbox.rewards import (
    masked_mean,
    masked_sum,
    negative_entropy_reward,
    self_certainty_reward,
    token_stats,
    trajectory_logprob_reward,
)


def reference_terms(probabilities: list[float]) -> tuple[float, float]:
    """Entropy and KL(U‖p) of one distribution, straight from their definitions."""
    vocab = len(probabilities)
    entropy = -sum(p * math.log(p) for p in probabilities)
    certainty = -sum(math.log(vocab * p) for p in probabilities) / vocab
    return entropy, certainty


def logits_of(probabilities: list[float]) -> torch.Tensor:
    return torch.tensor([[[math.log(p) for p in probabilities]]])


def test_uniform_distribution_has_max_entropy_and_zero_self_certainty():
    stats = token_stats(torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.long))
    assert torch.allclose(stats.entropy, torch.full((2, 3), math.log(8)))
    assert torch.allclose(stats.self_certainty, torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(stats.logprobs, torch.full((2, 3), -math.log(8)))


def test_peaked_distribution_matches_hand_computed_values():
    # p = (0.7, 0.1, 0.1, 0.1):
    #   H  = -(0.7 ln 0.7 + 3 · 0.1 ln 0.1)          = 0.940448
    #   SC = -(1/4)(ln 2.8 + 3 ln 0.4)                = 0.429813
    stats = token_stats(logits_of([0.7, 0.1, 0.1, 0.1]), torch.tensor([[1]]))
    assert stats.entropy.item() == pytest.approx(0.940448, abs=1e-5)
    assert stats.self_certainty.item() == pytest.approx(0.429813, abs=1e-5)
    assert stats.logprobs.item() == pytest.approx(math.log(0.1), abs=1e-6)
    assert (stats.entropy.item(), stats.self_certainty.item()) == pytest.approx(
        reference_terms([0.7, 0.1, 0.1, 0.1]), abs=1e-5
    )


def test_temperature_divides_the_logits_first():
    # logits (2, 0) at τ = 2 are (1, 0): p = (e/(e+1), 1/(e+1)) = (0.731059, 0.268941)
    #   H  = 0.582203,  SC = -(1/2)(ln 1.462117 + ln 0.537883) = 0.120115
    stats = token_stats(torch.tensor([[[2.0, 0.0]]]), torch.tensor([[0]]), temperature=2.0)
    assert stats.entropy.item() == pytest.approx(0.582203, abs=1e-5)
    assert stats.self_certainty.item() == pytest.approx(0.120115, abs=1e-5)
    assert stats.logprobs.item() == pytest.approx(math.log(0.731059), abs=1e-5)


def test_large_vocabulary_agrees_with_a_full_log_softmax_for_any_chunking():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 49152, generator=generator) * 3 + 40.0  # large offset: stability
    tokens = torch.randint(0, 49152, (2, 5), generator=generator)
    log_p = torch.log_softmax(logits.double() / 0.7, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    certainty = -log_p.mean(-1) - math.log(49152)
    picked = log_p.gather(-1, tokens[..., None]).squeeze(-1)
    for chunk_rows in (1, 3, 10, 64):
        stats = token_stats(logits, tokens, temperature=0.7, chunk_rows=chunk_rows)
        assert torch.allclose(stats.entropy.double(), entropy, atol=3e-5)
        assert torch.allclose(stats.self_certainty.double(), certainty, atol=3e-5)
        assert torch.allclose(stats.logprobs.double(), picked, atol=3e-5)


def test_a_sliced_view_and_any_tiling_give_the_same_terms():
    generator = torch.Generator().manual_seed(1)
    padded = torch.randn(3, 8, 50, generator=generator) * 5
    logits = padded[:, :-1]  # the usual shift: a non-contiguous view
    tokens = torch.randint(0, 50, (3, 7), generator=generator)
    reference = token_stats(logits.contiguous(), tokens, chunk_rows=10_000)
    for chunk_rows in (1, 2, 6, 7, 8, 15, 21):
        stats = token_stats(logits, tokens, chunk_rows=chunk_rows)
        assert torch.allclose(stats.entropy, reference.entropy, atol=1e-6)
        assert torch.allclose(stats.self_certainty, reference.self_certainty, atol=1e-6)
        assert torch.allclose(stats.logprobs, reference.logprobs, atol=1e-6)
    empty = token_stats(torch.zeros(2, 0, 50), torch.zeros(2, 0, dtype=torch.long))
    assert empty.entropy.shape == (2, 0) and empty.logprobs.shape == (2, 0)


def test_half_precision_logits_are_computed_in_float32():
    logits = torch.randn(1, 4, 100).to(torch.bfloat16)
    stats = token_stats(logits)
    assert stats.entropy.dtype == torch.float32
    assert stats.logprobs is None
    expected = token_stats(logits.float())
    assert torch.allclose(stats.entropy, expected.entropy)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=2, max_size=30),
    st.floats(0.1, 5.0),
)
def test_entropy_is_bounded_and_self_certainty_is_a_nonnegative_kl(row, temperature):
    stats = token_stats(torch.tensor([[row]]), temperature=temperature)
    assert -1e-5 <= stats.entropy.item() <= math.log(len(row)) + 1e-5
    assert stats.self_certainty.item() >= -1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_rows": 0}, "chunk_rows"),
        ({"tokens": torch.zeros(2, 2, dtype=torch.long)}, "tokens must be"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        token_stats(torch.zeros(1, 3, 4), **kwargs)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        token_stats(torch.zeros(3, 4))


def test_masked_reductions_ignore_padding_even_when_it_is_nan():
    values = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("nan"), float("nan")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(values, mask).tolist() == [3.0, 4.0]
    assert masked_mean(values, mask).tolist() == [1.5, 4.0]
    assert masked_mean(values, torch.zeros(2, 3)).tolist() == [0.0, 0.0]


def test_trajectory_rewards_reduce_over_response_tokens_only():
    # Row 0: one uniform token over 4 (H = ln 4, SC = 0) and one peaked token; row 1: padding.
    peaked = [math.log(p) for p in (0.7, 0.1, 0.1, 0.1)]
    logits = torch.tensor([[[0.0] * 4, peaked, [9.0, 0, 0, 0]], [[0.0] * 4] * 3])
    tokens = torch.tensor([[2, 0, 0], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    stats = token_stats(logits, tokens)
    h, sc = reference_terms([0.7, 0.1, 0.1, 0.1])
    assert self_certainty_reward(stats, mask).tolist() == pytest.approx([sc / 2, 0.0], abs=1e-5)
    assert negative_entropy_reward(stats, mask).tolist() == pytest.approx(
        [-(math.log(4) + h) / 2, -math.log(4)], abs=1e-5
    )
    assert negative_entropy_reward(stats, mask, reduce="sum").tolist() == pytest.approx(
        [-(math.log(4) + h), -3 * math.log(4)], abs=1e-5
    )
    assert trajectory_logprob_reward(stats, mask, reduce="sum").tolist() == pytest.approx(
        [math.log(0.25) + math.log(0.7), 3 * math.log(0.25)], abs=1e-5
    )
    assert trajectory_logprob_reward(stats, mask).tolist() == pytest.approx(
        [(math.log(0.25) + math.log(0.7)) / 2, math.log(0.25)], abs=1e-5
    )


def test_reward_arguments_are_checked():
    stats = token_stats(torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="tokens="):
        trajectory_logprob_reward(stats, torch.ones(1, 2))
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        negative_entropy_reward(stats, torch.ones(1, 2), reduce="max")
