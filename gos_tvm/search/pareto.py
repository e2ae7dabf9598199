"""Pareto front of (latency, accuracy) configurations."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence


def config_key(choices: Mapping[str, str | None]) -> str:
    """The identity of a configuration (in `state['scores']`, the distillation cache, the rounds):
    its replaced sites, as sorted JSON.  A configuration listing a kept site as None is the same
    configuration as one that leaves the site out."""
    return json.dumps({k: v for k, v in sorted(choices.items()) if v is not None}, sort_keys=True)


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
        """Identity (`config_key`): compare configurations by this, never by `label`."""
        return config_key(self.choices)

    @property
    def label(self) -> str:
        """For people (reports, messages): "site=candidate,..." with "-" for a kept site."""
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


def fall_back_to_original(state: dict, configs: Sequence[Configuration], chosen: Configuration, adapted: dict,
                          baseline: dict) -> tuple[Configuration, dict]:
    """The chosen configuration was estimated faster from its kernels but measured slower end to
    end (the whole-model budget spread over other kernels, other fusion): never hand back a
    slower model.  Returns the original configuration and its latency; the decisions in `state`
    say why, and `state['fallback']` keeps what was rejected."""
    from .measurer import speedup

    _, stat = speedup(baseline, adapted)
    key = f"{stat}_s"
    why = (f"kept: the adapted model ({chosen.label}) measured {adapted[key] * 1e3:.3f} ms end to end ({stat}), "
           f"not faster than the original's {baseline[key] * 1e3:.3f} ms; the original is returned")
    for site, ckey in chosen.choices.items():
        if ckey is not None:
            decision = state["decisions"][site]
            # The kernel-level reason is kept aside once, so a resumed run (which falls back again,
            # from a newer measurement) does not nest the reasons.
            kernel_reason = decision.setdefault("kernel_reason", decision["reason"])
            decision.update(choice=None, rule="original", reason=f"{why} (the site alone: {kernel_reason})")
    state["fallback"] = {"rejected": chosen.label, "adapted": adapted, "baseline": baseline}
    original = next(c for c in configs if not any(c.choices.values()))
    return original, baseline

