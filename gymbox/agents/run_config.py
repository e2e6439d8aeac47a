"""The run config of ``gymbox train`` / ``gymbox eval``: the library's own config objects.

A run config is a tree of frozen dataclasses read from TOML or YAML by
:func:`gymbox.config.load_config`. Its sections ARE the library's configs
(:class:`~gymbox.agents.loop.LoopConfig`, :class:`~gymbox.agents.trainer.TrainerConfig`,
:class:`~gymbox.agents.policy.SamplingParams`, :class:`~gymbox.agents.rollout.Budget`,
:class:`~gymbox.runtime.spec.SandboxSpec`, :class:`~gymbox.runtime.recovery.RecoveryPolicy`):
each field has one default and one docstring, wherever it is used. ``gymbox train
--explain-config`` prints them all.

Example:
    >>> from gymbox.config import from_mapping
    >>> config = from_mapping(TrainConfig, {"loop": {"steps": 3}, "reward": {"terms": {
    ...     "gold": {}, "majority_vote": {"weight": 0.5, "schedule": "linear"}}}})
    >>> config.loop.steps, sorted(config.reward.terms), config.optim.learning_rate
    (3, ['gold', 'majority_vote'], 1e-05)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gymbox.agents.loop import LoopConfig
from gymbox.agents.policy import SamplingParams
from gymbox.agents.rollout import DEFAULT_SAMPLING, Budget
from gymbox.agents.trainer import TrainerConfig
from gymbox.distributed.engines import ScaleConfig
from gymbox.rewards.terms import TERMS
from gymbox.runtime.faults import REQUEST_KINDS
from gymbox.runtime.recovery import RecoveryPolicy
from gymbox.runtime.spec import SandboxSpec


@dataclass(frozen=True)
class PolicyConfig:
    """Which model samples the episodes, and on what.

    Attributes:
        backend: what generates: ``transformers`` (in-process, CPU or GPU) or ``vllm`` (an
            in-process vLLM engine with weight sync, docs/vllm.md); see
            :data:`gymbox.agents.train.POLICY_BACKENDS`.
        model: a transformers model directory or a GGUF file; empty for the embedded
            SmolLM2-135M-Instruct.
    """

    backend: str = "transformers"
    model: str | None = None


@dataclass(frozen=True)
class TermConfig:
    """One reward term of the mix, by its name in :data:`gymbox.rewards.terms.TERMS`.

    Attributes:
        weight: the term's weight (where its schedule starts).
        schedule: ``constant``, or ``linear`` / ``cosine`` from ``weight`` to ``end_weight``.
        end_weight: where a linear or cosine schedule ends.
        schedule_steps: steps the schedule takes; 0 for the run's ``loop.steps``.
        options: the term's own keyword arguments, e.g. ``{match = "exact"}`` for a vote.
    """

    weight: float = 1.0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    end_weight: float = 0.0
    schedule_steps: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GuardConfig:
    """The entropy guard on the intrinsic weights (:class:`~gymbox.rewards.mix.EntropyGuard`).

    Attributes:
        enabled: scale intrinsic weights by min(1, H / (fraction · H₀)).
        fraction: the share of the first step's mean token entropy below which the intrinsic
            weights fall.
    """

    enabled: bool = False
    fraction: float = 0.5


@dataclass(frozen=True)
class SeedScaleConfig:
    """SEED-GRPO's scaling of each group's advantages by its semantic entropy
    (:class:`~gymbox.rewards.terms.SeedScale`).

    Attributes:
        enabled: multiply each group's advantages by f(α · SE / log G).
        alpha: α.
        form: ``linear`` (max(0, 1 - x)) or ``exponential`` (exp(-x)).
        entropy: ``likelihood`` (the paper's: clusters weighted by sequence probability) or
            ``count`` (clusters weighted by their share of the group).
        match: how answers are clustered: ``exact``, ``numeric`` or ``math``.
    """

    enabled: bool = False
    alpha: float = 1.0
    form: Literal["linear", "exponential"] = "linear"
    entropy: Literal["likelihood", "count"] = "likelihood"
    match: Literal["exact", "numeric", "math"] = "numeric"


@dataclass(frozen=True)
class RewardConfig:
    """What trains the policy: named reward terms, mixed as separately normalised advantages.

    Attributes:
        terms: name → :class:`TermConfig`; the names are those of
            :data:`gymbox.rewards.terms.TERMS`. The table lists every term of the run (a config
            that names terms replaces the default ``gold``).
        estimator: ``grpo``, ``dr_grpo`` or ``rloo``.
        min_valid: a group with fewer valid members than this is left out of the step.
        mixing: ``additive`` (every term on every sample) or ``gold_where_labelled``
            (semi-supervised: gold terms where the task has a label, intrinsic ones elsewhere).
        labelled_fraction: the share of tasks that count as labelled (fixed per task seed).
        train_on: train on the first N members of each group and let votes see all of it
            (TTRL votes on more samples than it trains on); 0 trains on the whole group.
        guard: the entropy guard.
        seed_scale: SEED-GRPO's semantic-entropy scaling.
    """

    terms: dict[str, TermConfig] = field(default_factory=lambda: {"gold": TermConfig()})
    estimator: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    min_valid: int = 2
    mixing: Literal["additive", "gold_where_labelled"] = "additive"
    labelled_fraction: float = 1.0
    train_on: int = 0
    guard: GuardConfig = field(default_factory=GuardConfig)
    seed_scale: SeedScaleConfig = field(default_factory=SeedScaleConfig)

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("reward.terms is empty: name at least one term, e.g. [reward.terms."
                             "gold]")
        unknown = sorted(set(self.terms) - set(TERMS))
        if unknown:
            raise ValueError(f"reward.terms: unknown term(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(TERMS)}")
        if not 0.0 <= self.labelled_fraction <= 1.0:
            raise ValueError(f"reward.labelled_fraction must be in [0, 1], got "
                             f"{self.labelled_fraction}")


@dataclass(frozen=True)
class GroupFailureConfig:
    """What happens to a group when some of its episodes fail for infrastructure reasons
    (see docs/training.md, "When a group member fails").

    Attributes:
        policy: ``rerun`` (play each failed episode again in a fresh env with a fresh sample,
            at most ``max_reruns`` times), ``keep_valid`` (train on the valid members only) or
            ``drop_group`` (leave the whole group out of the step).
        max_reruns: re-runs per failed episode, with ``rerun``.
    """

    policy: Literal["rerun", "keep_valid", "drop_group"] = "rerun"
    max_reruns: int = 1

    def __post_init__(self) -> None:
        if self.max_reruns < 0:
            raise ValueError(f"group_failures.max_reruns must be >= 0, got {self.max_reruns}")


@dataclass(frozen=True)
class BreakerConfig:
    """The circuit breaker on the infrastructure-failure rate
    (:class:`~gymbox.runtime.breaker.InfraCircuitBreaker`).

    Attributes:
        window: how many recent episodes the rate is computed over.
        min_episodes: no decision is taken on fewer outcomes than this.
        slow_down_rate: infra-failure rate from which new episodes wait.
        stop_rate: infra-failure rate from which the run stops.
    """

    window: int = 50
    min_episodes: int = 10
    slow_down_rate: float = 0.25
    stop_rate: float = 0.6


@dataclass(frozen=True)
class SandboxSupplyConfig:
    """Where a sandbox env's sandboxes come from: a warm pool, recovery, a breaker.

    Attributes:
        pool_size: sandboxes kept warm; 0 sizes the pool to the episodes in flight (at most 16).
        backend: ``docker`` or ``local`` (bubblewrap, not a security boundary); empty for the
            runtime's own choice.
        spec: what every sandbox is.
        recovery: how hard an episode's sandbox is recovered, and when the agent is blamed.
        breaker: when a run slows down or stops on infrastructure failures.
    """

    pool_size: int = 0
    backend: Literal["docker", "local"] | None = None
    spec: SandboxSpec = field(default_factory=SandboxSpec)
    recovery: RecoveryPolicy = field(default_factory=RecoveryPolicy)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


@dataclass(frozen=True)
class FaultsConfig:
    """Real faults injected into the run's sandboxes (:mod:`gymbox.runtime.faults`), to
    fault-test a run before spending GPU days on it. Needs a sandbox env.

    Attributes:
        rate: the share of sandbox requests struck by a fault; 0 injects nothing.
        kinds: which request faults, split evenly; empty for all of them (kill_container,
            pause_container, kill_supervisor, engine_outage, garble_response,
            truncate_response).
        seed: the seed of the fault draws.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"faults.rate must be in [0, 1], got {self.rate}")
        unknown = sorted(set(self.kinds) - {str(k) for k in REQUEST_KINDS})
        if unknown:
            raise ValueError(f"faults.kinds: unknown kind(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(sorted(str(k) for k in REQUEST_KINDS))}")


