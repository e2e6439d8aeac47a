"""Claim B: intrinsic rewards collapse entropy and accuracy; some gold or an entropy guard don't.

The task (``--task``, :mod:`benchmarks.experiments.tasks`): ``addition`` (the default),
``a + b`` answered at once, so a group's answers can be voted on; or ``chain``, ``a + b + c``
added in written steps before the answer, so that self-certainty and negative entropy have
choices within a response to rank (on ``addition`` a group shares its one choice, and the
baseline removes it). The policy is warmed up by imitation to a middling accuracy, then each
arm trains the same start with a different reward, through
:class:`gymbox.rewards.mix.RewardMix` and the real loop:

* ``gold`` — the verifier only;
* ``majority_vote`` (TTRL), ``self_certainty`` (Intuitor) and ``negative_entropy`` (negative
  token entropy, EM-RL) — each intrinsic term alone (:mod:`gymbox.rewards.terms`), no label used;
* ``semi10`` / ``semi30`` — semi-supervised: gold on the 10 % / 30 % of prompts that have a
  label (``RewardMix.labelled_fraction``), majority vote on the rest
  (:class:`~gymbox.rewards.mix.GoldWhereLabelled`);
* ``guard`` / ``guard_entropy`` — majority vote / negative entropy alone with an
  :class:`~gymbox.rewards.mix.EntropyGuard` (the intrinsic weight, and so the step, shrinks in
  proportion once the mean token entropy falls below half its start);
* ``noise`` — a control, not part of the claim: N(0, 1) noise as the reward
  (:class:`NoiseReward`), i.e. what an arm does when its advantages carry no signal.

Per step it logs the mean token entropy, each intrinsic reward, the group agreement (share of a
group giving its most common answer), the training batch's accuracy, and how far each intrinsic
reward ranks a group's members as gold does (``gold_corr/<term>``); every
``--eval-every`` steps the greedy accuracy on held-out seeds and the share of held-out episodes
whose answer is the single most common one (1.0: the policy answers everything the same).

Usage (round 6's run, docs/experiments.md: 7 arms × 3 seeds × 30 steps in 869 s; with
``--steps 60`` and ``guard_entropy`` added, the reported table, 23 min 51 s alone)::

    flock /tmp/gymbox-heavy.lock python -m benchmarks.claim_intrinsic --task chain --operands 5 \\
        --warmup-steps 100 --lr 1e-4 --seeds 3 --jobs 3 --steps 30 --eval-episodes 50 \\
        --arms gold,majority_vote,self_certainty,negative_entropy,semi30,guard,noise \\
        --plot docs/claim_intrinsic_chain.png --out runs/experiments/claim_intrinsic_chain
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from benchmarks.experiments.tasks import Addition, Chain
from benchmarks.experiments.tiny import DESCRIPTIONS, Warmup, warmed_up_policy
from gymbox.agents.loop import Group, StepReport
from gymbox.agents.rollout import Trajectory
from gymbox.envs.core import ToolEnv
from gymbox.rewards.advantages import GRPO, DrGRPO
from gymbox.rewards.mix import (
    Additive,
    EntropyGuard,
    GoldWhereLabelled,
    MixedAdvantages,
    RewardMix,
    Term,
)
from gymbox.rewards.terms import Gold, make_term

INTRINSIC = ("majority_vote", "self_certainty", "negative_entropy")
GUARDED = {"guard": "majority_vote", "guard_entropy": "negative_entropy"}
"""The guarded arms, each with the one intrinsic term it guards."""
ARMS = ("gold", *INTRINSIC, "semi10", "semi30", *GUARDED, "noise")
ESTIMATORS = {"grpo": GRPO, "drgrpo": DrGRPO}
LOGGED = {"gold": Gold(), **{name: make_term(name) for name in INTRINSIC}}
"""What every arm logs each step, whichever terms it trains on."""


@dataclass(frozen=True)
class TaskChoice:
    """A task of ``--task``: its env for ``--operands`` values per number, and a token cap
    that fits its expert's longest response with room to spare."""

    make: Callable[[int], ToolEnv]
    max_new_tokens: int


TASKS = {
    "addition": TaskChoice(lambda operands: Addition(operands=operands), max_new_tokens=12),
    # "4+4=8, 8+4=12 <answer>12</answer>" is 21 tokens.
    "chain": TaskChoice(lambda operands: Chain(operands=operands), max_new_tokens=32),
}


