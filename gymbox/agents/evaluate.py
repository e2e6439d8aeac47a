"""Held-out evaluation: greedy accuracy and pass@k on task seeds training never draws.

Training draws task seeds ``loop.seed · 1_000_003 + group index`` and the warm-up from
``WARMUP_FIRST_SEED`` on; evaluation uses ``EvalConfig.first_seed`` (10⁹) on, so a held-out
task is never trained on.

Example:
    >>> _pass_at_k(n=4, c=1, k=2)      # 1 - C(3,2)/C(4,2)
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from gymbox.agents.policy import Policy, SamplingParams
from gymbox.agents.rollout import Budget, rollout
from gymbox.agents.run_config import EvalConfig
from gymbox.envs.core import ToolEnv


@dataclass(frozen=True)
class EvalResult:
    """One held-out evaluation.

    Attributes:
        accuracy: the share of valid greedy episodes the env scored 1.0.
        pass_at_k: unbiased pass@k over ``k`` samples at τ = 1 per task (= accuracy for k = 1).
        k: the k of ``pass_at_k``.
        valid_fraction: the share of greedy episodes the infrastructure did not break.
        episodes: held-out tasks.
        tool_use: the share of valid greedy episodes in which a tool ran (a call the env
            could parse and route, whatever its result): on a tool env, whether the policy
            uses its tools at all.
    """

    accuracy: float
    pass_at_k: float
    k: int
    valid_fraction: float
    episodes: int
    tool_use: float


async def evaluate(
    policy: Policy, make_env: Callable[[], ToolEnv], config: EvalConfig, *,
    sampling: SamplingParams, budget: Budget,
) -> EvalResult:
    """Greedy accuracy (and pass@k) of ``policy`` on ``config.episodes`` held-out tasks.

    ``sampling`` gives the stop strings and the token cap; evaluation samples greedily, and
    pass@k at τ = 1 with the seed ``config.first_seed``.
    """
    seeds = [config.first_seed + i for i in range(config.episodes)]
    greedy = replace(sampling, temperature=0.0, top_p=1.0, seed=None)
    envs = [make_env() for _ in seeds]
    try:
        trajectories = await rollout(policy, envs, seeds=seeds, sampling=greedy, budget=budget)
        valid = [t for t in trajectories if t.valid]
        accuracy = sum(t.reward.value >= 1.0 for t in valid) / max(len(valid), 1)
        tool_use = sum(t.ran_a_tool for t in valid) / max(len(valid), 1)
        pass_at_k = accuracy
        if config.k > 1:
            sampled = replace(sampling, temperature=1.0, top_p=1.0, seed=config.first_seed)
            solved = []
            for seed in seeds:
                group = await rollout(policy, envs[: config.k], seeds=[seed] * config.k,
                                      sampling=sampled, budget=budget)
                correct = sum(t.valid and t.reward.value >= 1.0 for t in group)
                solved.append(_pass_at_k(config.k, correct, config.k))
            pass_at_k = sum(solved) / len(solved)
    finally:
        for env in envs:
            await env.aclose()
    return EvalResult(accuracy, pass_at_k, config.k, len(valid) / len(trajectories), len(seeds),
                      tool_use)


def _pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021): 1 - C(n-c,k)/C(n,k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
