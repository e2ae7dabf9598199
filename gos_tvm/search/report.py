"""The search's JSON report and its Pareto plot."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .pareto import Configuration
from .store import write_json_atomic


def write_report(path: str | os.PathLike, report: Mapping[str, Any]) -> Path:
    path = Path(path)
    write_json_atomic(path, dict(report))
    return path


def plot_pareto(path: str | os.PathLike, configs: Sequence[Configuration], front: Sequence[Configuration],
                chosen: Configuration | None, accuracy_floor: float | None = None,
                title: str = "GOS: latency vs accuracy") -> Path:
    """Every evaluated configuration, the Pareto front and the chosen one (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ms = lambda cs: [c.latency_s * 1e3 for c in cs]  # noqa: E731
    acc = lambda cs: [100 * c.accuracy for c in cs]  # noqa: E731
    ax.scatter(ms(configs), acc(configs), s=14, c="0.65", label="evaluated")
    ax.plot(ms(front), acc(front), "o-", c="tab:blue", ms=5, label="Pareto front")
    originals = [c for c in configs if c.origin == "original"]
    if originals:
        ax.scatter(ms(originals), acc(originals), marker="s", s=50, c="tab:red", label="original", zorder=3)
    if chosen is not None:
        ax.scatter(ms([chosen]), acc([chosen]), marker="*", s=160, c="tab:green", label="chosen", zorder=4)
    if accuracy_floor is not None:
        ax.axhline(100 * accuracy_floor, ls="--", c="0.4", lw=0.8, label="accuracy budget")
    ax.set_xlabel("latency on the device (ms, estimated from tuned kernels)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
