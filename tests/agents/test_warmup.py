"""The warm-up: expert demonstrations through the rollout path; imitation moves the loss."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch

from gymbox.agents.policy import TransformersPolicy
from gymbox.agents.rollout import Budget, ChatFormat, demonstrate
from gymbox.agents.run_config import TrainConfig
from gymbox.agents.train import train
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig, TrainingSample
from gymbox.agents.warmup import NoDemonstrations, imitate_expert
from gymbox.config import from_mapping
from gymbox.envs.builtin.python_calc import PythonCalc
from gymbox.runtime.pool import SandboxPool

BUDGET = Budget(max_tokens=1024, max_turns=2)


def fresh_trainer(tiny: TransformersPolicy, learning_rate: float) -> PolicyTrainer:
    torch.manual_seed(0)
    return PolicyTrainer(copy.deepcopy(tiny.model), TrainerConfig(learning_rate=learning_rate))


def test_imitation_steps_lower_the_nll_of_the_masked_tokens(tiny):
    trainer = fresh_trainer(tiny, 1e-2)
    ids = tiny.tokenizer.encode("What is 2 + 2? <answer>4</answer>")
    mask = [0] * 8 + [1] * (len(ids) - 8)
    sample = TrainingSample(ids, mask, [0.0] * len(ids), advantage=0.0)
    losses = [trainer.imitation_step([sample]) for _ in range(5)]
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < losses[0] - 2.0  # nats per token
    # A sample with no mask-1 token (an env's text only) is no loss and no update.
    weights = [p.clone() for p in trainer.model.parameters()]
    unmasked = TrainingSample(ids, [0] * len(ids), [0.0] * len(ids), advantage=0.0)
    assert trainer.imitation_step([unmasked]) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters(), strict=True))


@pytest.mark.docker
async def test_demonstrations_are_trajectories_whose_mask_covers_exactly_the_experts_turns(tiny):
    async with SandboxPool(size=3) as pool:
        envs = [PythonCalc(sandboxes=pool) for _ in range(3)]
        played = await demonstrate(tiny.tokenizer, envs, seeds=[1, 2, 3], budget=BUDGET)
        for env in envs:
            await env.aclose()
    for t in played:
        assert (t.status, t.reward.value, t.turns) == ("completed", 1.0, 2)
        expert_turns = [m["content"] for m in t.messages if m["role"] == "assistant"]
        assert expert_turns[0].startswith("<tool_call>") and expert_turns[1].startswith("<answer>")
        masked = [tok for tok, m in zip(t.token_ids, t.loss_mask, strict=True) if m]
        assert tiny.tokenizer.decode(masked) == "".join(expert_turns)
        # The sequence is what a policy would have been shown: the template's rendering.
        rendered = ChatFormat(tiny.tokenizer).render(t.messages[:-1], t.info["tools"])
        assert tiny.tokenizer.decode(t.token_ids).startswith(rendered)


@pytest.mark.docker
async def test_the_mental_expert_answers_sums_at_once_and_runs_the_tool_for_products(tiny):
    seeds = range(8)
    async with SandboxPool(size=4) as pool:
        envs = [PythonCalc(sandboxes=pool, expert="mental") for _ in seeds]
        played = await demonstrate(tiny.tokenizer, envs, seeds=list(seeds), budget=BUDGET)
        expressions = [env.task.data["expression"] for env in envs]
        for env in envs:
            await env.aclose()
    assert all(t.reward.value == 1.0 for t in played)  # right either way: all kept for imitation
    products = ["*" in e for e in expressions]
    assert [t.ran_a_tool for t in played] == products
    assert [t.turns for t in played] == [2 if p else 1 for p in products]
    assert 0 < sum(products) < len(products)  # these seeds draw both kinds


@pytest.mark.docker
async def test_imitating_the_expert_moves_the_loss_down(tiny):
    trainer = fresh_trainer(tiny, 1e-2)
    async with SandboxPool(size=4) as pool:
        losses = await imitate_expert(
            trainer, tiny.tokenizer, lambda: PythonCalc(sandboxes=pool), steps=6,
            episodes_per_step=4, first_seed=0, budget=BUDGET,
        )
    assert len(losses) == 6 and losses[-1] < losses[0] - 1.5


class WrongExpert(PythonCalc):
    def demonstrate(self) -> str:
        return "<answer>not a number</answer>"


@pytest.mark.docker
async def test_a_warm_up_without_one_good_demonstration_fails_and_changes_nothing(tiny):
    trainer = fresh_trainer(tiny, 1e-2)
    before = [p.clone() for p in trainer.model.parameters()]
    async with SandboxPool(size=2) as pool:
        with pytest.raises(NoDemonstrations, match="none of 2 demonstrations"):
            await imitate_expert(trainer, tiny.tokenizer, lambda: WrongExpert(sandboxes=pool),
                                 steps=1, episodes_per_step=2, first_seed=0, budget=BUDGET)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


@pytest.mark.docker
def test_train_reports_accuracy_after_the_warm_up_and_after_rl(tmp_path, tiny_model_dir):
    config = from_mapping(TrainConfig, {
        "env": "gymbox/PythonCalc-v0", "policy": {"model": str(tiny_model_dir)},
        "run_dir": str(tmp_path / "run"),
        "loop": {"steps": 1, "group_size": 2, "groups_per_step": 1, "rollout_workers": 1},
        "budget": {"max_turns": 2, "max_tokens": 1024}, "sampling": {"max_new_tokens": 8},
        "warmup": {"sft_steps": 2, "episodes_per_step": 2, "learning_rate": 1e-2},
        "eval": {"episodes": 2},
    })
    summary = train(config)
    assert len(summary.warmup_nll) == 2 and summary.warmup_nll[1] < summary.warmup_nll[0]
    assert summary.before is not None and summary.after_warmup is not None
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["after_warmup"]["episodes"] == 2
    assert saved["warmup_nll"] == list(summary.warmup_nll)
