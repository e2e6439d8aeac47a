"""``gymbox train`` and ``gymbox eval``: the library composed, from a config to a run directory.

A run, top to bottom::

    run = Run.start(config)              the model, the trainer, the reward mix (by name)
    run.evaluate("before")               held-out accuracy of the base model
    run.warm_up()                        imitate the env's scripted expert (optional)
    run.train_steps()                    the actor-learner loop: rollouts → RewardMix.score →
                                         trainer.step; metrics, samples, checkpoints per step
    run.summarise()                      the final evaluation, summary.json, metrics.png

A run directory holds ``config.json`` (what ran), ``metrics.jsonl`` (one row per step, plus
evaluation rows), ``samples.jsonl`` (one transcript per group per step), ``checkpoints/step-N``
(atomic, each with the run's config) and, at the end, ``summary.json`` and ``metrics.png``.
Log lines are plain, one per phase and one per step, so a log file reads as well as a terminal.
Ctrl-C stops the phase under way within a token's or a micro-batch's time (generation checks
at every token, an optimiser step before each micro-batch and drops the step, the loop between
steps), saves a checkpoint, and returns; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TextIO

import torch

from gymbox.agents.checkpoints import latest_checkpoint, remove_partial
from gymbox.agents.evaluate import EvalResult, evaluate
from gymbox.agents.groups import make_group_policy
from gymbox.agents.loop import Group, StepReport, SyncedPolicy, run_loop
from gymbox.agents.memory import peak_rss_bytes, release_memory, tune_malloc
from gymbox.agents.metrics import MetricsWriter, plot_metrics
from gymbox.agents.policy import Interrupted, TransformersPolicy
from gymbox.agents.run_config import PolicyConfig, RewardConfig, TermConfig, TrainConfig
from gymbox.agents.supply import EnvSupply, env_supply, make_env_factory
from gymbox.agents.trainer import PolicyTrainer
from gymbox.agents.vllm_policy import require_vllm, vllm_generator
from gymbox.agents.warmup import imitate_expert
from gymbox.config import from_mapping, to_mapping
from gymbox.rewards.advantages import GRPO, RLOO, DrGRPO
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
from gymbox.rewards.terms import SeedScale, make_term
from gymbox.runtime.errors import ConfigurationError

WARMUP_FIRST_SEED = 500_000_000
"""Demonstrations draw task seeds from here on: apart from training's and evaluation's."""

RUN_CONFIG = "run_config.json"
"""The run's config, saved in every checkpoint so ``gymbox eval --checkpoint`` needs no other."""

REWARD_STATE = "reward_mix"
"""Key of the reward mix's learnt state (RND, the guard's H₀) in a checkpoint's state."""


# ── the parts: policy, reward mix ─────────────────────────────────────────────────────────────

def _transformers_generator(config: PolicyConfig, learner: TransformersPolicy,
                            separate_weights: bool) -> SyncedPolicy:
    # Overlapping sampling needs a module of its own, not weights of its own: the learner's
    # tensors are shared, and the trainer writes them between generate calls (SyncedPolicy).
    return SyncedPolicy.sharing(learner) if separate_weights else SyncedPolicy(learner)


@dataclass(frozen=True)
class PolicyBackend:
    """How ``policy.backend`` makes the generator that samples the episodes.

    Attributes:
        make: called ``(config, learner, separate_weights)``; ``separate_weights`` is true when
            sampling overlaps updates (``loop.max_staleness > 0``), so the generator must not
            run the learner's own module: transformers samples through a module of its own
            over the learner's tensors, vLLM's engine from its own copy.
        require: checks, before any model loads, that what the backend needs is installed.
    """

    make: Callable[[PolicyConfig, TransformersPolicy, bool], SyncedPolicy]
    require: Callable[[], object] = lambda: None


POLICY_BACKENDS: dict[str, PolicyBackend] = {
    "transformers": PolicyBackend(_transformers_generator),
    "vllm": PolicyBackend(vllm_generator, require=require_vllm),
}
"""``policy.backend`` → its :class:`PolicyBackend`."""


