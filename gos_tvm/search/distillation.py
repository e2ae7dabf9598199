"""End-to-end distillation inside a search (`SearchOptions.distill`).

The layer-wise fit of a candidate is the cheap proxy of its accuracy.  A candidate that it rejects
is judged again after `fit.distill` has fine-tuned the replacements of its whole configuration
against the original model on the calibration inputs; the chosen configuration gets a longer
distillation, on all of them (`final_distill_samples`).  Distilled weights become *variants* of the candidates: same program (so the same
kernel measurement), new weights, key ``site:hash~tag``, an entry in ``state['candidates']`` with
``weights`` and ``distilled_from``.  So configurations, the Pareto front, evolution and
`TuneResult.build` need nothing new: a distilled configuration is a configuration of variants.
Every score stays a score on the user's validation data.
"""
from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Mapping

import numpy as np

from .pareto import Configuration, config_key, pareto_front

if TYPE_CHECKING:  # pragma: no cover
    from .gos import GOSearch

#: At most this many inputs are held out for early stopping: the held-out part is evaluated 20 times
#: per distillation, and 20% of a whole training set (11,000 Fashion-MNIST images) would cost more
#: than the training steps.
MAX_HELDOUT = 2048


class SearchDistiller:
    """Distils configurations of one search; keeps what it did in `search.state` (so a killed run
    resumes: finished distillations are looked up, a running one continues from its checkpoint)."""

    def __init__(self, search: "GOSearch"):
        self.search = search

    @property
    def enabled(self) -> bool:
        """Whether candidates are judged after distillation (off when the option is, or when the
        model has no trainable form; `state['distillation']` says why)."""
        return self.search.opt.distill and not self.search.state.get("distillation", {}).get("unavailable")

    @functools.cached_property
    def task(self) -> str:
        """'classification' (KL on logits) or 'regression' (MSE): the option, or by the width of the
        model's output ('auto': one value per sample is a regression, e.g. a pulse rate)."""
        search = self.search
        if search.opt.distill_task != "auto":
            return search.opt.distill_task
        out = search.predict({}, form="tvm")(search.calib[:1])
        return "regression" if out.reshape(len(out), -1).shape[1] == 1 else "classification"

    def configuration(self, choices: Mapping[str, str | None], steps: int,
                      inputs: np.ndarray | None = None) -> dict[str, str | None]:
        """Distil the replacements of `choices` together (starting from their current weights) on
        `inputs` (default: the search's `distill_inputs`) and return the choices of the distilled
        variant: one new candidate key per replaced site.  Done once per (configuration, steps,
        inputs).  Returns `choices` unchanged when there is nothing to do or the model has no
        trainable form (then recorded in the state, and reported)."""
        from ..fit import distill
        from ..graph import UnsupportedModelError

        search, opt = self.search, self.search.opt
        inputs = search.distill_inputs if inputs is None else inputs
        # The search's own distillations keep their entries of before `final_distill_samples`.
        on = "" if len(inputs) == len(search.distill_inputs) else f"{len(inputs)}in:"
        entry = f"{steps}:{on}{config_key(choices)}"
        cache = search.state.setdefault("distilled", {})
        if entry in cache:
            return dict(cache[entry]["choices"])
        replaced = [search.candidate(k) for k in choices.values() if k is not None]
        if not replaced or steps <= 0 or not self.enabled:
            return dict(choices)
        try:
            res = distill((search.mod, search.params), {c.site: (c.program, c.weights()) for c in replaced},
                          inputs, steps=steps, batch_size=opt.distill_batch, lr=opt.distill_lr,
                          temperature=opt.distill_temperature, task=self.task,
                          holdout=min(0.2, MAX_HELDOUT / len(inputs)), seed=opt.seed,
                          checkpoint_dir=search.store.path / "distill", progress=False)
        except UnsupportedModelError as err:
            search.state["distillation"] = {"unavailable": f"{err}; candidates are judged by their layer-wise fit"}
            search.save()
            return dict(choices)
        tag = hashlib.sha256(entry.encode()).hexdigest()[:8]
        variant: dict[str, str | None] = dict(choices)
        for c in replaced:
            info = search.state["candidates"][c.key]
            weights = f"{info['hash']}~{tag}"
            search.store.save_weights(c.site, weights, res.weights[c.site])
            key = f"{c.site}:{weights}"
            search.state["candidates"][key] = {**info, "weights": weights, "distilled_from": c.key}
            variant[c.site] = key
        cache[entry] = {"choices": variant, "inputs": len(inputs), "steps": res.steps, "best_step": res.best_step,
                        "error_before": res.error_before, "error_after": res.error_after, "seconds": res.seconds}
        search.save()
        return dict(variant)

    def final(self, chosen: Configuration) -> tuple[Configuration, list[Configuration], list[Configuration]]:
        """The longer distillation of the chosen configuration: its variant replaces it when it scores
        at least as well on the validation data.  Returns (chosen, configurations, Pareto front)."""
        search = self.search
        runs = search.state.get("distilled", {}).values()
        # A chosen configuration that is a kept final distillation (a resumed run; a later round that
        # added nothing) is not distilled again.
        done = next((r["final"] for r in runs if "final" in r and config_key(r["choices"]) == chosen.key), None)
        if done is None:
            variant = self.configuration(chosen.choices, search.opt.final_distill_steps, search.final_distill_inputs)
            search.score(variant)  # a configuration is compared by its score on the validation data
        configs = search.configurations()
        front = pareto_front(configs)
        if done is not None:
            search.state["final_distillation"] = done
            return chosen, configs, front
        variant_key = config_key(variant)
        distilled = next((c for c in configs if c.key == variant_key), None)
        if distilled is not None and distilled.accuracy >= chosen.accuracy:
            record = {"from": chosen.label, "to": distilled.label, "score_before": chosen.accuracy,
                      "score_after": distilled.accuracy}
            search.state["final_distillation"] = record
            for r in search.state["distilled"].values():  # not `runs`: the state may have had none before
                if config_key(r["choices"]) == variant_key:
                    r["final"] = record
            search.save()
            chosen = distilled
        return chosen, configs, front

    def summary(self) -> dict:
        """For the report: whether and how candidates were distilled."""
        search, opt = self.search, self.search.opt
        judged = [t for d in search.state["decisions"].values() for t in d.get("tried", [])
                  if t.get("judged_by", "").startswith("distillation")]
        return {"enabled": opt.distill, "task": self.task if self.enabled else None,
                "unavailable": search.state.get("distillation", {}).get("unavailable"),
                "proxy": "layer-wise fit first; a candidate it rejects is judged after distilling its configuration "
                         f"({opt.distill_steps} steps)",
                "inputs": len(search.distill_inputs), "final_inputs": len(search.final_distill_inputs),
                "batch": opt.distill_batch,
                "candidates_judged_by_distillation": len(judged),
                "accepted_after_distillation": sum(t["verdict"] == "accurate" for t in judged),
                "runs": len(search.state.get("distilled", {})), "final": search.state.get("final_distillation"),
                "rounds": search.state.get("rounds", []),
                "final_steps": opt.final_distill_steps}


__all__ = ["SearchDistiller"]
