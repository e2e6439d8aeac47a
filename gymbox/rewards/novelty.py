r"""Random Network Distillation novelty bonus over response embeddings.

RND (Burda et al., arXiv 1810.12894): a *target* network f with random, frozen weights and a
*predictor* network f̂ trained to imitate it. For an embedding x of a response, whitened by
running statistics and clipped, x̂ = clip((x - μ_x) / σ_x, -5, 5),

    e(x) = ‖f̂(x̂) - f(x̂)‖²,        bonus(x) = e(x) / σ_e

with σ_e the running standard deviation of the errors. The predictor learns the embeddings it
is trained on, so a response like many before it earns little and a novel one earns much. The
embedding (e.g. the policy's mean-pooled last hidden state) must come from the current policy.

Example:
    >>> import torch
    >>> rnd = RNDNovelty(embedding_dim=8, seed=0)
    >>> seen = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    >>> for _ in range(200):
    ...     _ = rnd.update(seen)
    >>> novel = 5 + torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    >>> bool(rnd.reward(novel).mean() > rnd.reward(seen).mean())
    True
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class RunningMoments:
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update).

    Example:
        >>> moments = RunningMoments(shape=())
        >>> moments.update(torch.tensor([1.0, 2.0])); moments.update(torch.tensor([3.0, 4.0]))
        >>> moments.mean.item(), moments.var.item()
        (2.5, 1.25)
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.count = 0
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.var = torch.ones(shape, dtype=torch.float64)

    def update(self, batch: Tensor) -> None:
        """Fold ``batch`` (first dimension = samples) into the population mean and variance."""
        batch = batch.detach().double()
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(dim=0)
        batch_var = batch.var(dim=0, unbiased=False)
        if self.count == 0:
            self.mean, self.var, self.count = batch_mean, batch_var, n
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.var = (
            self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        ) / total
        self.count = total

    @property
    def std(self) -> Tensor:
        return self.var.sqrt()

    def state_dict(self) -> dict[str, Any]:
        """The count, mean and variance, for a checkpoint."""
        return {"count": self.count, "mean": self.mean.clone(), "var": self.var.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.count, self.mean, self.var = state["count"], state["mean"], state["var"]


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
    )


class RNDNovelty:
    """The RND bonus: :meth:`reward` scores embeddings, :meth:`update` trains the predictor.

    Args:
        embedding_dim: D, the width of the ``[N, D]`` embeddings.
        feature_dim: width of the target's output.
        hidden_dim: width of both networks' hidden layers.
        lr: the predictor's Adam learning rate.
        seed: seeds both networks' initial weights.
    """

    clip = 5.0

    def __init__(
        self,
        embedding_dim: int,
        *,
        feature_dim: int = 64,
        hidden_dim: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.target = _mlp(embedding_dim, hidden_dim, feature_dim).requires_grad_(False)
            self.predictor = _mlp(embedding_dim, hidden_dim, feature_dim)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=lr)
        self.embedding_dim = embedding_dim
        self.inputs = RunningMoments((embedding_dim,))
        self.errors = RunningMoments(())

    def _whiten(self, embeddings: Tensor) -> Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must be [N, {self.embedding_dim}], got {tuple(embeddings.shape)}"
            )
        if self.inputs.count == 0:
            self.inputs.update(embeddings)
        mean, std = self.inputs.mean.float(), self.inputs.std.float().clamp(min=1e-8)
        return ((embeddings.detach().float() - mean) / std).clamp(-self.clip, self.clip)

    def _error(self, whitened: Tensor) -> Tensor:
        return (self.predictor(whitened) - self.target(whitened)).square().sum(dim=-1)

    def reward(self, embeddings: Tensor) -> Tensor:
        """``[N]`` novelty bonuses e(x)/σ_e; folds the batch into the running statistics."""
        whitened = self._whiten(embeddings)
        self.inputs.update(embeddings)
        with torch.no_grad():
            error = self._error(whitened)
        self.errors.update(error)
        return error / self.errors.std.float().clamp(min=1e-8)

    def update(self, embeddings: Tensor) -> float:
        """One Adam step of the predictor on ``embeddings``; returns the mean squared error."""
        loss = self._error(self._whiten(embeddings)).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        """Both networks, the predictor's optimiser and the running statistics: what a resumed
        run needs to score the next response as this one would have. A copy, not a view: an
        optimiser loading a view would share its moments with this one."""
        return copy.deepcopy({
            "target": self.target.state_dict(), "predictor": self.predictor.state_dict(),
            "optimizer": self.optimizer.state_dict(), "inputs": self.inputs.state_dict(),
            "errors": self.errors.state_dict()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from an RND of the same widths)."""
        self.target.load_state_dict(state["target"])
        self.predictor.load_state_dict(state["predictor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.inputs.load_state_dict(state["inputs"])
        self.errors.load_state_dict(state["errors"])