def policy_backend(config: PolicyConfig) -> PolicyBackend:
    """The backend ``config`` names, with its requirements checked (call it before loading).

    Raises:
        ConfigurationError: an unknown backend, or one whose package is not installed.
    """
    if config.backend not in POLICY_BACKENDS:
        raise ConfigurationError(f"policy.backend {config.backend!r} is unknown; choose from "
                                 f"{', '.join(POLICY_BACKENDS)}")
    backend = POLICY_BACKENDS[config.backend]
    backend.require()
    return backend


def load_learner(config: PolicyConfig, *, checkpoint: str | Path | None = None
                 ) -> TransformersPolicy:
    """The model the trainer updates, with a checkpoint's weights when one is given."""
    path = Path(checkpoint) / "trainer.pt" if checkpoint is not None else None
    if path is not None and not path.is_file():
        raise ConfigurationError(f"{checkpoint} is not a checkpoint (no trainer.pt in it)")
    policy = TransformersPolicy.load(config.model)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        policy.model.load_state_dict(state["model"])
    return policy


def build_reward_mix(config: RewardConfig, steps: int) -> RewardMix:
    """The :class:`RewardMix` of ``reward.*``: each term built by name, its schedule, the
    estimator, the mixing policy, the guard and the group scale.

    Raises:
        ConfigurationError: a term's options do not fit it.
    """
    estimators = {"grpo": GRPO, "dr_grpo": DrGRPO, "rloo": RLOO}
    try:
        terms = {name: Term(_schedule(term, steps), reward=make_term(name, term.options))
                 for name, term in config.terms.items()}
        scale = None
        if config.seed_scale.enabled:
            s = config.seed_scale
            scale = SeedScale(alpha=s.alpha, form=s.form, entropy=s.entropy, match=s.match)
        return RewardMix(
            terms, estimator=estimators[config.estimator](min_valid=config.min_valid),
            applies=GoldWhereLabelled() if config.mixing == "gold_where_labelled" else Additive(),
            guard=EntropyGuard(config.guard.fraction) if config.guard.enabled else None,
            scale=scale, labelled_fraction=config.labelled_fraction,
            train_on=config.train_on or None,
        )
    except ValueError as exc:
        raise ConfigurationError(f"reward: {exc}") from None


def _schedule(term: TermConfig, steps: int) -> Schedule:
    if term.schedule == "constant":
        return Constant(term.weight)
    ramp = Linear if term.schedule == "linear" else Cosine
    return ramp(term.weight, term.end_weight, term.schedule_steps or steps)


# ── results ──────────────────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class RunSummary:
    """What a run did.

    Attributes:
        run_dir: the run directory.
        steps: optimiser steps done (resumed ones included).
        before: held-out evaluation before training (None if skipped).
        after: the final evaluation (None when interrupted).
        plot: the metrics plot (None when interrupted).
        interrupted: a stop was requested.
        after_warmup: the evaluation after the warm-up, if there was one.
        warmup_nll: each warm-up step's NLL.
        checkpoint: the last checkpoint written.
    """

    run_dir: Path
    steps: int
    before: EvalResult | None
    after: EvalResult | None
    plot: Path | None
    interrupted: bool
    after_warmup: EvalResult | None = None
    warmup_nll: tuple[float, ...] = ()
    checkpoint: Path | None = None


class Log:
    """One plain line per event, flushed: reads the same in a terminal and in a log file."""

    def __init__(self, out: TextIO | Any | None = None) -> None:
        self.out = out

    def __call__(self, line: str) -> None:
        if self.out is None:
            print(line, flush=True)
        elif hasattr(self.out, "print"):  # a rich Console
            self.out.print(line, markup=False, highlight=False)
        else:
            self.out.write(line + "\n")
            self.out.flush()


# ── the run ──────────────────────────────────────────────────────────────────────────────────

