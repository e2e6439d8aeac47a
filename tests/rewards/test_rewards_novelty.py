"""RND novelty bonus and the running moments that normalise it."""

import copy

import pytest
import torch

from gymbox.rewards import RNDNovelty, RunningMoments


def embeddings(seed: int, n: int = 32, dim: int = 16, shift: float = 0.0) -> torch.Tensor:
    return shift + torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_running_moments_match_the_statistics_of_everything_seen():
    batches = [embeddings(s, n=n, dim=3) * (s + 1) for s, n in ((0, 5), (1, 1), (2, 17))]
    moments = RunningMoments(shape=(3,))
    for b in batches:
        moments.update(b)
    everything = torch.cat(batches).double()
    assert moments.count == 23
    assert torch.allclose(moments.mean, everything.mean(0))
    assert torch.allclose(moments.var, everything.var(0, unbiased=False))


def test_seen_responses_earn_less_than_novel_ones():
    rnd = RNDNovelty(embedding_dim=16, seed=0)
    seen = embeddings(1)
    first_loss = rnd.update(seen)
    for _ in range(150):
        last_loss = rnd.update(seen)
    assert last_loss < first_loss / 10
    novel = embeddings(2, shift=3.0)
    assert rnd.reward(novel).mean() > 3 * rnd.reward(seen).mean()


def test_bonus_is_the_error_divided_by_its_running_std():
    rnd = RNDNovelty(embedding_dim=16, seed=0)
    first = rnd.reward(embeddings(1))
    assert first.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)  # one batch seen
    assert (first > 0).all()


def test_the_seed_fixes_the_networks():
    a, b, c = (RNDNovelty(embedding_dim=16, seed=s) for s in (7, 7, 8))
    x = embeddings(3)
    assert torch.equal(a.reward(x), b.reward(x))
    assert not torch.equal(a.reward(x), c.reward(x))


def test_embeddings_of_the_wrong_shape_are_refused():
    rnd = RNDNovelty(embedding_dim=16)
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        rnd.reward(torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        rnd.update(torch.zeros(16))


def test_a_restored_rnd_scores_and_learns_as_the_original_would():
    """What a checkpoint keeps: a resumed run's RND must not start from fresh networks."""
    original = RNDNovelty(embedding_dim=16, seed=0)
    for s in range(20):
        original.reward(embeddings(s))
        original.update(embeddings(s))
    restored = RNDNovelty(embedding_dim=16, seed=1)  # other weights, until the state loads
    novel = embeddings(99, shift=3.0)
    assert not torch.allclose(restored.reward(novel), copy.deepcopy(original).reward(novel))
    restored = RNDNovelty(embedding_dim=16, seed=1)
    restored.load_state_dict(original.state_dict())
    for s in range(100, 103):  # same bonuses and the same predictor updates from here on
        batch = embeddings(s, shift=1.0)
        assert torch.equal(restored.reward(batch), original.reward(batch))
        assert restored.update(batch) == original.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(restored.predictor.parameters(),
                                                 original.predictor.parameters(), strict=True))
    assert restored.inputs.count == original.inputs.count