class NoiseReward:
    """A control reward: N(0, 1) per member, from its own generator seeded with ``seed``, in
    the order groups are scored (fixed by the loop), so a rerun of an arm draws alike. On
    ``Addition`` the self-certainty and negative-entropy arms' group-relative advantages carry
    almost no signal (docs/experiments.md, Claim B); this arm shows what such advantages alone
    do to the policy."""

    intrinsic = False  # needs no label, but is no reward from the model either: not logged so

    def __init__(self, seed: int = 1234) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, group: Sequence[Trajectory]) -> torch.Tensor:
        return torch.randn(len(group), generator=self.generator)


def terms_of(arm: str) -> dict[str, Term]:
    """The arm's reward terms (gymbox.rewards.terms objects, weighted 1)."""
    if arm == "noise":
        return {"noise": Term(1.0, reward=NoiseReward())}
    if arm == "gold":
        return {"gold": Term(1.0, reward=Gold())}
    if arm in INTRINSIC or arm in GUARDED:
        name = GUARDED.get(arm, arm)
        return {name: Term(1.0, reward=make_term(name))}
    if arm.startswith("semi"):
        return {"gold": Term(1.0, reward=Gold()),
                "majority_vote": Term(1.0, reward=make_term("majority_vote"))}
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def build_mix(arm: str, estimator: str = "grpo") -> RewardMix:
    """The arm's :class:`RewardMix`: its terms, which prompts have a label, the guard, and the
    advantage estimator (``grpo`` or ``drgrpo``: GRPO without the division by the group's std).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    fraction = int(arm[4:]) / 100 if arm.startswith("semi") else 1.0
    return RewardMix(
        terms_of(arm), estimator=ESTIMATORS[estimator](min_valid=2),
        applies=GoldWhereLabelled() if arm.startswith("semi") else Additive(),
        labelled_fraction=fraction,
        guard=EntropyGuard(fraction=0.5) if arm in GUARDED else None)


def scorer(mix: RewardMix):
    """Groups → advantages by the mix's own :meth:`RewardMix.score`."""
    def score(groups: Sequence[Group], step: int) -> MixedAdvantages:
        return mix.score([g.trajectories for g in groups], step=step,
                         ids=[g.index for g in groups])

    return score


def reward_spread(report: StepReport) -> dict[str, float]:
    """``spread/<term>``: the mean over groups of the std of the term's rewards within a group
    (over the members it scored). GRPO divides each group's advantages by this std, so a tiny
    spread still gives unit-size advantages: it says how much signal the advantages carry."""
    advantages = report.advantages
    if not isinstance(advantages, MixedAdvantages):
        return {}
    sizes = [len(g.trajectories) for g in report.groups]
    row = {}
    for name, rewards in advantages.rewards.items():
        spreads = [float(r[m].std()) for r, m in zip(rewards.split(sizes),
                                                     advantages.applies[name].split(sizes),
                                                     strict=True) if int(m.sum()) >= 2]
        row[f"spread/{name}"] = sum(spreads) / len(spreads) if spreads else float("nan")
    return row


def gold_correlation(groups: Sequence[Sequence[Trajectory]]) -> dict[str, float]:
    """``gold_corr/<term>`` for each logged intrinsic term: the mean over groups of the Pearson
    correlation, within a group, between the term's rewards and gold. It is what a
    group-relative advantage of the term can teach: > 0, the term ranks the right members
    higher; about 0, its advantages are noise to the task. Groups where either is constant
    (no ranking to compare) are left out; NaN when none is left."""
    row = {}
    for name in INTRINSIC:
        correlations = []
        for group in groups:
            both = torch.stack([LOGGED["gold"](group), LOGGED[name](group)])
            if bool((both.std(dim=1) > 0).all()):
                correlations.append(float(torch.corrcoef(both)[0, 1]))
        row[f"gold_corr/{name}"] = (sum(correlations) / len(correlations) if correlations
                                    else float("nan"))
    return row


def step_metrics_for(mix: RewardMix):
    def step_metrics(report: StepReport) -> dict[str, float]:
        flat = [t for g in report.groups for t in g.trajectories]
        valid = [[t for t in g.trajectories if t.valid] for g in report.groups]
        valid = [g for g in valid if g]
        row = {f"reward/{name}": float(torch.cat([term(g) for g in valid]).mean())
               if valid else float("nan") for name, term in LOGGED.items()}
        intrinsic = [n for n, term in mix.terms.items() if term.intrinsic]
        row |= {
            "accuracy": row["reward/gold"],
            "agreement": row["reward/majority_vote"],
            "labelled_fraction": float(report.advantages.labelled.float().mean())
            if report.advantages.labelled is not None and report.advantages.labelled.numel()
            else float("nan"),
            "intrinsic": (sum(row[f"reward/{n}"] for n in intrinsic) / len(intrinsic)
                          if intrinsic else float("nan")),
            "entropy": batch_entropy(flat),
            "intrinsic_weight": sum(report.advantages.weights[n] for n in intrinsic)
            if intrinsic else 0.0,
            "advantage_abs": float(report.advantages.values[report.advantages.keep].abs().mean())
            if bool(report.advantages.keep.any()) else 0.0,
        }
        return row | reward_spread(report) | gold_correlation(valid)

    return step_metrics


