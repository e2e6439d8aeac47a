"""A training run's metrics: one JSON object per step in ``metrics.jsonl``, and their plot.

Each line is flat: ``{"step": 3, "reward/gold": 0.5, "valid_fraction": 1.0, ...}``. Keys with a
``/`` are families (``reward/*`` and ``weight/*`` by term, ``infra/*`` and
``faults/injected/*`` by failure kind) that the plot draws as one panel each, so a new reward
term or failure kind shows up without touching this file. Evaluation rows hold ``eval/*`` keys
at the number of steps done (``eval/base`` before training, ``eval/accuracy`` after the warm-up,
every ``eval.every`` steps and at the end).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import IO

METRICS_FILE = "metrics.jsonl"

# (panel title, y-axis label, keys or key-family prefixes drawn in it). Every key here is written
# by gymbox.agents.train; a panel is drawn only when its keys have data, so a run without faults
# or without intrinsic terms shows no empty panel.
PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("held-out accuracy", "accuracy (greedy)", ("eval/base", "eval/accuracy")),
    ("held-out episodes in which a tool ran", "share (greedy)", ("eval/tool_use",)),
    ("reward by term (mean over the samples it covers)", "reward", ("reward/",)),
    ("training episodes the env's verifier passed (all tasks)", "share", ("gold",)),
    ("term weights (schedule × entropy guard)", "weight", ("weight/",)),
    ("entropy guard", "factor · mean entropy (nats)", ("guard/",)),
    ("valid and labelled samples", "fraction", ("valid_fraction", "labelled_fraction")),
    ("faults injected (cumulative)", "faults", ("faults/injected/",)),
    ("recovery (cumulative)", "failures",
     ("recovery/recovered", "recovery/masked", "recovery/agent_caused")),
    ("masked episodes by kind (per step)", "episodes", ("infra/",)),
    ("failed group members", "episodes / groups",
     ("groups/reruns", "groups/replaced", "groups/dropped", "groups_dropped")),
    ("token entropy and self-certainty", "nats", ("entropy", "self_certainty")),
    ("policy loss", "loss", ("loss",)),
    ("clipped tokens", "fraction", ("clip_fraction",)),
    ("KL to the reference", "KL (k3)", ("kl",)),
    ("throughput", "tokens/s", ("tokens_per_s",)),
    ("process memory", "GiB", ("memory/rss_gb", "memory/peak_gb")),
)


class MetricsWriter:
    """Appends one JSON line per step and flushes it, so a crash loses at most one step.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> with MetricsWriter(run) as metrics:
        ...     metrics.write(0, {"reward/gold": 0.25, "valid_fraction": 1.0})
        >>> read_metrics(run)
        [{'step': 0, 'reward/gold': 0.25, 'valid_fraction': 1.0}]
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a")

    def write(self, step: int, values: Mapping[str, float | int]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.jsonl``; a torn last line (a crash mid-write) is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a gymbox run directory?")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_metrics(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw every panel that has data into one PNG (default ``RUN_DIR/metrics.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/{METRICS_FILE} has no rows yet")
    panels = []
    for title, ylabel, patterns in PANELS:
        keys = sorted({k for row in rows for k in row if _matches(k, patterns)
                       and row.get(k) is not None})
        if keys:
            panels.append((title, ylabel, keys))
    columns = 2
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(11, 3.2 * lines), squeeze=False)
    for ax, (title, ylabel, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="." if len(points) < 40 else None, label=key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(keys) > 1 or any("/" in k for k in keys):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(output) if output else Path(run_dir) / "metrics.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key.startswith(p) if p.endswith("/") else key == p for p in patterns)


def _plain(value: float | int) -> float | int | None:
    value = float(value) if not isinstance(value, int) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value