@dataclass
class Run:
    """A run's composed objects and its phases (see the module docstring)."""

    config: TrainConfig
    log: Log
    learner: TransformersPolicy
    generator: SyncedPolicy
    trainer: PolicyTrainer
    mix: RewardMix
    supply: EnvSupply | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    metrics: MetricsWriter | None = None
    samples: IO[str] | None = None
    results: dict[str, EvalResult] = field(default_factory=dict)
    began: float = field(default_factory=time.perf_counter)
    warmup_nll: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by phase (load, starting and closing the sandbox pool, evaluation, warm-up,
    training without its evaluations); the run's last line reports it."""

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @classmethod
    def start(cls, config: TrainConfig, log: Log, *, resume: bool = False) -> Run:
        """Load the model, make the generator, trainer and reward mix; resume if asked."""
        make_env_factory(config)  # an unknown env fails here, before the model loads
        backend = policy_backend(config.policy)  # and so do an unknown or missing backend
        started = time.perf_counter()
        learner = load_learner(config.policy)
        generator = backend.make(config.policy, learner, config.loop.max_staleness > 0)
        ref_model = copy.deepcopy(learner.model) if config.optim.kl_coef > 0 else None
        trainer = PolicyTrainer(learner.model, config.trainer, ref_model=ref_model)
        run = cls(config, log, learner, generator, trainer,
                  build_reward_mix(config.reward, config.loop.steps))
        run.began, run.seconds["load"] = started, time.perf_counter() - started
        log(f"model: {config.policy.model or 'embedded SmolLM2-135M-Instruct'} "
            f"({sum(p.numel() for p in learner.model.parameters()) / 1e6:.0f}M parameters, "
            f"{config.policy.backend}) loaded in {run.seconds['load']:.1f} s")
        if resume:
            run._resume()
        learner.interrupt = generator.policy.interrupt = trainer.interrupt = run.stop
        return run

    def _resume(self) -> None:
        for partial in remove_partial(self.checkpoints):
            self.log(f"resume: removed {partial.name}, a save that did not finish")
        found = latest_checkpoint(self.checkpoints)
        for path, why in found.skipped:
            self.log(f"resume: skipped {path.name}: {why}")
        if found.path is None:
            raise ConfigurationError(f"--resume: no complete checkpoint under {self.checkpoints}")
        state = self.trainer.load_checkpoint(found.path)
        if REWARD_STATE in state:
            try:
                self.mix.load_state_dict(state[REWARD_STATE])
            except (ValueError, KeyError, RuntimeError) as exc:  # other terms, or other widths
                raise ConfigurationError(f"--resume from {found.path}: {exc}; resume with the "
                                         "run's own reward terms") from None
        self.generator.load_weights(self.learner.model)
        self.log(f"resume: from {found.path} (step {self.trainer.steps_done})")

    @property
    def eval_policy(self) -> SyncedPolicy | TransformersPolicy:
        """Evaluation samples with the learner's weights; through the generator's lock when
        the two share them, as workers may sample at the same time."""
        if self.generator.shares_weights_with(self.learner.model):
            return self.generator
        return self.learner

    # ── phases ───────────────────────────────────────────────────────────────────────────────

    async def evaluate(self, label: str, *, step: int) -> EvalResult:
        """Held-out accuracy now; logged, and written to metrics.jsonl as ``eval/<label>``."""
        assert self.supply is not None
        started = time.perf_counter()
        result = await evaluate(self.eval_policy, self.supply.make, self.config.eval,
                                sampling=self.config.run_sampling, budget=self.config.budget)
        took = time.perf_counter() - started
        self._count("evaluation", took)
        self.results[label] = result
        key = "eval/base" if label == "before" else "eval/accuracy"
        self._write(step, {key: result.accuracy, "eval/valid_fraction": result.valid_fraction,
                           "eval/tool_use": result.tool_use,
                           **({"eval/pass_at_k": result.pass_at_k} if result.k > 1 else {})})
        self.log(f"eval {label}: accuracy {result.accuracy:.3f} on {result.episodes} held-out "
                 f"tasks (valid {result.valid_fraction:.0%}, a tool ran in "
                 f"{result.tool_use:.0%}) in {took:.1f} s")
        release_memory()
        return result

    async def warm_up(self) -> None:
        """Imitate the env's scripted expert for ``warmup.sft_steps`` steps (own optimiser,
        freed afterwards), then evaluate."""
        assert self.supply is not None
        warm = self.config.warmup
        imitator = PolicyTrainer(self.learner.model,
                                 replace(self.config.trainer, learning_rate=warm.learning_rate))
        imitator.interrupt = self.stop
        self.log(f"warm-up: {warm.sft_steps} imitation steps, each on {warm.episodes_per_step} "
                 "demonstrations by the env's scripted expert")
        started = time.perf_counter()

        def on_step(step: int, nll: float) -> None:
            self.log(f"warm-up step {step + 1}/{warm.sft_steps}: nll {nll:.3f} "
                     f"({time.perf_counter() - started:.1f} s so far)")
            release_memory()

        self.warmup_nll = await imitate_expert(
            imitator, self.learner.tokenizer, self.supply.make, steps=warm.sft_steps,
            episodes_per_step=warm.episodes_per_step,
            first_seed=WARMUP_FIRST_SEED + self.config.loop.seed * 1_000_003,
            budget=self.config.budget, on_step=on_step, should_stop=self.stop.is_set,
        )
        del imitator  # its AdamW state is two copies of the weights
        await asyncio.to_thread(self.generator.load_weights, self.learner.model)
        release_memory()
        self._count("warm-up", time.perf_counter() - started)
        if self.stop.is_set():
            return
        await self.evaluate("after warm-up", step=self.trainer.steps_done)

    async def train_steps(self) -> int:
        """The actor-learner loop; returns the steps done in this session."""
        assert self.supply is not None
        config = self.config
        first = self.trainer.steps_done
        remaining = config.loop.steps - first
        if remaining <= 0:
            return 0
        self.log(f"training: {remaining} steps of {config.loop.groups_per_step}×"
                 f"{config.loop.group_size} episodes, max_staleness {config.loop.max_staleness}, "
                 f"reward {' + '.join(config.reward.terms)}")

        def score(groups: Sequence[Group], step: int) -> MixedAdvantages:
            return self.mix.score([g.trajectories for g in groups], step=step,
                                  ids=[g.index for g in groups])

        started, evaluating = time.perf_counter(), self.seconds.get("evaluation", 0.0)
        try:
            return await run_loop(
                generator=self.generator, trainer=self.trainer, make_env=self.supply.make,
                score=score, config=replace(config.loop, steps=remaining),
                sampling=config.run_sampling, budget=config.budget, on_step=self._on_step,
                should_stop=self.stop.is_set, first_step=first,
                group_failures=make_group_policy(config.group_failures.policy,
                                                 config.group_failures.max_reruns),
            )
        finally:  # the evaluations between steps are counted as evaluation, not training
            self._count("training", time.perf_counter() - started
                        - (self.seconds.get("evaluation", 0.0) - evaluating))

    async def _on_step(self, report: StepReport) -> None:
        row = {**step_metrics(report, self.config), **self.supply.metrics()}  # type: ignore[union-attr]
        row["memory/rss_gb"] = release_memory() / 2**30  # after the step, garbage returned
        row["memory/peak_gb"] = peak_rss_bytes() / 2**30
        self._write(report.step, row)
        self._write_samples(report)
        done = report.step + 1
        reward = " ".join(f"{k} {v:.2f}" for k, v in row.items() if k.startswith("reward/"))
        self.log(f"step {done}/{self.config.loop.steps}: {reward}  valid "
                 f"{row['valid_fraction']:.2f}  loss {row['loss']:+.3f}  "
                 f"{report.wall_s:.1f} s (generator idle {row['generator_idle_fraction']:.0%})")
        every = self.config.checkpoint_every
        if every and done % every == 0:
            self.save()
        if self.config.eval.every and done % self.config.eval.every == 0 \
                and done < self.config.loop.steps:
            await self.evaluate(f"after step {done}", step=done)
        release_memory()

    def _count(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def save(self) -> Path:
        """A checkpoint of the trainer now, with the run's config; returns its directory."""
        path = self.checkpoints / f"step-{self.trainer.steps_done}"
        config = json.dumps(to_mapping(self.config), indent=2)
        self.trainer.save_checkpoint(path, extra={RUN_CONFIG: config},
                                     state={REWARD_STATE: self.mix.state_dict()})
        return path

    def summarise(self, *, interrupted: bool) -> RunSummary:
        """The last checkpoint, summary.json and the plot."""
        checkpoint = self.save()
        before, warm, after = (self.results.get(k) for k in ("before", "after warm-up", "after"))
        if interrupted:
            self.log(f"interrupted: checkpoint saved at step {self.trainer.steps_done} "
                     f"({checkpoint})")
            return RunSummary(self.run_dir, self.trainer.steps_done, before, None, None, True,
                              warm, tuple(self.warmup_nll), checkpoint)
        plot = plot_metrics(self.run_dir)
        summary = RunSummary(self.run_dir, self.trainer.steps_done, before, after, plot, False,
                             warm, tuple(self.warmup_nll), checkpoint)
        _write_summary(summary)
        baselines = [f"{name} {r.accuracy:.3f}" for name, r in
                     (("before", before), ("after warm-up", warm)) if r is not None]
        if after is not None:
            self.log(f"after: accuracy {after.accuracy:.3f}"
                     + (f" ({', '.join(baselines)})" if baselines else ""))
        self.log(f"plot: {plot}")
        self.log("time: " + ", ".join(f"{phase} {s:.0f} s" for phase, s in self.seconds.items())
                 + f"; {time.perf_counter() - self.began:.0f} s from the model's load to here")
        return summary

    # ── run directory ────────────────────────────────────────────────────────────────────────

    def _write(self, step: int, row: dict[str, float]) -> None:
        assert self.metrics is not None
        self.metrics.write(step, row)

    def _write_samples(self, report: StepReport) -> None:
        assert self.samples is not None
        for group in report.groups:
            t = group.trajectories[0]
            self.samples.write(json.dumps({
                "step": report.step, "group": group.index, "seed": group.seed,
                "status": t.status, "reward": t.reward.value, "messages": t.messages,
            }) + "\n")
        self.samples.flush()

    @contextmanager
    def files(self) -> Iterator[None]:
        self.metrics = MetricsWriter(self.run_dir)
        self.samples = (self.run_dir / "samples.jsonl").open("a")
        try:
            yield
        finally:
            self.metrics.close()
            self.samples.close()

    async def session(self, *, evaluate_before: bool, warm_up: bool) -> bool:
        """All phases in one env supply; True when they ran to the end."""
        config = self.config
        at_once = max(config.loop.group_size * config.loop.rollout_workers, config.eval.episodes)
        opened = time.perf_counter()
        async with env_supply(config, episodes_at_once=at_once) as supply:
            self._count("sandbox pool", time.perf_counter() - opened)
            self.supply = supply
            try:
                if evaluate_before:
                    await self.evaluate("before", step=self.trainer.steps_done)
                if warm_up and not self.stop.is_set():
                    await self.warm_up()
                if not self.stop.is_set():
                    await self.train_steps()
                if not self.stop.is_set():
                    await self.evaluate("after", step=self.trainer.steps_done)
            except Interrupted:  # Ctrl-C cut a generation short: stop is set, a checkpoint follows
                pass
            closing = time.perf_counter()
        # Closing waits for sandbox starts under way (see SandboxPool.close): counted, as it can
        # take as long as a start's timeout when the machine is loaded.
        self._count("sandbox pool", time.perf_counter() - closing)
        return not self.stop.is_set()


def train(config: TrainConfig, *, console: Any = None, evaluate_before: bool = True,
          resume: bool = False) -> RunSummary:
    """Run training as configured (see the module docstring); Ctrl-C saves a checkpoint and
    returns a summary with ``interrupted=True``."""
    tune_malloc()
    log = Log(console)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_mapping(config), indent=2))
    torch.manual_seed(config.loop.seed)
    log(f"gymbox train {config.env} → {run_dir}")
    run = Run.start(config, log, resume=resume)
    with run.files(), _stop_on_sigint(run.stop, log):
        finished = asyncio.run(run.session(
            evaluate_before=evaluate_before, warm_up=config.warmup.sft_steps > 0 and not resume))
        return run.summarise(interrupted=not finished)