def evaluate(episodes: list[Trajectory]) -> dict[str, float]:
    """Held-out metrics. ``entropy`` and ``self_certainty`` are the two intrinsic rewards'
    token means on these fixed prompts: unlike the training batches' values, they do not move
    with which prompts a step happened to draw."""
    answers = [t.answer.strip() for t in episodes if t.answer is not None]
    most_common = Counter(answers).most_common(1)[0][1] if answers else 0
    return {
        "accuracy": sum(t.valid and t.reward.value >= 1.0 for t in episodes) / len(episodes),
        "mode_share": most_common / len(episodes),
        "answered": len(answers) / len(episodes),
        "entropy": batch_entropy(episodes),
        "self_certainty": float(LOGGED["self_certainty"](episodes).mean()),
    }


async def experiment(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    schedule = Schedule(steps=args.steps, groups_per_step=args.groups_per_step,
                        group_size=args.group_size, eval_every=args.eval_every,
                        eval_episodes=args.eval_episodes, learning_rate=args.lr,
                        max_new_tokens=TASKS[args.task].max_new_tokens, max_turns=1,
                        max_tokens=256)
    say(f"claim B (intrinsic collapse): task {args.task} ({args.operands} values per number), "
        f"policy {args.model} "
        f"({DESCRIPTIONS[args.model]}); "
        f"arms {', '.join(args.arms)} × {args.seeds} seeds × {args.steps} steps, "
        f"{schedule.groups_per_step}×{schedule.group_size} episodes/step, "
        f"estimator {args.estimator}")
    results: dict = {"model": args.model, "task": args.task, "operands": args.operands,
                     "schedule": vars(schedule), "runs": [], "estimator": args.estimator}
    started = time.perf_counter()

    def make_env() -> ToolEnv:
        return TASKS[args.task].make(args.operands)

    # One warm-up for every seed: the seeds vary RL's samples and tasks.
    policy = await warmed_up_policy(
        args.model, make_env, seed=0, cache_dir=Path(args.cache),
        warmup=Warmup(args.warmup_steps, 16, args.warmup_lr), name=f"{args.task}{args.operands}",
        budget=schedule.budget, log=say)
    start_state = {k: v.clone() for k, v in policy.model.state_dict().items()}
    # Every arm of every seed starts from this policy, evaluated with a fixed sampling seed.
    start = await evaluation(policy, make_env, evaluate, schedule)
    for seed in seeds_of(args):
        for arm in args.arms:
            policy.model.load_state_dict(start_state)
            mix = build_mix(arm, args.estimator)
            arm_started = time.perf_counter()
            steps, evals = await train_arm(
                label=f"B {arm:<14} seed {seed}", policy=policy, make_env=make_env,
                make_eval_env=make_env, score=scorer(mix),
                step_metrics=step_metrics_for(mix), evaluate=evaluate, schedule=schedule,
                seed=seed, start=start,
                summary=lambda r: (f"accuracy {r['accuracy']:.2f} entropy {r['entropy']:.3f} "
                                   f"agreement {r['agreement']:.2f}"),
            )
            results["runs"].append({"arm": arm, "seed": seed,
                                    "labelled_fraction": mix.labelled_fraction,
                                    "steps": steps, "evals": evals,
                                    "wall_s": time.perf_counter() - arm_started})
            save_partial(args, results, started)
    results["wall_s"] = time.perf_counter() - started
    return results


def table(results: dict) -> str:
    """Per arm, over seeds (mean ± 95 % CI): held-out accuracy at the start, at its best and
    at the end; final entropy and agreement; the held-out answers' mode share at the end."""
    lines = ["| arm | held-out acc. start | best | final | final entropy | start entropy "
             "| final agreement | held-out mode share |", "|---|---|---|---|---|---|---|---|"]
    arms = [a for a in ARMS if any(r["arm"] == a for r in results["runs"])]
    for arm in arms:
        runs = [r for r in results["runs"] if r["arm"] == arm]

        def last(rows, key, n=3):
            return sum(row[key] for row in rows[-n:]) / len(rows[-n:])

        lines.append(
            f"| {arm} | {fmt_ci([r['evals'][0]['accuracy'] for r in runs])} "
            f"| {fmt_ci([max(e['accuracy'] for e in r['evals']) for r in runs])} "
            f"| {fmt_ci([r['evals'][-1]['accuracy'] for r in runs])} "
            f"| {fmt_ci([last(r['steps'], 'entropy') for r in runs])} "
            f"| {fmt_ci([r['steps'][0]['entropy'] for r in runs])} "
            f"| {fmt_ci([last(r['steps'], 'agreement') for r in runs])} "
            f"| {fmt_ci([r['evals'][-1]['mode_share'] for r in runs])} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("evals", "accuracy", "held-out accuracy (greedy)"),
              ("steps", "entropy", "mean token entropy (training samples)"),
              ("steps", "intrinsic", "the arm's intrinsic reward (training)"),
              ("steps", "agreement", "group agreement (majority-vote share)"))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    arms = [a for a in ARMS if any(r["arm"] == a for r in results["runs"])]
    colours = dict(zip(ARMS, ("black", "tab:red", "tab:orange", "tab:purple", "tab:cyan",
                              "tab:blue", "tab:green", "tab:olive", "tab:gray"), strict=True))
    for ax, (source, key, title) in zip(axes.flat, panels, strict=True):
        for arm in arms:
            runs = [r[source] for r in results["runs"] if r["arm"] == arm]
            xs, mean, half = curve(runs, key)
            if not xs:
                continue
            ax.plot(xs, mean, color=colours[arm], label=arm,
                    marker="o" if source == "evals" else None, markersize=3)
            ax.fill_between(xs, [m - h for m, h in zip(mean, half, strict=True)],
                            [m + h for m, h in zip(mean, half, strict=True)],
                            color=colours[arm], alpha=0.12)
        if key in ("accuracy", "agreement"):
            ax.set_ylim(-0.05, 1.05)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, ncol=2)
    n = len({r["seed"] for r in results["runs"]})
    fig.suptitle(f"Claim B: intrinsic rewards vs gold (task {results['task']}, "
                 f"{results['model']} policy, lr {results['schedule']['learning_rate']:g}, "
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
    parser.add_argument("--steps", type=int, default=40, help="RL steps per arm (>= 1)")
    parser.add_argument("--arms", type=lambda s: s.split(","),
                        default=[a for a in ARMS if a != "noise"],
                        help="comma-separated; default every arm but the noise control")
    parser.add_argument("--task", choices=tuple(TASKS), default="addition",
                        help="addition: a + b answered at once; chain: a + b + c added in "
                             "written steps before the answer")
    parser.add_argument("--operands", type=int, default=10,
                        help="values per number (10: one-digit numbers)")
    parser.add_argument("--groups-per-step", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--estimator", choices=tuple(ESTIMATORS), default="grpo",
                        help="advantage estimator of every arm (drgrpo: no std division)")
    parser.add_argument("--lr", type=float, default=None,
                        help="RL learning rate (default 1e-3 tiny, 1e-5 embedded)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="imitation steps (default 40 tiny, 6 embedded: without them "
                             "SmolLM2 writes no <answer> at all, and nothing can be voted on)")
    parser.add_argument("--warmup-lr", type=float, default=None,
                        help="imitation learning rate (default 3e-3 tiny, 5e-5 embedded)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for the tiny policy on a busy machine)")
    parser.add_argument("--cache", default="runs/experiments/cache")
    parser.add_argument("--out", default="runs/experiments/claim_intrinsic")
    parser.add_argument("--plot", default=None, help="PNG path for the figure")
    args = parser.parse_args(argv)
    tiny = args.model == "tiny"
    args.lr = args.lr if args.lr is not None else (1e-3 if tiny else 1e-5)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (40 if tiny
                                                                                  else 6)
    args.warmup_lr = args.warmup_lr if args.warmup_lr is not None else (3e-3 if tiny else 5e-5)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    bad = set(args.arms) - set(ARMS)
    if bad:
        parser.error(f"--arms: unknown {sorted(bad)}; choose from {', '.join(ARMS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    return run_and_report("claim B", parse(argv), experiment, table, plot,
                          module="benchmarks.claim_intrinsic", argv=argv)


if __name__ == "__main__":
    main()
