"""The per-step PNG every recipe writes: reward, accuracy, length, clip ratio and behaviour frequencies.

matplotlib comes with the ``demo`` extra, not with ``pip install zrl-plugins`` alone: without it the PNG is skipped
with one line, and the run (whose results are in ``summary.json``) still ends normally.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MISSING_MATPLOTLIB = "matplotlib is not installed (pip install 'zrl-plugins[demo]'): {path} not written"

PANELS = (
    ("reward and accuracy", ("reward", "accuracy")),
    ("completion length (tokens)", ("completions/mean_length",)),
    ("clip ratio", ("clip_ratio/region_mean",)),
    (
        "behaviour frequency",
        ("behaviour/verification", "behaviour/backtracking", "behaviour/subgoal_setting", "behaviour/enumeration"),
    ),
)


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the file-only backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Write a 2 x 2 figure of the metrics in ``log_history`` (a Trainer's ``state.log_history``) to ``path``;
    without matplotlib, say so in one line and return ``None``."""
    plt = pyplot()
    if plt is None:
        print(MISSING_MATPLOTLIB.format(path=path), file=sys.stderr, flush=True)
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    measured = sorted({k for h in log_history for k in h if k.startswith("eval/")})
    evaluated = [k for k in measured if k.endswith(("/accuracy", "/pass@1")) or "/avg@" in k]
    for ax, (name, keys) in zip(axes.flat, PANELS, strict=True):
        if name == "reward and accuracy":  # the held-out curve and benchmarks measured during training
            keys = (*keys, *evaluated)
        elif name.startswith("completion length"):  # the benchmarks' greedy answers, beside the rollouts'
            keys = (*keys, *(k for k in measured if k.endswith("/mean_length")))
        for key in keys:
            points = [(h["step"], h[key]) for h in log_history if key in h and "step" in h]
            if points:
                label = key.split("/")[-1] if not key.startswith("eval/") else key.removeprefix("eval/")
                ax.plot(*zip(*points), marker="o" if key.startswith("eval/") else ".", label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
