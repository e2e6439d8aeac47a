"""Claim A: scoring infrastructure failures as 0 pushes the policy off the tool; masking does not.

The task (:class:`benchmarks.experiments.tasks.StoredNumber`): is the number in the sandbox's
``n.txt`` divisible by ``--divisor`` (2 by default)? Testing it with the sandboxed ``check``
tool is always right (and is the only request an episode sends its sandbox); answering "0"
without the tool is right on 1 - 1/divisor of the tasks (two in three at 3, half at 2). The
policy starts (after imitating an expert that does both) using the tool on about half the
tasks, and GRPO decides between the two.

Each arm trains the same warmed-up policy with the same seeds, while the runtime's real
:class:`~gymbox.runtime.faults.FaultInjector` strikes a share of the sandbox requests (killed
container, killed supervisor, garbled or truncated response) in real Docker sandboxes:

* ``recover`` — gymbox's default: :class:`~gymbox.runtime.recovery.RecoveringSandboxes`
  recovers what it can (fresh sandbox, journal replay), and the loop re-plays a member that
  still failed with a fresh sample (:class:`~gymbox.agents.groups.Rerun`); what is left is
  masked out of reward and loss;
* ``mask`` — no recovery and no re-play (:class:`~gymbox.agents.groups.KeepValid`): every
  failed episode is masked;
* ``zero`` — no recovery and no re-play, and a failed episode is scored as reward 0, as several
  frameworks do (its tokens, the tool call among them, stay in the loss with that reward).

At 0 % faults the three arms are the same run, so it is run once (``recover``). Held-out
accuracy and the correct-tool-use rate are measured on clean sandboxes (no faults) every
``--eval-every`` steps, sampling at τ = 1 with a fixed seed (every prompt reads the same, so a
greedy policy would either always or never call the tool: the sampled rate is the policy's);
the training-batch tool-call rate every step.

Usage (the full experiment: 7 arms × 3 seeds × 16 steps, the 3 seeds in 3 processes; 21 min
alone on the 2-core machine, its warm-up included; docs/experiments.md has what ran)::

    flock /tmp/gymbox-heavy.lock python -m benchmarks.claim_masking --seeds 3 --jobs 3 \\
        --plot docs/claim_masking.png

Its defaults are the reported experiment's (round 5 on, written out in docs/experiments.md).

``--model embedded`` runs SmolLM2-135M instead of the tiny policy (use it with one rate and
few steps: it is the confirming configuration).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.experiments.harness import (
    Schedule,
    add_seed_options,
    batch_entropy,
    curve,
    evaluation,
    fmt_ci,
    run_and_report,
    save_partial,
    say,
    seeds_caption,
    seeds_of,
    train_arm,
)
from benchmarks.experiments.tasks import StoredNumber, used_tool
from benchmarks.experiments.tiny import DESCRIPTIONS, Warmup, warmed_up_policy
from gymbox.agents.groups import GroupFailurePolicy, KeepValid, Rerun
from gymbox.agents.loop import Group, StepReport
from gymbox.agents.rollout import Trajectory
from gymbox.rewards.advantages import GRPO
from gymbox.rewards.mix import MixedAdvantages, RewardMix, Term
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.faults import FaultInjector, FaultKind, FaultPlan
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.recovery import RecoveringSandboxes

MODES = ("recover", "mask", "zero")
FAULT_KINDS = frozenset({FaultKind.KILL_CONTAINER, FaultKind.KILL_SUPERVISOR,
                         FaultKind.GARBLE_RESPONSE, FaultKind.TRUNCATE_RESPONSE})
"""Faults that strike one request of one sandbox. Pauses (each costs a liveness-probe wait)
and engine outages (which stall every episode at once) are left out to keep the runs short."""


def arms(rates: Sequence[float], modes: Sequence[str]) -> list[tuple[float, str]]:
    """(fault rate, mode) pairs; 0 % faults once, as its modes coincide."""
    out: list[tuple[float, str]] = []
    for rate in rates:
        out += [(rate, "recover")] if rate == 0 else [(rate, m) for m in modes]
    return out


def tool_attempted(t: Trajectory) -> bool:
    """The model's first turn called a tool (whether or not the sandbox then failed)."""
    turns = [m for m in t.messages if m["role"] == "assistant"]
    return bool(turns) and "<tool_call>" in turns[0]["content"]