@contextmanager
def _stop_on_sigint(stop: threading.Event, log: Log) -> Iterator[None]:
    """The first Ctrl-C asks the run to stop (it saves a checkpoint); a second one raises
    KeyboardInterrupt at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        stop.set()
        log("stopping: finishing the call under way, then saving a checkpoint "
            "(Ctrl-C again to quit at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def step_metrics(report: StepReport, config: TrainConfig) -> dict[str, float]:
    """One step's metrics row: the reward mix's terms, weights and guard, the loss, the group
    policy's work, throughput, and infrastructure failures by kind."""
    flat = [t for g in report.groups for t in g.trajectories]
    valid = [t for t in flat if t.valid]
    advantages = report.advantages
    row: dict[str, float] = advantages.metrics()
    row.update({
        "loss": report.update.loss,
        "clip_fraction": report.update.clip_fraction,
        "grad_norm": report.update.grad_norm,
        "tokens_per_s": sum(len(t.token_ids) for t in flat) / max(report.wall_s, 1e-9),
        "generator_idle_fraction": report.generator_idle_s / max(report.wall_s, 1e-9),
        "turns": sum(t.turns for t in flat) / len(flat),
        "groups/reruns": float(sum(g.reruns for g in report.groups)),
        "groups/replaced": float(sum(g.replaced for g in report.groups)),
        "groups/dropped": float(sum(g.dropped for g in report.groups)),
    })
    if config.optim.kl_coef > 0:
        row["kl"] = report.update.kl
    if config.loop.max_staleness > 0:
        row["stale_groups_dropped"] = float(report.stale_groups_dropped)
    if valid:
        row["gold"] = sum(t.reward.value for t in valid) / len(valid)
        row["entropy"] = sum(_mean(t.entropy, t.loss_mask) for t in valid) / len(valid)
        row["self_certainty"] = sum(_mean(t.self_certainty, t.loss_mask)
                                    for t in valid) / len(valid)
    for t in flat:
        if not t.valid:
            kind = t.reward.reason or "unknown"
            row[f"infra/{kind}"] = row.get(f"infra/{kind}", 0.0) + 1
    return row