@dataclass(frozen=True)
class WarmupConfig:
    """A cold start before RL (as in DeepSeek-R1): supervised steps on demonstrations by the
    env's scripted expert (:meth:`ToolEnv.demonstrate`), played through the same rollout path.
    Only demonstrations the env scored 1.0 are imitated.

    Attributes:
        sft_steps: imitation steps; 0 skips the warm-up.
        episodes_per_step: demonstrations per step (fresh tasks each step).
        learning_rate: AdamW learning rate of the warm-up (its own optimiser, freed after).
    """

    sft_steps: int = 0
    episodes_per_step: int = 8
    learning_rate: float = 1e-4


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: greedy accuracy (and pass@k) on task seeds training never draws.

    Attributes:
        episodes: held-out tasks per evaluation.
        first_seed: held-out tasks use seeds from here on.
        k: pass@k samples per task (k = 1: pass@1 is the greedy accuracy).
        every: also evaluate every N training steps, into metrics.jsonl; 0 only before and
            after.
    """

    episodes: int = 32
    first_seed: int = 1_000_000_000
    k: int = 1
    every: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. Sections are the library's own configs.

    ``optim.temperature`` follows ``sampling.temperature`` (the log-probs the loss compares
    must be taken at the temperature the tokens were sampled at), and ``sampling.seed``
    empty means the run's ``loop.seed``.

    Attributes:
        env: a registered env id or ``module:Env-v0``.
        env_kwargs: keyword arguments for the env's constructor.
        run_dir: where the run is written.
        checkpoint_every: also save a checkpoint every N steps; 0 only at the end.
        policy: the model and the generation backend.
        loop: the actor-learner loop: steps, groups, group size, staleness, workers, seed.
        optim: the optimiser step.
        sampling: per-turn sampling of the model's turns.
        budget: limits on one episode on top of the env's own.
        reward: the reward terms and how they mix.
        group_failures: what happens to a group when some of its episodes fail.
        sandboxes: where the sandboxes come from.
        faults: faults injected on purpose.
        scale: sandboxes spread over several Docker engines on Ray (docs/scaling.md); off
            unless ``scale.ray_address`` is set.
        warmup: imitation of the env's expert before RL.
        eval: held-out evaluation.
    """

    env: str = "gymbox/Calculator-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    run_dir: str = "runs/latest"
    checkpoint_every: int = 0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: TrainerConfig = field(default_factory=TrainerConfig)
    sampling: SamplingParams = field(default_factory=lambda: DEFAULT_SAMPLING)
    budget: Budget = field(default_factory=Budget)
    reward: RewardConfig = field(default_factory=RewardConfig)
    group_failures: GroupFailureConfig = field(default_factory=GroupFailureConfig)
    sandboxes: SandboxSupplyConfig = field(default_factory=SandboxSupplyConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        tau = self.sampling.stats_temperature
        if self.optim.temperature not in (1.0, tau):
            raise ValueError(f"optim.temperature ({self.optim.temperature}) follows "
                             f"sampling.temperature ({self.sampling.temperature}); set that one")
        if self.checkpoint_every < 0 or self.eval.every < 0:
            raise ValueError("checkpoint_every and eval.every must be >= 0")
        if self.reward.train_on > self.loop.group_size:
            raise ValueError(f"reward.train_on ({self.reward.train_on}) is more than "
                             f"loop.group_size ({self.loop.group_size})")

    @property
    def trainer(self) -> TrainerConfig:
        """``optim`` with the sampling temperature."""
        return replace(self.optim, temperature=self.sampling.stats_temperature)

    @property
    def run_sampling(self) -> SamplingParams:
        """``sampling`` with the run's seed when it has none."""
        if self.sampling.seed is not None:
            return self.sampling
        return replace(self.sampling, seed=self.loop.seed)