def correct_tool_use(t: Trajectory) -> bool:
    """The episode ran the tool and its answer was right."""
    return t.valid and used_tool(t.messages) and t.reward.value >= 1.0


def scorer(mode: str, mix: RewardMix):
    """Groups → advantages: masked (``recover``/``mask``) or failures scored 0 (``zero``)."""

    def score(groups: Sequence[Group], step: int) -> MixedAdvantages:
        flat = [t for g in groups for t in g.trajectories]
        valid = torch.tensor([t.valid for t in flat])
        gold = torch.tensor([t.reward.value if t.valid else 0.0 for t in flat])
        if mode == "zero":
            valid = torch.ones_like(valid)
        ids = torch.tensor([g.index for g in groups for _ in g.trajectories])
        return mix.advantages({"gold": gold}, valid, ids, step=step)

    return score


def group_failures(mode: str) -> GroupFailurePolicy:
    """What the loop does with a group's failed member: in ``recover`` gymbox's default (re-play
    it once with a fresh sample); without recovery it stays failed, or the loop's re-play would
    replace it and neither the mask nor the penalty would ever act."""
    return Rerun() if mode == "recover" else KeepValid()


def step_metrics(report: StepReport) -> dict[str, float]:
    flat = [t for g in report.groups for t in g.trajectories]
    valid = [t for t in flat if t.valid]
    return {
        "reward": sum(t.reward.value for t in valid) / max(len(valid), 1),
        "valid_fraction": len(valid) / len(flat),
        "infra_failed": float(len(flat) - len(valid)),
        "reruns": float(sum(g.reruns for g in report.groups)),
        "tool_attempt": sum(map(tool_attempted, flat)) / len(flat),
        "correct_tool_use": sum(map(correct_tool_use, flat)) / len(flat),
        "entropy": batch_entropy(flat),
    }


def evaluate(episodes: list[Trajectory]) -> dict[str, float]:
    valid = [t for t in episodes if t.valid]
    return {
        "accuracy": sum(t.reward.value >= 1.0 for t in valid) / max(len(valid), 1),
        "correct_tool_use": sum(map(correct_tool_use, valid)) / max(len(valid), 1),
        "tool_attempt": sum(map(tool_attempted, valid)) / max(len(valid), 1),
    }


