"""Group votes, semantic entropy and Borda selection, pinned by hand-computed cases."""

import math

import pytest
import torch

from gymbox.rewards import (
    MathEquivalence,
    NumericMatch,
    borda_vote,
    cluster_answers,
    majority_vote,
    seed_scale,
    semantic_entropy,
)


def test_majority_vote_rewards_agreement_with_the_most_common_answer():
    vote = majority_vote(["12", "13", "12", "12", "7"])
    assert vote.label == "12"
    assert vote.rewards.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert vote.soft_rewards.tolist() == pytest.approx([0.6, 0.2, 0.6, 0.6, 0.2])
    assert vote.agreement == pytest.approx(0.6)
    assert vote.clusters == [0, 1, 0, 0, 2]


def test_a_tie_goes_to_the_answer_seen_first():
    assert majority_vote(["5", "4", "4", "5"]).label == "5"
    assert majority_vote(["4", "5", "5", "4"]).label == "4"


def test_unparseable_answers_cast_no_vote_and_score_zero():
    vote = majority_vote([None, None, None, "3", "3", "9"])
    assert vote.label == "3"
    assert vote.rewards.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert vote.soft_rewards.tolist() == pytest.approx([0, 0, 0, 2 / 6, 2 / 6, 1 / 6])
    assert vote.agreement == pytest.approx(2 / 6)


def test_an_answer_the_match_cannot_read_casts_no_vote_and_wins_nothing():
    # The collapse a seed of the main job found: the policy answered the system prompt's
    # placeholder "<answer>...</answer>". Under a numeric match "..." is equal to nothing, itself
    # included; as singleton clusters the first one won every group where no two numbers agreed.
    numeric = NumericMatch().equivalent
    vote = majority_vote(["...", "42", "...", "42.0"], numeric)
    assert vote.label == "42"
    assert vote.rewards.tolist() == [0.0, 1.0, 0.0, 1.0]
    vote = majority_vote(["...", "...", "...", "..."], numeric)
    assert vote.label is None
    assert vote.rewards.tolist() == [0.0] * 4
    assert vote.agreement == 0.0


def test_a_group_with_no_parseable_answer_has_no_label_and_no_reward():
    vote = majority_vote([None, None])
    assert vote.label is None
    assert vote.rewards.tolist() == [0.0, 0.0]
    assert vote.soft_rewards.tolist() == [0.0, 0.0]
    assert vote.agreement == 0.0


def test_a_group_where_no_two_answers_agree_has_no_label_and_pays_no_one():
    # Seen in the main job's failing seeds: four different wrong numbers, and the first one
    # was paid as the "majority" in every such group.
    vote = majority_vote(["12", "13", None, "7"])
    assert vote.label is None
    assert vote.rewards.tolist() == [0.0] * 4
    assert vote.agreement == 0.0
    assert vote.soft_rewards.tolist() == pytest.approx([0.25, 0.25, 0.0, 0.25])


def test_a_group_of_one_agrees_with_itself():
    vote = majority_vote(["x"])
    assert (vote.label, vote.rewards.tolist(), vote.agreement) == ("x", [1.0], 1.0)


def test_votes_cluster_with_the_verifiers_equivalence():
    answers = ["0.5", r"\frac{1}{2}", "1/3", "2/4"]
    assert majority_vote(answers).label is None  # exact: four singletons, nothing agrees
    vote = majority_vote(answers, equivalent=MathEquivalence().equivalent)
    assert vote.label == "0.5"
    assert vote.rewards.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert vote.agreement == pytest.approx(0.75)


def test_clusters_are_numbered_by_first_appearance():
    assert cluster_answers(["b", None, "a", "B", "a"]) == [0, None, 1, 0, 1]


def test_an_empty_group_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        majority_vote([])
    with pytest.raises(ValueError, match="at least one"):
        semantic_entropy([])
    with pytest.raises(ValueError, match="at least one"):
        borda_vote([], [])


def test_semantic_entropy_of_cluster_shares():
    assert semantic_entropy([0, 0, 0, 0]) == 0.0
    assert semantic_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4))
    # p = (1/2, 1/4, 1/4): the unparseable answer is a cluster of its own.
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert semantic_entropy([0, 0, 1, None]) == pytest.approx(expected)
    assert semantic_entropy([None, None]) == pytest.approx(math.log(2))


def test_seed_scale_linear_and_exponential():
    half = math.log(2)  # SE / log 4 = 0.5
    assert seed_scale(half, 4) == pytest.approx(0.5)
    assert seed_scale(half, 4, form="exponential") == pytest.approx(math.exp(-0.5))
    assert seed_scale(half, 4, alpha=2.0) == pytest.approx(0.0)
    assert seed_scale(math.log(4), 4, alpha=3.0) == 0.0  # floored: never flips a sign
    assert seed_scale(0.0, 8) == 1.0
    assert seed_scale(0.0, 1) == 1.0
    with pytest.raises(ValueError, match="form"):
        seed_scale(half, 4, form="focal")
    with pytest.raises(ValueError, match="group_size"):
        seed_scale(half, 0)


def test_borda_weights_votes_by_self_certainty_rank():
    answers = ["A", "B", "B", "C"]
    certainty = [0.9, 0.1, 0.2, 0.5]  # ranks: A 1, C 2, B(0.2) 3, B(0.1) 4; N = 4
    plain = borda_vote(answers, certainty, power=0.0)
    assert plain.label == "B" and plain.scores == [1.0, 2.0, 1.0]
    default = borda_vote(answers, certainty)  # p = 0.5: A 2, B √2 + 1, C √3
    assert default.label == "B"
    assert default.scores == pytest.approx([2.0, math.sqrt(2) + 1, math.sqrt(3)])
    assert default.index == 2  # the more certain of the two B responses
    linear = borda_vote(answers, torch.tensor(certainty), power=1.0)  # A 4, B 2 + 1, C 3
    assert linear.label == "A" and linear.index == 0
    assert linear.scores == pytest.approx([4.0, 3.0, 3.0])


def test_borda_ignores_unparseable_answers_and_breaks_ties_in_group_order():
    vote = borda_vote([None, "x", "y"], [5.0, 1.0, 1.0], power=1.0)
    # None ranks first but has no vote; x and y tie on certainty, x keeps rank 2: 2 > 1.
    assert vote.label == "x" and vote.scores == [2.0, 1.0]
    none = borda_vote([None, None], [1.0, 2.0])
    assert none.label is None and none.index is None and none.scores == []


def test_borda_needs_one_certainty_per_answer():
    with pytest.raises(ValueError, match="one value per answer"):
        borda_vote(["a", "b"], [1.0])
