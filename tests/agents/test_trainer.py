"""The policy-gradient update: masking, invalid trajectories, learning, resuming."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gymbox.agents.loss import ClipRange, policy_loss, token_logprobs
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig, TrainingSample

VOCAB = 16
TARGET = 7


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def sample(model, prompt: list[int], n: int, generator: torch.Generator) -> TrainingSample:
    """Sample ``n`` tokens; behaviour log-probs recorded as the sampler saw them."""
    ids, logps = list(prompt), [0.0] * len(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            logp = torch.log_softmax(logits, -1)
            token = int(torch.multinomial(logp.exp(), 1, generator=generator))
            ids.append(token)
            logps.append(float(logp[token]))
    mask = [0] * len(prompt) + [1] * n
    return TrainingSample(ids, mask, logps, advantage=0.0)


def step_and_gradients(trainer: PolicyTrainer, batch) -> tuple[object, torch.Tensor]:
    """One step, and the (clipped) gradient it applied, flattened: read as the optimiser
    starts its update, since the trainer frees the gradients after it."""
    seen = []
    handle = trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: seen.append(
        torch.cat([p.grad.flatten() for p in trainer.model.parameters()])))
    try:
        metrics = trainer.step(batch)
    finally:
        handle.remove()
    assert all(p.grad is None for p in trainer.model.parameters()), "gradients kept after a step"
    [applied] = seen
    return metrics, applied


def with_advantages(group: list[TrainingSample], rewards: list[float]) -> list[TrainingSample]:
    r = torch.tensor(rewards, dtype=torch.float32)
    adv = (r - r.mean()) / (r.std() + 1e-6)
    return [
        TrainingSample(s.token_ids, s.loss_mask, s.behaviour_logprobs, float(a))
        for s, a in zip(group, adv, strict=True)
    ]


def test_env_tokens_get_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, VOCAB, requires_grad=True)
    token_ids = torch.randint(0, VOCAB, (1, 6))
    loss_mask = torch.tensor([[0, 1, 1, 0, 0, 1]], dtype=torch.float32)
    logprobs = token_logprobs(logits, token_ids)
    terms = policy_loss(
        logprobs, logprobs.detach() - 0.1, torch.tensor([1.5]), loss_mask,
        clip=ClipRange(), step_tokens=3,
    )
    terms.loss.backward()
    # logits[t-1] predict token t: positions predicting env tokens (t = 3, 4) get no gradient,
    # nor does the last position, which predicts nothing.
    per_position = logits.grad.abs().sum(-1)[0]
    assert per_position[[2, 3, 5]].eq(0).all()
    assert per_position[[0, 1, 4]].gt(0).all()


def test_an_invalid_trajectory_changes_nothing_in_the_update():
    gen = torch.Generator().manual_seed(1)
    base = tiny_model()
    group = [sample(base, [1, 2], 5, gen) for _ in range(3)]
    group = with_advantages(group, [1.0, 0.0, 0.5])
    invalid = sample(base, [1, 2, 3, 4], 8, gen)
    invalid = TrainingSample(
        invalid.token_ids, [0] * len(invalid.token_ids), [0.0] * len(invalid.token_ids), 0.0
    )
    results = []
    for batch in (group, [*group[:2], invalid, group[2]]):
        model = copy.deepcopy(base)
        trainer = PolicyTrainer(model, TrainerConfig(learning_rate=1e-2, micro_batch_size=2))
        results.append(step_and_gradients(trainer, batch))
    (m1, g1), (m2, g2) = results
    assert m1.tokens == m2.tokens == 15
    assert m1.loss == pytest.approx(m2.loss, abs=1e-6)
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-8)
    assert g1.abs().sum() > 0


def test_gradient_accumulation_matches_one_big_batch():
    gen = torch.Generator().manual_seed(2)
    base = tiny_model()
    batch = with_advantages([sample(base, [3], 4, gen) for _ in range(4)], [1, 0, 0, 1])
    grads = []
    for micro in (1, 4):
        model = copy.deepcopy(base)
        trainer = PolicyTrainer(model, TrainerConfig(learning_rate=1e-2, micro_batch_size=micro))
        grads.append(step_and_gradients(trainer, batch)[1])
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-8)


def train_bandit(trainer: PolicyTrainer, steps: int, gen: torch.Generator) -> list[float]:
    """Reward = share of sampled tokens equal to TARGET; returns mean reward per step."""
    curve = []
    for _ in range(steps):
        group = [sample(trainer.model, [1], 4, gen) for _ in range(8)]
        rewards = [sum(t == TARGET for t in s.token_ids[1:]) / 4 for s in group]
        trainer.step(with_advantages(group, rewards))
        curve.append(sum(rewards) / len(rewards))
    return curve


def test_training_moves_the_reward_up():
    gen = torch.Generator().manual_seed(3)
    trainer = PolicyTrainer(tiny_model(), TrainerConfig(learning_rate=3e-3, micro_batch_size=8))
    curve = train_bandit(trainer, 25, gen)
    start, end = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert end > start + 0.25, curve


def test_resume_continues_the_same_curve(tmp_path):
    config = TrainerConfig(learning_rate=3e-3, micro_batch_size=8)
    gen = torch.Generator().manual_seed(4)
    trainer = PolicyTrainer(tiny_model(), config)
    train_bandit(trainer, 3, gen)
    trainer.save_checkpoint(tmp_path / "ckpt")
    gen_state = gen.get_state()
    straight = train_bandit(trainer, 3, gen)

    resumed = PolicyTrainer(tiny_model(seed=99), config)
    resumed.load_checkpoint(tmp_path / "ckpt")
    gen.set_state(gen_state)
    assert resumed.steps_done == 3
    assert train_bandit(resumed, 3, gen) == straight
    for a, b in zip(trainer.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bad_samples_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="same length"):
        TrainingSample([1, 2, 3], [0, 1], [0.0, 0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="no context"):
        TrainingSample([1, 2], [1, 1], [0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="ref_model"):
        PolicyTrainer(tiny_model(), TrainerConfig(kl_coef=0.1))


def test_gradient_checkpointing_gives_the_same_update(tiny):
    ids = tiny.tokenizer.encode("What is 2 + 2? <answer>4</answer>")
    mask = [0] * 8 + [1] * (len(ids) - 8)
    sample = TrainingSample(ids, mask, [-3.0] * len(ids), advantage=1.0)
    results = []
    for checkpointing in (False, True):
        model = copy.deepcopy(tiny.model)
        trainer = PolicyTrainer(model, TrainerConfig(learning_rate=1e-3,
                                                     gradient_checkpointing=checkpointing))
        metrics = trainer.step([sample, sample])
        results.append((metrics.loss, metrics.grad_norm, [p.detach().clone()
                                                          for p in model.parameters()]))
    (loss_a, norm_a, weights_a), (loss_b, norm_b, weights_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6) and norm_a == pytest.approx(norm_b, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(weights_a, weights_b, strict=True))


def test_a_stop_drops_the_step_under_way_and_leaves_the_weights_alone():
    import threading

    from gymbox.agents.policy import Interrupted

    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = PolicyTrainer(model, TrainerConfig(learning_rate=1e-2, micro_batch_size=1))
    trainer.interrupt = threading.Event()
    gen = torch.Generator().manual_seed(0)
    group = with_advantages([sample(model, [1, 2], 4, gen) for _ in range(3)], [1.0, 0.0, 0.5])
    calls = 0
    forward = model.forward

    def counting_forward(*args, **kwargs):
        nonlocal calls
        calls += 1
        trainer.interrupt.set()  # the stop arrives during the first micro-batch
        return forward(*args, **kwargs)

    model.forward = counting_forward
    with pytest.raises(Interrupted):
        trainer.step(group)
    assert calls == 1 and trainer.steps_done == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