async def experiment(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    schedule = Schedule(steps=args.steps, groups_per_step=args.groups_per_step,
                        group_size=args.group_size, eval_every=args.eval_every,
                        eval_episodes=args.eval_episodes, eval_temperature=1.0,
                        learning_rate=args.lr)
    plan_arms = arms(args.rates, args.modes)
    say(f"claim A (masking vs penalty): policy {args.model} "
        f"({DESCRIPTIONS[args.model]}); "
        f"{len(plan_arms)} arms × {args.seeds} seeds × {args.steps} steps, "
        f"{schedule.groups_per_step}×{schedule.group_size} episodes/step")
    mix = RewardMix({"gold": Term(1.0)}, estimator=GRPO(min_valid=2))
    results: dict = {"model": args.model, "schedule": vars(schedule), "runs": []}
    started = time.perf_counter()
    async with SandboxPool(size=args.pool) as clean:
        def make_clean() -> StoredNumber:
            return StoredNumber(sandboxes=clean, divisor=args.divisor,
                                tool_share=args.tool_share)

        # One warm-up for every seed: the seeds vary RL's samples, tasks and faults. Every arm
        # of every seed starts from it, evaluated once with a fixed sampling seed.
        policy = await warmed_up_policy(
            args.model, make_clean, seed=0, cache_dir=Path(args.cache),
            warmup=Warmup(args.warmup_steps, 8, args.warmup_lr),
            name=f"stored_number-d{args.divisor}-tool{args.tool_share:g}",
            budget=schedule.budget, log=say)
        start_state = {k: v.clone() for k, v in policy.model.state_dict().items()}
        start = await evaluation(policy, make_clean, evaluate, schedule)
        for seed in seeds_of(args):
            for rate, mode in plan_arms:
                policy.model.load_state_dict(start_state)
                label = f"A {mode:<7} faults {rate:.0%} seed {seed}"
                plan = FaultPlan.uniform(rate, seed=seed, kinds=FAULT_KINDS)
                arm_started = time.perf_counter()
                async with SandboxPool(size=args.pool, backend=FaultInjector(DockerBackend(),
                                                                             plan)) as pool:
                    injector = pool.backend
                    sandboxes = RecoveringSandboxes(pool) if mode == "recover" else pool

                    def make_env(sandboxes=sandboxes, recover=mode == "recover") -> StoredNumber:
                        # The arms without recovery opt out of the env's safe default.
                        return StoredNumber(sandboxes=sandboxes, divisor=args.divisor,
                                            recovery=recover)

                    def counters(sandboxes=sandboxes, injector=injector) -> dict[str, float]:
                        out = {"faults_injected": float(len(injector.log)),
                               "requests": float(injector.requests)}
                        if isinstance(sandboxes, RecoveringSandboxes):
                            m = sandboxes.metrics.as_dict()
                            out |= {k: m[f"recovery/{k}"]
                                    for k in ("recovered", "masked", "agent_caused")}
                        return out

                    steps, evals = await train_arm(
                        label=label, policy=policy, make_env=make_env, make_eval_env=make_clean,
                        score=scorer(mode, mix), step_metrics=step_metrics, evaluate=evaluate,
                        schedule=schedule, seed=seed, extra=counters,
                        group_failures=group_failures(mode), start=start,
                        summary=lambda r: (f"reward {r['reward']:.2f} valid "
                                           f"{r['valid_fraction']:.2f} tool "
                                           f"{r['tool_attempt']:.2f}"),
                    )
                results["runs"].append({"rate": rate, "mode": mode, "seed": seed,
                                        "steps": steps, "evals": evals,
                                        "wall_s": time.perf_counter() - arm_started})
                save_partial(args, results, started)
    results["wall_s"] = time.perf_counter() - started
    return results


def table(results: dict) -> str:
    """Per arm, over seeds: final held-out accuracy and correct tool use (mean ± 95 % CI), the
    training tool-call rate and token entropy of the last steps, failures and what became of
    them (per run: masked, scored 0, recovered; and the faults injected)."""
    lines = ["| faults | arm | held-out accuracy | correct tool use | tool calls (last 3 steps) "
             "| entropy (last 3 steps) | masked | scored 0 | recovered | faults injected |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["rate"], r["mode"]) for r in results["runs"]},
                  key=lambda k: (k[0], MODES.index(k[1])))

    def late(run: dict, key: str) -> float:
        rows = run["steps"][-3:]
        return sum(s[key] for s in rows) / len(rows)

    for rate, mode in keys:
        runs = [r for r in results["runs"] if (r["rate"], r["mode"]) == (rate, mode)]
        acc = [r["evals"][-1]["accuracy"] for r in runs]
        tool = [r["evals"][-1]["correct_tool_use"] for r in runs]
        failed = sum(sum(s["infra_failed"] for s in r["steps"]) for r in runs) / len(runs)
        recovered = sum(r["steps"][-1].get("recovered", 0.0) for r in runs) / len(runs)
        injected = sum(r["steps"][-1]["faults_injected"] for r in runs) / len(runs)
        masked, zeroed = (0.0, failed) if mode == "zero" else (failed, 0.0)
        lines.append(f"| {rate:.0%} | {mode} | {fmt_ci(acc)} | {fmt_ci(tool)} "
                     f"| {fmt_ci([late(r, 'tool_attempt') for r in runs])} "
                     f"| {fmt_ci([late(r, 'entropy') for r in runs])} "
                     f"| {masked:.1f} | {zeroed:.1f} | {recovered:.1f} | {injected:.1f} |")
    # Every arm of a seed starts from the same policy: one start per seed.
    starts = list({r["seed"]: r["evals"][0] for r in results["runs"]}.values())
    start = [e["accuracy"] for e in starts]
    start_tool = [e["correct_tool_use"] for e in starts]
    start_calls = [e["tool_attempt"] for e in starts]
    lines.append(f"\nBefore RL (every arm's start, held out): accuracy {fmt_ci(start)}, "
                 f"correct tool use {fmt_ci(start_tool)}, tool calls {fmt_ci(start_calls)}.")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({r["rate"] for r in results["runs"]})
    fig, axes = plt.subplots(3, len(rates), figsize=(4.2 * len(rates), 9.5), squeeze=False,
                             sharey="row")
    colours = {"recover": "tab:green", "mask": "tab:blue", "zero": "tab:red"}
    for col, rate in enumerate(rates):
        for mode in MODES:
            runs = [r for r in results["runs"] if r["rate"] == rate and r["mode"] == mode]
            if not runs:
                continue
            for row, (source, key, title) in enumerate((
                    ("evals", "accuracy", "held-out accuracy (τ=1)"),
                    ("evals", "correct_tool_use", "held-out correct tool use (τ=1)"),
                    ("steps", "tool_attempt", "training episodes calling the tool"))):
                xs, mean, half = curve([r[source] for r in runs], key)
                ax = axes[row][col]
                ax.plot(xs, mean, marker="o" if source == "evals" else None,
                        color=colours[mode], label=mode)
                ax.fill_between(xs, [m - h for m, h in zip(mean, half, strict=True)],
                                [m + h for m, h in zip(mean, half, strict=True)],
                                color=colours[mode], alpha=0.15)
                ax.set_title(f"{title}\nfaults {rate:.0%}", fontsize=9)
                ax.set_ylim(-0.05, 1.05)
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    n = len({r["seed"] for r in results["runs"]})
    # Two lines: one rate's column is too narrow for the title on one line.
    fig.suptitle(f"Claim A: masking vs scoring failures as 0\n({results['model']} policy, "
                 f"{seeds_caption(n)})", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "embedded"), default="tiny")
    add_seed_options(parser)
    parser.add_argument("--steps", type=int, default=16, help="RL steps per arm (>= 1)")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[0.0, 0.1, 0.3])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    parser.add_argument("--divisor", type=int, default=2,
                        help="the task's divisor: answering 0 without the tool is right on "
                             "1 - 1/divisor of the tasks")
    parser.add_argument("--tool-share", type=float, default=0.5,
                        help="share of the warm-up's expert episodes that call the tool")
    parser.add_argument("--groups-per-step", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--eval-episodes", type=int, default=48)
    parser.add_argument("--lr", type=float, default=None,
                        help="RL learning rate (default 1e-4 tiny, 1e-5 embedded)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="imitation steps (default 200 tiny, 8 embedded)")
    parser.add_argument("--warmup-lr", type=float, default=None)
    parser.add_argument("--pool", type=int, default=8, help="warm sandboxes per pool")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for the tiny policy on a busy machine)")
    parser.add_argument("--cache", default="runs/experiments/cache")
    parser.add_argument("--out", default="runs/experiments/claim_masking")
    parser.add_argument("--plot", default=None, help="PNG path for the figure")
    args = parser.parse_args(argv)
    tiny = args.model == "tiny"
    args.lr = args.lr if args.lr is not None else (1e-4 if tiny else 1e-5)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (200 if tiny
                                                                                  else 8)
    args.warmup_lr = args.warmup_lr if args.warmup_lr is not None else (3e-3 if tiny else 1e-4)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    bad = set(args.modes) - set(MODES)
    if bad:
        parser.error(f"--modes: unknown {sorted(bad)}; choose from {', '.join(MODES)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    return run_and_report("claim A", parse(argv), experiment, table, plot,
                          module="benchmarks.claim_masking", argv=argv)


if __name__ == "__main__":
    main()
