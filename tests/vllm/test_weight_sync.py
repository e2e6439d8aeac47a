"""Weight sync: after ``load_weights`` the engine samples from the trainer's new weights, in
process, tagged with the version; the prefix cache does not serve the old weights' KV."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gymbox.agents.loop import LoopConfig, run_loop
from gymbox.agents.policy import SamplingParams
from gymbox.agents.rollout import TURN_STOPS, Budget
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig
from gymbox.envs.builtin.calculator import Calculator
from gymbox.rewards.advantages import GRPO
from tests.vllm.conftest import load_hf, needs_vllm
from tests.vllm.test_policy import LOGPROB_TOLERANCE, chat, recompute

pytestmark = needs_vllm

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def memorise(model, prompt: list[int], target: list[int], steps: int = 150) -> None:
    """Teach ``model`` to answer ``prompt`` with ``target`` (plain next-token cross-entropy)."""
    ids = torch.tensor([prompt + target])
    labels = ids.clone()
    labels[:, : len(prompt)] = -100
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimiser.step()
    model.eval()


def test_synced_weights_change_outputs_and_logprobs_to_the_trainers(vllm_policy, vllm_tiny_dir):
    tokenizer = vllm_policy.tokenizer
    # A prompt longer than a KV block, sampled before the update, so the prefix cache holds
    # blocks computed by the old weights.
    prompt = chat(vllm_policy, "Please compute the following sum carefully. " * 12 + "2+2?")
    target = tokenizer.encode("The answer is 4.", add_special_tokens=False)
    target.append(tokenizer.eos_token_id)
    [before] = vllm_policy.generate([prompt], GREEDY)
    assert list(before.token_ids) != target

    trainer_model = load_hf(vllm_tiny_dir)
    memorise(trainer_model, prompt, target)
    vllm_policy.load_weights(trainer_model, version=1)
    assert vllm_policy.version == 1

    [after] = vllm_policy.generate([prompt], GREEDY)
    assert list(after.token_ids) == target
    assert after.finish_reason == "eos" and after.text == "The answer is 4."
    logprobs, entropy, _ = recompute(trainer_model, prompt, after.token_ids, 1.0)
    assert (after.logprobs - logprobs).abs().max().item() < LOGPROB_TOLERANCE
    torch.testing.assert_close(after.entropy, entropy, atol=1e-4, rtol=1e-4)
    # ... and they are not the old weights' numbers any more.
    old_logprobs, _, _ = recompute(load_hf(vllm_tiny_dir), prompt, after.token_ids, 1.0)
    assert (old_logprobs - after.logprobs).abs().max().item() > 1.0


def test_a_source_of_another_architecture_is_refused_before_anything_is_copied(vllm_policy):
    from transformers import LlamaConfig, LlamaForCausalLM

    prompt = chat(vllm_policy, "2+2?")
    [before] = vllm_policy.generate([prompt], GREEDY)
    small = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=1))
    with pytest.raises(ValueError, match="names or shapes differ"):
        vllm_policy.load_weights(small, version=5)
    assert vllm_policy.version == 0
    [after] = vllm_policy.generate([prompt], GREEDY)
    assert after.token_ids == before.token_ids
    torch.testing.assert_close(after.logprobs, before.logprobs)


def test_the_training_loop_syncs_the_engine_after_every_step(vllm_policy, vllm_tiny_dir):
    from gymbox.agents.vllm_policy import VLLMSyncedPolicy

    learner = load_hf(vllm_tiny_dir)
    trainer = PolicyTrainer(learner, TrainerConfig(learning_rate=1e-2, micro_batch_size=4))
    generator = VLLMSyncedPolicy(vllm_policy)
    assert not generator.shares_weights_with(learner)

    def score(groups, step):
        flat = [t for g in groups for t in g.trajectories]
        rewards = torch.tensor([t.reward.value for t in flat])  # the env's gold score
        rewards = rewards - 0.01 * torch.tensor([float(t.model_tokens) for t in flat])
        ids = torch.tensor([g.index for g in groups for _ in g.trajectories])
        return GRPO()(rewards, torch.tensor([t.valid for t in flat]), ids)

    probe = chat(vllm_policy, "What is 3+4?")
    versions, gaps, ratios = [], [], []

    def on_step(report):
        versions.append(vllm_policy.version)
        ratios.append(report.update.mean_ratio)
        [c] = vllm_policy.generate([probe], SamplingParams(max_new_tokens=8, seed=0))
        logprobs, _, _ = recompute(learner, probe, c.token_ids, 1.0)
        gaps.append((c.logprobs - logprobs).abs().max().item())

    asyncio.run(run_loop(
        generator=generator, trainer=trainer, make_env=Calculator, score=score,
        config=LoopConfig(steps=2, groups_per_step=1, group_size=3, seed=4),
        sampling=SamplingParams(max_new_tokens=6, temperature=1.0, stop=TURN_STOPS, seed=0),
        budget=Budget(max_tokens=512, max_turns=1), on_step=on_step,
    ))
    assert versions == [1, 2]
    assert max(gaps) < LOGPROB_TOLERANCE
    # Synchronous training: every step's behaviour log-probs came from the weights the trainer
    # then had, so the importance ratio is 1 at every step (not just the first).
    assert ratios == pytest.approx([1.0, 1.0], abs=1e-3)


def test_under_bounded_staleness_every_sample_has_the_log_probs_of_the_weights_it_used(
    vllm_policy, vllm_tiny_dir
):
    """The main job's shape: ``max_staleness = 1`` and two rollout workers sharing the engine,
    so sampling overlaps the trainer's updates and a group's turns may straddle a sync. For
    every engine call over several syncs, the behaviour log-probs are the trainer's at the
    version the call sampled with (not a neighbouring version's), and the entropy from the
    private statistics copy is too."""
    from gymbox.agents.vllm_policy import VLLMSyncedPolicy

    learner = load_hf(vllm_tiny_dir)
    weights = {0: {k: v.clone() for k, v in learner.state_dict().items()}}
    calls = []  # (version, prompts, completions) of every engine call

    class Recorded(VLLMSyncedPolicy):
        """Keeps the weights of each version and which version each call sampled with."""

        def load_weights(self, source, version=None):
            super().load_weights(source, version)
            weights[self.policy.version] = {
                k: v.detach().clone() for k, v in source.state_dict().items()}

        def generate(self, prompts, sampling):
            with self._lock:  # the lock a sync takes: the version cannot move under the call
                version = self.policy.version
                completions = self.policy.generate(prompts, sampling)
            calls.append((version, [list(p) for p in prompts], completions))
            return completions

    tau = 0.7
    trainer = PolicyTrainer(learner, TrainerConfig(learning_rate=1e-2, micro_batch_size=4,
                                                   temperature=tau))
    staleness = []

    def score(groups, step):
        staleness.extend(step - g.version for g in groups)
        flat = [t for g in groups for t in g.trajectories]
        # Any reward that differs within a group will do: the point is that every step moves
        # the weights. (The tiny model fills every turn, so a length penalty would tie.)
        rewards = torch.tensor([float(sum(i for i, m in zip(t.token_ids, t.loss_mask,
                                                             strict=True) if m) % 97)
                                for t in flat])
        ids = torch.tensor([g.index for g in groups for _ in g.trajectories])
        return GRPO()(rewards, torch.tensor([t.valid for t in flat]), ids)

    asyncio.run(run_loop(
        generator=Recorded(vllm_policy), trainer=trainer, make_env=Calculator, score=score,
        config=LoopConfig(steps=3, groups_per_step=2, group_size=2, max_staleness=1,
                          rollout_workers=2, seed=4),
        sampling=SamplingParams(max_new_tokens=8, temperature=tau, stop=TURN_STOPS, seed=0),
        budget=Budget(max_tokens=512, max_turns=2),
    ))
    reference = load_hf(vllm_tiny_dir)
    own_gaps, entropy_gaps, other_gaps, other_entropy_gaps = [], [], [], []
    for other, state in weights.items():
        reference.load_state_dict(state)
        for version, prompts, completions in calls:
            for prompt, c in zip(prompts, completions, strict=True):
                logprobs, entropy, _ = recompute(reference, prompt, c.token_ids, tau)
                gap = (c.logprobs - logprobs).abs().max().item()
                if other == version:
                    own_gaps.append(gap)
                    entropy_gaps.append((c.entropy - entropy).abs().max().item())
                else:
                    other_gaps.append(gap)
                    other_entropy_gaps.append((c.entropy - entropy).abs().max().item())
    print(f"{len(calls)} engine calls at versions {sorted({v for v, _, _ in calls})}, "
          f"staleness {sorted(staleness)}: max |log-prob gap| to the version sampled with "
          f"{max(own_gaps):.2e} (entropy {max(entropy_gaps):.2e}), min to another version "
          f"{min(other_gaps):.2e} (entropy {min(other_entropy_gaps):.2e})")
    assert 1 in staleness, "no group was sampled while the trainer updated: nothing tested"
    assert {version for version, _, _ in calls} >= {0, 1, 2}
    assert max(own_gaps) < LOGPROB_TOLERANCE
    assert max(entropy_gaps) < 1e-3  # the statistics copy holds the same version
    # Neighbouring versions' weights are far apart, so a sample from the wrong version would
    # fail the log-prob assertion above.
    assert min(other_gaps) > 10 * LOGPROB_TOLERANCE
