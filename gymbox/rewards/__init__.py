"""Rewards: gold verifiers, intrinsic rewards, mixing and mask-aware advantages.

Pure torch and Python: nothing here knows about Docker, sandboxes or environments. See
``docs/rewards.md`` for when to use each reward.
"""

from gymbox.rewards.advantages import (
    GRPO,
    RLOO,
    AdvantageEstimator,
    Advantages,
    DrGRPO,
    batch_from_records,
)
from gymbox.rewards.extract import (
    Extractor,
    after_marker,
    boxed,
    extract_answer,
    first_of,
    last_number,
)
from gymbox.rewards.gold import (
    ExactMatch,
    MathEquivalence,
    NumericMatch,
    Verifier,
    normalise_text,
    parse_number,
    unit_test_pass_rate,
)
from gymbox.rewards.intrinsic import (
    BordaVote,
    Vote,
    borda_vote,
    cluster_answers,
    majority_vote,
    seed_scale,
    semantic_entropy,
)
from gymbox.rewards.mix import (
    Additive,
    Constant,
    Cosine,
    EntropyGuard,
    GoldWhereLabelled,
    Linear,
    MixedAdvantages,
    RewardMix,
    Schedule,
    Term,
)
from gymbox.rewards.novelty import RNDNovelty, RunningMoments
from gymbox.rewards.record import RewardComponent, RewardRecord
from gymbox.rewards.tokens import (
    TokenStats,
    masked_mean,
    masked_sum,
    negative_entropy_reward,
    self_certainty_reward,
    token_stats,
    trajectory_logprob_reward,
)

__all__ = [
    "GRPO",
    "RLOO",
    "Additive",
    "AdvantageEstimator",
    "Advantages",
    "BordaVote",
    "Constant",
    "Cosine",
    "DrGRPO",
    "EntropyGuard",
    "ExactMatch",
    "Extractor",
    "GoldWhereLabelled",
    "Linear",
    "MathEquivalence",
    "MixedAdvantages",
    "NumericMatch",
    "RNDNovelty",
    "RewardComponent",
    "RewardMix",
    "RewardRecord",
    "RunningMoments",
    "Schedule",
    "Term",
    "TokenStats",
    "Verifier",
    "Vote",
    "after_marker",
    "batch_from_records",
    "borda_vote",
    "boxed",
    "cluster_answers",
    "extract_answer",
    "first_of",
    "last_number",
    "majority_vote",
    "masked_mean",
    "masked_sum",
    "negative_entropy_reward",
    "normalise_text",
    "parse_number",
    "seed_scale",
    "self_certainty_reward",
    "semantic_entropy",
    "token_stats",
    "trajectory_logprob_reward",
    "unit_test_pass_rate",
]
