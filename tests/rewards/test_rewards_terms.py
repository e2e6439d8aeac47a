"""Reward terms by name, and RewardMix.score composing them with the estimator."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from gymbox.rewards.advantages import GRPO
from gymbox.rewards.intrinsic import likelihood_semantic_entropy, semantic_entropy
from gymbox.rewards.mix import EntropyGuard, GoldWhereLabelled, RewardMix, Term
from gymbox.rewards.record import RewardRecord
from gymbox.rewards.terms import (
    TERMS,
    MajorityVote,
    SeedScale,
    is_labelled,
    make_term,
)


def episode(answer, gold=0.0, *, valid=True, entropy=1.0, certainty=0.5, logprob=-1.0,
            tokens=(5, 6, 7), seed=0):
    n = len(tokens) + 1
    reward = RewardRecord.of(gold=gold) if valid else RewardRecord.invalid("sandbox_died")
    return SimpleNamespace(
        answer=answer, reward=reward, loss_mask=(0,) + (1,) * len(tokens),
        token_ids=(1, *tokens), seed=seed,
        entropy=torch.full((n,), entropy), self_certainty=torch.full((n,), certainty),
        logprobs=torch.full((n,), logprob),
    )


def test_every_registered_term_scores_a_group_by_name():
    group = [episode("4", 1.0), episode("4.0", 1.0), episode("5"), episode(None)]
    for name in TERMS:
        rewards = make_term(name)(group)
        assert rewards.shape == (4,) and rewards.dtype == torch.float32, name
        assert torch.isfinite(rewards).all(), name
    assert make_term("gold").intrinsic is False
    assert all(make_term(n).intrinsic for n in TERMS if n != "gold")


def test_unknown_terms_and_options_are_value_errors_that_list_the_names():
    with pytest.raises(ValueError, match="choose from gold, majority_vote"):
        make_term("novelty")
    with pytest.raises(ValueError, match=r"'majority_vote'.*unexpected keyword"):
        make_term("majority_vote", {"matchh": "exact"})
    with pytest.raises(ValueError, match="match must be"):
        make_term("majority_vote", {"match": "fuzzy"})


def test_votes_compare_numbers_by_value_and_invalid_members_cast_no_vote():
    group = [episode("4"), episode("4.0"), episode(r"\boxed{5}"), episode("5", valid=False),
             episode("5", valid=False)]
    assert MajorityVote()(group).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert make_term("soft_vote")(group).tolist() == pytest.approx([0.4, 0.4, 0.2, 0, 0])
    # exact matching splits "4" and "4.0": no two answers agree, so no one is paid
    assert MajorityVote(match="exact")(group).tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]


def test_token_terms_read_only_the_models_tokens():
    a = episode("1", entropy=2.0, certainty=0.1, logprob=-0.5)
    b = episode("1", entropy=0.5, certainty=0.9, logprob=-2.0)
    a.entropy[0] = b.entropy[0] = 100.0  # the prompt position: outside the loss mask
    assert make_term("negative_entropy")([a, b]).tolist() == pytest.approx([-2.0, -0.5])
    assert make_term("negative_entropy", {"reduce": "sum"})([a, b]).tolist() == pytest.approx(
        [-6.0, -1.5])
    assert make_term("self_certainty")([a, b]).tolist() == pytest.approx([0.1, 0.9])
    assert make_term("trajectory_logprob", {"reduce": "sum"})([a, b]).tolist() == pytest.approx(
        [-1.5, -6.0])


def test_borda_follows_certainty_when_power_is_large():
    group = [episode("7", certainty=3.0), episode("8", certainty=1.0),
             episode("8", certainty=2.0)]
    assert make_term("borda", {"power": 0.0})(group).tolist() == [0.0, 1.0, 1.0]
    assert make_term("borda", {"power": 3.0})(group).tolist() == [1.0, 0.0, 0.0]


def test_rnd_novelty_falls_for_a_response_the_policy_keeps_giving():
    term = make_term("rnd", {"seed": 0, "lr": 1e-2})
    repeated = [episode("1", tokens=(11, 12, 13)) for _ in range(4)]
    first = term(repeated).mean().item()
    for _ in range(30):
        term(repeated)
    assert term(repeated).mean().item() < first
    novel = [episode("1", tokens=(200, 201, 202, 203, 204)) for _ in range(4)]
    assert term(novel).mean().item() > term(repeated).mean().item()


def test_score_composes_terms_and_the_estimator_and_logs_each_term():
    mix = RewardMix({"gold": Term(1.0, reward=make_term("gold")),
                     "majority_vote": Term(0.5, reward=make_term("majority_vote"))},
                    estimator=GRPO())
    groups = [[episode("4", 1.0), episode("4", 1.0), episode("5", 0.0)],
              [episode("1", 0.0), episode("2", 1.0), episode("2", valid=False)]]
    out = mix.score(groups, step=0, ids=[10, 11])
    # the same as the dict API on the same rewards
    gold = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    vote = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # "1" vs "2": nothing agrees
    valid = torch.tensor([True] * 5 + [False])
    expected = mix.advantages({"gold": gold, "majority_vote": vote}, valid,
                              torch.tensor([10, 10, 10, 11, 11, 11]), step=0)
    assert torch.allclose(out.values, expected.values)
    assert out.keep.tolist() == [True] * 5 + [False] and out.invalid == 1
    assert out.values[5] == 0.0
    row = out.metrics()
    assert row["weight/gold"] == 1.0 and row["weight/majority_vote"] == 0.5
    assert row["reward/gold"] == pytest.approx(3 / 5)
    assert row["reward/majority_vote"] == pytest.approx(2 / 5)
    assert row["labelled_fraction"] == 1.0
    assert out.records[0].components["majority_vote"].weight == 0.5
    assert not out.records[5].valid


def test_semi_supervised_gold_where_labelled_uses_the_labelled_fraction():
    seeds = list(range(40))
    labelled = [is_labelled(s, 0.5) for s in seeds]
    assert 10 < sum(labelled) < 30
    mix = RewardMix({"gold": Term(1.0, reward=make_term("gold")),
                     "majority_vote": Term(1.0, reward=make_term("majority_vote"))},
                    applies=GoldWhereLabelled(), labelled_fraction=0.5)
    groups = [[episode("4", 1.0, seed=s), episode("5", 0.0, seed=s), episode("4", 0.0, seed=s)]
              for s in seeds]
    out = mix.score(groups, step=0)
    for k, is_lab in enumerate(labelled):
        members = slice(3 * k, 3 * k + 3)
        assert out.applies["gold"][members].all() == is_lab
        assert out.applies["majority_vote"][members].any() != is_lab
        names = set(out.records[3 * k].components)
        assert names == ({"gold"} if is_lab else {"majority_vote"})
    assert out.metrics()["labelled_fraction"] == pytest.approx(sum(labelled) / 40)


def test_ttrl_form_votes_on_the_whole_group_and_trains_on_the_first_members():
    mix = RewardMix({"majority_vote": Term(1.0, reward=make_term("majority_vote"))},
                    train_on=2)
    # Votes over four: "7" wins 3-1. Trained on the first two only.
    group = [episode("7"), episode("9"), episode("7"), episode("7")]
    out = mix.score([group], step=0)
    assert out.rewards["majority_vote"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert out.keep.tolist() == [True, True, False, False]
    assert out.values[0] > 0 > out.values[1] and out.values[2:].tolist() == [0.0, 0.0]


def test_seed_scale_shrinks_disagreeing_groups_and_the_paper_form_weights_by_likelihood():
    agree = [episode("3") for _ in range(4)]
    split = [episode("3", logprob=-0.1), episode("3", logprob=-0.1),
             episode("4", logprob=-5.0), episode("5", logprob=-5.0)]
    count, likelihood = SeedScale(entropy="count"), SeedScale(entropy="likelihood")
    assert count(agree) == likelihood(agree) == 1.0
    assert count(split) == pytest.approx(1 - semantic_entropy([0, 0, 1, 2]) / math.log(4))
    # the likely answer dominates the likelihood-weighted entropy: less shrinking
    assert likelihood(split) > count(split)
    assert likelihood_semantic_entropy([0, 0, 1, 2], [-1.0] * 4) == pytest.approx(
        semantic_entropy([0, 0, 1, 2]))
    mix = RewardMix({"gold": Term(1.0, reward=make_term("gold"))}, scale=count)
    gold = [episode("3", 1.0), episode("3", 1.0), episode("4", 0.0), episode("5", 0.0)]
    plain = RewardMix({"gold": Term(1.0, reward=make_term("gold"))}).score([gold], step=0)
    scaled = mix.score([gold], step=0)
    assert torch.allclose(scaled.values, plain.values * count(gold))
    assert scaled.metrics()["seed_scale"] == pytest.approx(count(gold))


def test_the_entropy_guard_lowers_intrinsic_weights_and_is_logged():
    mix = RewardMix({"gold": Term(1.0, reward=make_term("gold")),
                     "self_certainty": Term(0.5, reward=make_term("self_certainty"))},
                    guard=EntropyGuard(fraction=0.5))
    high = [[episode("1", 1.0, entropy=2.0), episode("2", 0.0, entropy=2.0)]]
    low = [[episode("1", 1.0, entropy=0.5), episode("2", 0.0, entropy=0.5)]]
    first = mix.score(high, step=0).metrics()
    later = mix.score(low, step=1).metrics()
    assert first["guard/factor"] == 1.0 and first["weight/self_certainty"] == 0.5
    assert later["guard/factor"] == pytest.approx(0.5)
    assert later["weight/self_certainty"] == pytest.approx(0.25) and later["weight/gold"] == 1.0
    assert later["guard/entropy"] == pytest.approx(0.5)


def test_score_needs_every_term_to_have_a_reward_object():
    mix = RewardMix({"gold": Term(1.0)})
    with pytest.raises(ValueError, match="have none"):
        mix.score([[episode("1")]], step=0)
