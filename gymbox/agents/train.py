"""``gymbox train`` and ``gymbox eval``: a run from a config to a run directory.

A run directory holds ``config.json`` (what ran), ``metrics.jsonl`` (one row per step),
``samples.jsonl`` (one transcript per group per step), ``checkpoints/step-N`` and, at the end,
``metrics.png``. Held-out evaluation uses task seeds from ``EvalConfig.first_seed`` on, which
training never draws (training uses ``seed · 1_000_003 + group index``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import math
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import gymbox.envs  # noqa: F401 - registers the built-in env ids
from gymbox.agents.config import to_mapping
from gymbox.agents.loop import Group, LoopConfig, StepReport, SyncedPolicy, run_loop
from gymbox.agents.loss import ClipRange
from gymbox.agents.metrics import MetricsWriter, plot_metrics
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.agents.rollout import TURN_STOPS, Budget, Trajectory, rollout
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig
from gymbox.agents.vllm_policy import require_vllm, vllm_generator
from gymbox.agents.warmup import imitate_expert
from gymbox.envs.core import ToolEnv
from gymbox.envs.registry import require_registered
from gymbox.rewards.advantages import GRPO, RLOO, DrGRPO
from gymbox.rewards.extract import boxed
from gymbox.rewards.intrinsic import majority_vote
from gymbox.rewards.mix import Constant, Cosine, Linear, MixedAdvantages, RewardMix, Term
from gymbox.runtime.breaker import InfraCircuitBreaker
from gymbox.runtime.errors import ConfigurationError
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.recovery import RecoveringSandboxes

IntrinsicName = Literal["majority_vote", "self_certainty", "entropy"]


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96


@dataclass(frozen=True)
class RewardConfig:
    """Which rewards train the policy.

    ``mode``: ``gold`` (the env's verifier), ``intrinsic`` (``intrinsic`` alone, no labels) or
    ``mixed`` (gold plus ``intrinsic`` weighted by ``intrinsic_weight`` on ``schedule``, each
    normalised within its group separately).
    """

    mode: Literal["gold", "intrinsic", "mixed"] = "gold"
    intrinsic: IntrinsicName = "majority_vote"
    intrinsic_weight: float = 0.5
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    estimator: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    min_valid: int = 2


@dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 2e-5
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    micro_batch_size: int = 4
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class WarmupConfig:
    """A cold start before RL (as in DeepSeek-R1): supervised steps on demonstrations by the
    env's scripted expert (:meth:`ToolEnv.demonstrate`), played through the same rollout path.

    A small model that never writes a tool call or a final answer gets reward 0 on every
    episode, so every GRPO advantage is 0 and RL learns nothing; a few imitation steps teach it
    the format, and RL takes it from there. Only demonstrations that the env scored 1.0 are
    imitated. Held-out accuracy is measured after the warm-up too, so the gain of RL alone shows.

    Attributes:
        sft_steps: imitation steps; 0 skips the warm-up.
        episodes_per_step: demonstrations per step (fresh tasks each step).
        learning_rate: AdamW learning rate of the warm-up (its own optimiser).
    """

    sft_steps: int = 0
    episodes_per_step: int = 8
    learning_rate: float = 1e-4


WARMUP_FIRST_SEED = 500_000_000
"""Demonstrations draw task seeds from here on: apart from training's and evaluation's."""


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 32
    first_seed: int = 1_000_000_000
    k: int = 1


@dataclass(frozen=True)
class PolicyConfig:
    """What samples the episodes: ``transformers`` (in-process) or ``vllm`` (an in-process
    vLLM engine with weight sync, see :mod:`gymbox.agents.vllm_policy`)."""

    backend: Literal["transformers", "vllm"] = "transformers"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; every field has a default that runs on a 2-core CPU."""

    env: str = "gymbox/Calculator-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    run_dir: str = "runs/latest"
    steps: int = 12
    groups_per_step: int = 2
    group_size: int = 8
    max_staleness: int = 0
    rollout_workers: int = 1
    seed: int = 0
    max_turns: int = 3
    max_tokens: int = 1024
    checkpoint_every: int = 0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    pass_at_k: float
    k: int
    valid_fraction: float
    episodes: int


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    steps: int
    before: EvalResult | None
    after: EvalResult | None
    plot: Path | None
    interrupted: bool
    after_warmup: EvalResult | None = None
    warmup_nll: tuple[float, ...] = ()


def load_policy(model: str | None, *, checkpoint: str | Path | None = None) -> TransformersPolicy:
    """The configured model, with a training checkpoint's weights when one is given."""
    path = Path(checkpoint) / "trainer.pt" if checkpoint is not None else None
    if path is not None and not path.is_file():
        raise ConfigurationError(f"{checkpoint} is not a checkpoint (no trainer.pt in it)")
    policy = TransformersPolicy.load(model)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        policy.model.load_state_dict(state["model"])
    return policy


def make_env_factory(config: TrainConfig) -> Callable[..., ToolEnv]:
    """A factory of the configured env, unwrapped to its :class:`ToolEnv`; keyword arguments
    go to the env's constructor on top of ``config.env_kwargs``."""
    require_registered(config.env)

    def make(**extra: Any) -> ToolEnv:
        env = gymnasium.make(config.env, **{**config.env_kwargs, **extra}).unwrapped
        if not isinstance(env, ToolEnv):
            raise ConfigurationError(f"{config.env} is not a gymbox ToolEnv")
        return env

    return make


@dataclass
class EnvSupply:
    """Where a run's envs come from: the factory, and the sandboxes they share (if any)."""

    make: Callable[[], ToolEnv]
    sandboxes: RecoveringSandboxes | None

    def metrics(self) -> dict[str, float]:
        return self.sandboxes.metrics.as_dict() if self.sandboxes is not None else {}


@contextlib.asynccontextmanager
async def env_supply(config: TrainConfig, *, episodes_at_once: int) -> AsyncIterator[EnvSupply]:
    """The configured env. Sandbox envs share one warm :class:`SandboxPool` behind
    :class:`RecoveringSandboxes` (journal replay on infra failures, agent attribution) and an
    :class:`InfraCircuitBreaker`, so a flaky engine slows the run down or stops it instead of
    biasing it."""
    make = make_env_factory(config)
    probe = make()
    needs_sandbox = probe.needs_sandbox
    await probe.aclose()
    if not needs_sandbox:
        yield EnvSupply(make, None)
        return
    async with SandboxPool(size=max(1, min(episodes_at_once, 16))) as pool:
        sandboxes = RecoveringSandboxes(pool, breaker=InfraCircuitBreaker())
        yield EnvSupply(lambda: make(sandboxes=sandboxes), sandboxes)


def build_reward_mix(config: RewardConfig, steps: int) -> RewardMix:
    estimator = {"grpo": GRPO, "dr_grpo": DrGRPO, "rloo": RLOO}[config.estimator](
        min_valid=config.min_valid
    )
    schedule = {
        "constant": Constant(config.intrinsic_weight),
        "linear": Linear(config.intrinsic_weight, 0.0, steps),
        "cosine": Cosine(config.intrinsic_weight, 0.0, steps),
    }[config.schedule]
    terms: dict[str, Term] = {}
    if config.mode in ("gold", "mixed"):
        terms["gold"] = Term(1.0)
    if config.mode in ("intrinsic", "mixed"):
        terms[config.intrinsic] = Term(schedule if config.mode == "mixed" else 1.0, intrinsic=True)
    return RewardMix(terms, estimator=estimator)


def reward_tensors(groups: Sequence[Group], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each term's per-trajectory reward, flat in group then episode order.

    Intrinsic terms use the statistics the policy recorded while sampling (the current policy,
    so they cannot be gamed by pleasing a frozen scorer).
    """
    out: dict[str, list[float]] = {name: [] for name in names}
    for group in groups:
        answers = [_answer(t) for t in group.trajectories]
        votes = majority_vote(answers).rewards.tolist() if "majority_vote" in names else None
        for i, t in enumerate(group.trajectories):
            mask = torch.tensor(t.loss_mask, dtype=torch.bool)
            for name in names:
                if name == "gold":
                    value = t.reward.value
                elif name == "majority_vote":
                    value = votes[i]
                elif name == "self_certainty":
                    value = _masked_mean(t.self_certainty, mask)
                else:  # entropy minimisation: lower entropy, higher reward
                    value = -_masked_mean(t.entropy, mask)
                out[name].append(value)
    return {name: torch.tensor(values, dtype=torch.float32) for name, values in out.items()}


def _answer(t: Trajectory) -> str | None:
    if t.answer is None:
        return None
    return boxed(t.answer) or t.answer.strip() or None


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].mean()) if mask.any() else 0.0


async def evaluate(
    policy, make_env, config: EvalConfig, *, max_turns: int, max_tokens: int, max_new_tokens: int
) -> EvalResult:
    """Greedy accuracy and pass@k (k samples at τ=1, unbiased estimator) on held-out seeds."""
    seeds = [config.first_seed + i for i in range(config.episodes)]
    budget = Budget(max_tokens=max_tokens, max_turns=max_turns)
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=TURN_STOPS)
    envs = [make_env() for _ in seeds]
    try:
        trajectories = await rollout(policy, envs, seeds=seeds, sampling=greedy, budget=budget)
        valid = [t for t in trajectories if t.valid]
        accuracy = sum(t.reward.value >= 1.0 for t in valid) / max(len(valid), 1)
        pass_at_k = accuracy
        if config.k > 1:
            sampled = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0,
                                     stop=TURN_STOPS, seed=config.first_seed)
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
    return EvalResult(accuracy, pass_at_k, config.k, len(valid) / len(trajectories), len(seeds))


def evaluate_config(config: TrainConfig, *, checkpoint: str | Path | None = None) -> EvalResult:
    """``gymbox eval``: the configured model (or a checkpoint of it) on held-out seeds."""
    make_env_factory(config)
    policy = load_policy(config.model, checkpoint=checkpoint)

    async def session() -> EvalResult:
        async with env_supply(config, episodes_at_once=config.eval.episodes) as supply:
            return await evaluate(
                policy, supply.make, config.eval, max_turns=config.max_turns,
                max_tokens=config.max_tokens, max_new_tokens=config.sampling.max_new_tokens,
            )

    return asyncio.run(session())


def _pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021): 1 - C(n-c,k)/C(n,k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def train(config: TrainConfig, *, console: Console | None = None, evaluate_before: bool = True,
          resume: bool = False) -> RunSummary:
    """Run training as configured; Ctrl-C saves a checkpoint and returns cleanly."""
    console = console or Console()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_mapping(config), indent=2))
    torch.manual_seed(config.seed)
    make_env_factory(config)  # an unknown env fails here, before the model loads
    if config.policy.backend == "vllm":
        require_vllm()  # and so does a missing vLLM

    console.print(f"[bold]gymbox train[/] {config.env} → {run_dir}")
    with console.status("loading the model"):
        learner = TransformersPolicy.load(config.model)
        sampler = learner
        if config.max_staleness > 0:
            sampler = TransformersPolicy(copy.deepcopy(learner.model), learner.tokenizer)
        generator = SyncedPolicy(sampler)
        if config.policy.backend == "vllm":
            generator = vllm_generator(config.policy, learner, config.max_staleness > 0)
    optim = config.optim
    trainer_config = TrainerConfig(
        learning_rate=optim.learning_rate, weight_decay=optim.weight_decay,
        clip=ClipRange(optim.clip_low, optim.clip_high), kl_coef=optim.kl_coef,
        micro_batch_size=optim.micro_batch_size, max_grad_norm=optim.max_grad_norm,
        temperature=config.sampling.temperature,
    )
    ref_model = copy.deepcopy(learner.model) if optim.kl_coef > 0 else None
    trainer = PolicyTrainer(learner.model, trainer_config, ref_model=ref_model)
    first_step = 0
    checkpoints = run_dir / "checkpoints"
    if resume:
        latest = _latest_checkpoint(checkpoints)
        if latest is None:
            raise ConfigurationError(f"--resume: no checkpoint under {checkpoints}")
        trainer.load_checkpoint(latest)
        first_step = trainer.steps_done
        generator.load_weights(learner.model)
        console.print(f"resumed from {latest} at step {first_step}")

    eval_kwargs = dict(max_turns=config.max_turns, max_tokens=config.max_tokens,
                       max_new_tokens=config.sampling.max_new_tokens)
    mix = build_reward_mix(config.reward, config.steps)
    loop_config = LoopConfig(
        steps=config.steps - first_step, groups_per_step=config.groups_per_step,
        group_size=config.group_size, max_staleness=config.max_staleness,
        rollout_workers=config.rollout_workers, seed=config.seed,
    )
    sampling = SamplingParams(
        max_new_tokens=config.sampling.max_new_tokens, temperature=config.sampling.temperature,
        top_p=config.sampling.top_p, stop=TURN_STOPS, seed=config.seed,
    )
    budget = Budget(max_tokens=config.max_tokens, max_turns=config.max_turns)

    def score(groups: Sequence[Group], step: int) -> MixedAdvantages:
        flat = [t for g in groups for t in g.trajectories]
        valid = torch.tensor([t.valid for t in flat])
        ids = torch.tensor([g.index for g in groups for _ in g.trajectories])
        rewards = reward_tensors(groups, list(mix.terms))
        return mix.advantages(rewards, valid, ids, step=step)

    stop = {"requested": False}
    metrics = MetricsWriter(run_dir)
    samples_file = (run_dir / "samples.jsonl").open("a")
    progress = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)
    task = progress.add_task("train", total=config.steps, completed=first_step, status="")

    async def session() -> tuple[EvalResult | None, tuple[list[float], EvalResult] | None,
                                 int, EvalResult | None]:
        at_once = max(config.group_size * config.rollout_workers, config.eval.episodes)
        async with env_supply(config, episodes_at_once=at_once) as supply:
            before = None
            if evaluate_before:
                with console.status(f"held-out evaluation ({config.eval.episodes} episodes)"):
                    before = await evaluate(learner, supply.make, config.eval, **eval_kwargs)
                console.print(f"before: accuracy {before.accuracy:.3f} "
                              f"on {before.episodes} held-out tasks")
            warm = None
            if config.warmup.sft_steps > 0 and not resume:
                warm = await warm_up(supply.make)

            def on_step(report: StepReport) -> None:
                row = {**_step_metrics(report), **supply.metrics()}
                metrics.write(report.step, row)
                for group in report.groups:
                    t = group.trajectories[0]
                    samples_file.write(json.dumps({
                        "step": report.step, "group": group.index, "seed": group.seed,
                        "status": t.status, "reward": t.reward.value, "messages": t.messages,
                    }) + "\n")
                samples_file.flush()
                progress.update(task, advance=1, status=(
                    f"reward {row['reward/mean']:.2f}  valid {row['valid_fraction']:.2f}  "
                    f"loss {row['loss']:+.3f}"))
                done = report.step + 1
                if config.checkpoint_every and done % config.checkpoint_every == 0:
                    trainer.save_checkpoint(checkpoints / f"step-{done}")

            with progress:
                steps_done = await run_loop(
                    generator=generator, trainer=trainer, make_env=supply.make, score=score,
                    config=loop_config, sampling=sampling, budget=budget, on_step=on_step,
                    should_stop=lambda: stop["requested"], first_step=first_step,
                )
            after = None
            if not stop["requested"]:
                with console.status("held-out evaluation"):
                    after = await evaluate(learner, supply.make, config.eval, **eval_kwargs)
            return before, warm, steps_done, after

    async def warm_up(make_env: Callable[[], ToolEnv]) -> tuple[list[float], EvalResult]:
        imitator = PolicyTrainer(learner.model, dataclasses.replace(
            trainer_config, learning_rate=config.warmup.learning_rate))
        with console.status(f"warm-up: imitating {config.env}'s scripted expert") as status:
            nll = await imitate_expert(
                imitator, learner.tokenizer, make_env, steps=config.warmup.sft_steps,
                episodes_per_step=config.warmup.episodes_per_step,
                first_seed=WARMUP_FIRST_SEED + config.seed * 1_000_003, budget=budget,
                on_step=lambda step, loss: status.update(
                    f"warm-up step {step + 1}/{config.warmup.sft_steps}: nll {loss:.3f}"),
            )
            await asyncio.to_thread(generator.load_weights, learner.model)
            status.update("held-out evaluation")
            accuracy = await evaluate(learner, make_env, config.eval, **eval_kwargs)
        console.print(f"warm-up: {len(nll)} imitation steps, nll {nll[0]:.3f} → {nll[-1]:.3f}; "
                      f"accuracy {accuracy.accuracy:.3f}")
        return nll, accuracy

    # Ctrl-C ends the run after the step in flight, with a checkpoint, instead of mid-update.
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.update(requested=True))
    try:
        before, warm, steps_done, after = asyncio.run(session())
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        metrics.close()
        samples_file.close()
    total_steps = first_step + steps_done
    trainer.save_checkpoint(checkpoints / f"step-{total_steps}")
    warmup_nll, after_warmup = warm if warm is not None else ((), None)
    if after is None:
        console.print(f"interrupted: checkpoint saved at step {total_steps}")
        return RunSummary(run_dir, total_steps, before, None, None, interrupted=True,
                          after_warmup=after_warmup, warmup_nll=tuple(warmup_nll))
    baselines = [f"{name} {result.accuracy:.3f}" for name, result in
                 (("before", before), ("after warm-up", after_warmup)) if result is not None]
    console.print(f"after:  accuracy {after.accuracy:.3f}"
                  + (f" ({', '.join(baselines)})" if baselines else ""))
    plot = plot_metrics(run_dir)
    summary = RunSummary(run_dir, total_steps, before, after, plot, interrupted=False,
                         after_warmup=after_warmup, warmup_nll=tuple(warmup_nll))
    _write_summary(summary)
    console.print(f"plot: {plot}")
    return summary


def _step_metrics(report: StepReport) -> dict[str, float]:
    flat = [t for g in report.groups for t in g.trajectories]
    valid = [t for t in flat if t.valid]
    row: dict[str, float] = {
        "reward/mean": sum(t.reward.value for t in valid) / max(len(valid), 1),
        "valid_fraction": len(valid) / len(flat),
        "groups_dropped": float(report.advantages.dropped_groups.numel()),
        "stale_groups_dropped": float(report.stale_groups_dropped),
        "loss": report.update.loss,
        "kl": report.update.kl,
        "clip_fraction": report.update.clip_fraction,
        "grad_norm": report.update.grad_norm,
        "tokens_per_s": sum(len(t.token_ids) for t in flat) / max(report.wall_s, 1e-9),
        "generator_idle_fraction": report.generator_idle_s / max(report.wall_s, 1e-9),
        "turns": sum(t.turns for t in flat) / len(flat),
    }
    components: dict[str, list[float]] = {}
    for t in valid:
        for name, component in t.reward.components.items():
            components.setdefault(name, []).append(component.value)
    for name, values in components.items():
        row[f"reward/{name}"] = sum(values) / len(values)
    tokens = [(t.entropy, t.self_certainty, torch.tensor(t.loss_mask, dtype=torch.bool))
              for t in valid]
    if tokens:
        row["entropy"] = sum(_masked_mean(e, m) for e, _, m in tokens) / len(tokens)
        row["self_certainty"] = sum(_masked_mean(s, m) for _, s, m in tokens) / len(tokens)
    for t in flat:
        if not t.valid:
            kind = t.reward.reason or "unknown"
            row[f"infra/{kind}"] = row.get(f"infra/{kind}", 0.0) + 1
    return row


def _latest_checkpoint(directory: Path) -> Path | None:
    steps = sorted(directory.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return steps[-1] if steps else None


def _write_summary(summary: RunSummary) -> None:
    def result(value: EvalResult | None) -> dict[str, Any] | None:
        return asdict(value) if value is not None else None

    data = {"before": result(summary.before), "after_warmup": result(summary.after_warmup),
            "after": result(summary.after), "warmup_nll": list(summary.warmup_nll),
            "steps": summary.steps, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (summary.run_dir / "summary.json").write_text(json.dumps(data, indent=2))
