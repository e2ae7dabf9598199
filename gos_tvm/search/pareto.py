"""Pareto front of (latency, accuracy) configurations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass
class Configuration:
    """One choice per site: `choices[site_id]` is a candidate key, or None for the original."""

    choices: dict[str, str | None]
    latency_s: float            # estimated from measured kernels, or measured end to end
    accuracy: float
    measured_end_to_end: bool = False
    origin: str = ""            # "greedy", "evolution", "original"
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return ",".join(f"{s}={c or '-'}" for s, c in sorted(self.choices.items()))


def dominates(a: Configuration, b: Configuration) -> bool:
    return (a.latency_s <= b.latency_s and a.accuracy >= b.accuracy
            and (a.latency_s < b.latency_s or a.accuracy > b.accuracy))


def pareto_front(configs: Iterable[Configuration]) -> list[Configuration]:
    """Non-dominated configurations (lower latency, higher accuracy), fastest first."""
    unique = {c.key: c for c in configs}.values()
    front = [c for c in unique if not any(dominates(o, c) for o in unique)]
    return sorted(front, key=lambda c: c.latency_s)


def choose(front: Iterable[Configuration], floor: float) -> Configuration:
    """The fastest configuration of the Pareto front whose score is within the budget (>= `floor`).
    The original configuration always is, so there is one."""
    return min((c for c in front if c.accuracy >= floor - 1e-12), key=lambda c: c.latency_s)