def _mean(values: torch.Tensor, mask: Sequence[int]) -> float:
    m = torch.as_tensor(mask, dtype=torch.bool)
    return float(values[m].mean()) if m.any() else 0.0


def _write_summary(summary: RunSummary) -> None:
    def result(value: EvalResult | None) -> dict[str, Any] | None:
        return asdict(value) if value is not None else None

    data = {"before": result(summary.before), "after_warmup": result(summary.after_warmup),
            "after": result(summary.after), "warmup_nll": list(summary.warmup_nll),
            "steps": summary.steps, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (summary.run_dir / "summary.json").write_text(json.dumps(data, indent=2))


# ── gymbox eval ──────────────────────────────────────────────────────────────────────────────

def checkpoint_config(checkpoint: str | Path) -> TrainConfig:
    """The config of the run that wrote ``checkpoint``: its own ``run_config.json``, else the
    run directory's ``config.json`` two levels up.

    Raises:
        ConfigurationError: neither exists.
    """
    checkpoint = Path(checkpoint)
    for path in (checkpoint / RUN_CONFIG, checkpoint.parent.parent / "config.json"):
        if path.is_file():
            return from_mapping(TrainConfig, json.loads(path.read_text()))
    raise ConfigurationError(f"{checkpoint} has no {RUN_CONFIG} and no run config.json above "
                             "it; pass --config with the run's config")


def evaluate_config(config: TrainConfig, *, checkpoint: str | Path | None = None) -> EvalResult:
    """``gymbox eval``: the configured model (or a checkpoint of it) on held-out seeds."""
    make_env_factory(config)
    policy = load_learner(config.policy, checkpoint=checkpoint)

    async def session() -> EvalResult:
        async with env_supply(config, episodes_at_once=config.eval.episodes) as supply:
            return await evaluate(policy, supply.make, config.eval,
                                  sampling=config.run_sampling, budget=config.budget)

    return asyncio.run(session())
