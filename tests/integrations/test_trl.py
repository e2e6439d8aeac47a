"""gymbox envs inside TRL's GRPOTrainer: real TRL, a real (tiny) model, real sandboxes, a real
injected fault, and TRL's own accounting checked for the masked episode."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("trl", reason="the TRL adapter tests need trl (pip install trl==1.16.0)")

import torch
from trl import GRPOConfig, GRPOTrainer

from gymbox.integrations.trl import STATUS_FIELD, GymboxRollout, mask_invalid
from gymbox.runtime import DockerBackend
from gymbox.runtime.errors import ConfigurationError
from gymbox.runtime.faults import FaultInjector, FaultKind, FaultPlan
from gymbox.runtime.recovery import RecoveryPolicy
from tests.integrations.envs import ENV_ID

pytestmark = [pytest.mark.trl, pytest.mark.docker, pytest.mark.slow]

GROUP = 4


def grpo_config(tmp_path, **overrides) -> GRPOConfig:
    values = dict(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=GROUP,
        num_generations=GROUP, max_steps=1, learning_rate=1e-2, logging_steps=1,
        report_to=[], temperature=1.0, use_cpu=True, save_strategy="no", seed=0, beta=0.0,
        max_completion_length=16,
    )
    values.update(overrides)
    return GRPOConfig(**values)


@pytest.fixture
def faulty_rollout():
    """The second sandbox request of the run (the first episode's nonce write) is garbled;
    recovery replays the nonce read into a fresh sandbox, which cannot give the same nonce, so
    that episode is masked. One episode at a time keeps the request order fixed."""
    faults = FaultInjector(DockerBackend(), FaultPlan(scripted={2: FaultKind.GARBLE_RESPONSE}))
    rollout = GymboxRollout(ENV_ID, max_turns=1, max_new_tokens=8, pool_size=2,
                            backend=faults, recovery=RecoveryPolicy(max_attempts=2, deadline_s=30),
                            max_concurrent_episodes=1)
    yield rollout, faults
    rollout.close()


def test_a_grpo_step_trains_and_the_infra_failed_episode_is_unscorable_in_trls_accounting(
    faulty_rollout, tiny_model_dir, tmp_path
):
    rollout, faults = faulty_rollout
    trainer = GRPOTrainer(
        model=str(tiny_model_dir), args=grpo_config(tmp_path), train_dataset=rollout.dataset(8),
        reward_funcs=[rollout.reward_func], rollout_func=rollout,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()

    # The fault struck once, and recovery could not rebuild the sandbox: one masked episode.
    assert [f.kind for f in faults.log] == [FaultKind.GARBLE_RESPONSE]
    assert rollout.statuses == {"completed": GROUP - 1, "infra_failed": 1}
    assert rollout.recovery_metrics()["recovery/masked/supervisor_fault"] == 1

    # TRL's own per-completion accounting: NaN reward and zero advantage for that episode only.
    rewards = list(trainer._logs["rewards"]["gymbox"])
    advantages = list(trainer._logs["advantages"])
    failed = [i for i, r in enumerate(rewards) if math.isnan(r)]
    assert len(failed) == 1 and advantages[failed[0]] == 0.0
    valid = [r for r in rewards if not math.isnan(r)]
    assert len(valid) == GROUP - 1
    # The group baseline is the mean of the valid episodes only: their advantages sum to 0.
    assert abs(sum(a for i, a in enumerate(advantages) if i not in failed)) < 1e-4

    # TRL's logged statistics leave it out too (a 0 in its place would move the mean).
    logged = trainer.state.log_history[0]
    assert logged["reward"] == pytest.approx(sum(valid) / len(valid), abs=1e-6)
    if sum(valid) > 0:
        assert logged["reward"] != pytest.approx(sum(valid) / GROUP, abs=1e-6)
    assert logged["gymbox/infra_failed"] == 1.0
    assert logged["gymbox/valid_fraction"] == pytest.approx(0.75)

    # The valid episodes differ in reward, so the step moved the weights.
    assert len(set(valid)) > 1
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_temperature_mismatch_is_refused_before_anything_is_sampled(tiny_model_dir, tmp_path):
    with GymboxRollout(ENV_ID, max_turns=1, max_new_tokens=4, temperature=0.7) as rollout:
        trainer = GRPOTrainer(
            model=str(tiny_model_dir), args=grpo_config(tmp_path),
            train_dataset=rollout.dataset(4), reward_funcs=[rollout.reward_func],
            rollout_func=rollout,
        )
        with pytest.raises(ConfigurationError, match="temperature"):
            trainer.train()
        assert not rollout.statuses


def test_a_prompt_the_rollout_did_not_draw_is_a_clear_error():
    with GymboxRollout(ENV_ID) as rollout:
        rollout.dataset(2)
        with pytest.raises(ConfigurationError, match=r"GymboxRollout\.dataset"):
            rollout._seed_of([{"role": "user", "content": "What is 2 + 2?"}])


def test_mask_invalid_keeps_other_reward_functions_from_scoring_a_masked_episode():
    def always_one(completions, **_):
        return [1.0] * len(completions)

    masked = mask_invalid(always_one)
    statuses = ["completed", "infra_failed", "truncated"]
    assert masked(["a", "b", "c"], **{STATUS_FIELD: statuses}) == [1.0, None, 1.0]
    assert masked.__name__ == "always_one"


def test_an_episode_broken_mid_way_gives_trl_no_token_to_train_on(tiny_model_dir):
    from transformers import AutoTokenizer

    from gymbox.agents.rollout import Trajectory
    from gymbox.integrations.trl import _row
    from gymbox.rewards.record import RewardRecord

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask = (1, 2, 3, 4, 5, 6, 7), (0, 0, 1, 1, 0, 1, 1)

    def episode(status: str, record: RewardRecord) -> Trajectory:
        zeros = torch.zeros(len(ids))
        return Trajectory(ids, mask, torch.arange(len(ids), dtype=torch.float32), zeros, zeros,
                          prompt_length=2, status=status, reward=record, answer=None, turns=2,
                          seed=0, temperature=1.0, messages=[], info={})

    prompt, completion, env_mask, logprobs = _row(
        episode("completed", RewardRecord.of(gold=1.0)), "q", tokenizer)
    assert (prompt, completion, env_mask) == ([1, 2], [3, 4, 5, 6, 7], [1, 1, 0, 1, 1])
    assert logprobs == [2.0, 3.0, 4.0, 5.0, 6.0]
    _, completion, env_mask, _ = _row(
        episode("infra_failed", RewardRecord.invalid("sandbox_died")), "q", tokenizer)
    assert completion == [3, 4, 5, 6, 7] and env_mask == [0, 0, 0, 0, 0]
