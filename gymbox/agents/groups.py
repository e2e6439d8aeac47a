"""What happens to a GRPO group when some of its episodes fail for infrastructure reasons.

Recovery (:mod:`gymbox.runtime.recovery`) repairs most failures inside the episode; what it
cannot repair ends the episode ``infra_failed`` and masked. The group then has fewer than G
valid members, and a policy decides what the step makes of it:

* :class:`KeepValid` — train on the valid members; the baseline is their mean.
* :class:`Rerun` — play each failed episode again, same task, fresh env, fresh sample, at most
  ``max_reruns`` times; what still fails is masked, as with :class:`KeepValid`.
* :class:`DropGroup` — leave the whole group out of the step (every member masked).

Why it matters (docs/training.md, "When a group member fails"): when failures correlate with
the trajectory (long episodes, heavy tool calls, particular answers fail more often), the
valid members are a biased sample of the policy's behaviour on that task, and so is their
baseline. A re-run draws a fresh sample from the same policy on the same task, which restores
the group's size and, for transient faults, its distribution; dropping the group removes that
task's bias but biases the batch towards the tasks that fail less.

Only ``infra_failed`` episodes (``reward.valid`` false) are ever re-run or dropped: an episode
the agent ended badly is scored, so a crash cannot buy the agent a second try.

Example:
    >>> import asyncio
    >>> asyncio.run(Rerun(max_reruns=2).settle([], rerun=None))
    Settled(trajectories=[], reruns=0, replaced=0, dropped=False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gymbox.agents.rollout import Trajectory
from gymbox.rewards.record import RewardRecord

Replay = Callable[[int, int], Awaitable[list[Trajectory]]]
"""``rerun(count, attempt)``: ``count`` fresh episodes of the group's task, each in a fresh env
with a fresh sampling seed for ``attempt``."""


@dataclass(frozen=True)
class Settled:
    """A group's members after the policy, and what it did.

    Attributes:
        trajectories: the members, in order (a re-run replaces the member it re-plays).
        reruns: episodes re-played.
        replaced: failed members a re-run replaced by a valid episode.
        dropped: the policy left the whole group out.
    """

    trajectories: list[Trajectory]
    reruns: int = 0
    replaced: int = 0
    dropped: bool = False


class GroupFailurePolicy(Protocol):
    """Decides what a group with failed members becomes."""

    async def settle(self, trajectories: list[Trajectory], rerun: Replay | None) -> Settled: ...


@dataclass(frozen=True)
class KeepValid:
    """Train on the valid members only (their mean is the baseline)."""

    async def settle(self, trajectories: list[Trajectory], rerun: Replay | None) -> Settled:
        return Settled(list(trajectories))


@dataclass(frozen=True)
class Rerun:
    """Re-play each failed member in a fresh env with a fresh sample, at most ``max_reruns``
    times; a member that still fails stays masked.

    Args:
        max_reruns: attempts per failed member (0 behaves as :class:`KeepValid`).
    """

    max_reruns: int = 1

    def __post_init__(self) -> None:
        if self.max_reruns < 0:
            raise ValueError(f"max_reruns must be >= 0, got {self.max_reruns}")

    async def settle(self, trajectories: list[Trajectory], rerun: Replay | None) -> Settled:
        members = list(trajectories)
        reruns = replaced = 0
        for attempt in range(self.max_reruns if rerun is not None else 0):
            failed = [i for i, t in enumerate(members) if not t.valid]
            if not failed:
                break
            assert rerun is not None
            fresh = await rerun(len(failed), attempt)
            reruns += len(failed)
            for i, t in zip(failed, fresh, strict=True):
                if t.valid:
                    members[i] = t
                    replaced += 1
        return Settled(members, reruns, replaced)


@dataclass(frozen=True)
class DropGroup:
    """Leave a group with any failed member out of the step: every member is masked
    (``reason="group_dropped"``), so the group adds nothing to the loss or the statistics."""

    async def settle(self, trajectories: list[Trajectory], rerun: Replay | None) -> Settled:
        if all(t.valid for t in trajectories):
            return Settled(list(trajectories))
        masked = [t if not t.valid else dataclasses.replace(
            t, reward=RewardRecord.invalid("group_dropped")) for t in trajectories]
        return Settled(masked, dropped=True)


def make_group_policy(name: str, max_reruns: int = 1) -> GroupFailurePolicy:
    """The policy called ``name``: ``rerun``, ``keep_valid`` or ``drop_group``.

    Example:
        >>> make_group_policy("rerun", max_reruns=2)
        Rerun(max_reruns=2)
    """
    policies: dict[str, Callable[[], GroupFailurePolicy]] = {
        "rerun": lambda: Rerun(max_reruns), "keep_valid": KeepValid, "drop_group": DropGroup,
    }
    if name not in policies:
        raise ValueError(f"unknown group-failure policy {name!r}; choose from "
                         f"{', '.join(policies)}")
    return policies[name]()

