"""The GOS loop: operator replacement jointly with schedules, measured on the device.

    1. baseline     tune the original model with MetaSchedule (`trials_per_task` for every task, into
                    the run's one database), compile it with the database applied, measure it end to
                    end on the device until the timings are stable; its accuracy.
    2. complexity   each site's share of the tuned original: the tuned tasks that replacing it
                    removes from the model (fused epilogue and layout included; nothing is tuned).
    3. strategies   choose per-site replacements (`strategies.py`; by default greedy least-
                    efficient-first with bisection of the (latency rank, short-fit error) Pareto
                    front, then evolution);
                    with `rounds` > 1, again from the chosen configuration after its final
                    distillation (step 4), on the sites still kept.
    4. final        Pareto front of (latency, accuracy); the fastest configuration within the
                    accuracy budget (after a longer end-to-end distillation, `distillation.py`) is
                    tuned with the same per-task budget as the original (its unchanged tasks are in
                    the database already: only new tasks are tuned), compiled, and timed end to end
                    alternately with the original (`side_by_side`); if it measures slower, the
                    original.  A configuration that replaces nothing
                    is the original: no second tuning, no second measurement, 1.00x.

The parts are passed in: the `Measurer` (the device, or a fake one), the strategies and the
program-level latency model.  Every device measurement is written to the work directory's log
before it is used, and every phase checks the log first, so a killed run resumes without
measuring anything twice.
"""
from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..instructions import OpProgram
from .cost_model import LatencyModel, ProgramLatencyModel
from .distillation import SearchDistiller
from .measurer import Measurer, TunedMeasurer, TuningParts, speedup
from .adapt import build_adapted, fingerprint, predictor, torch_predictor
from .pareto import Configuration, choose, config_key, fall_back_to_original, pareto_front
from .results import Candidate, Decision, EvalFn, Predict, SearchOptions, SearchOutcome
from .store import WorkDir, check_database_dir
from .strategies import SearchStrategy, default_strategies
from .validate import RESUMABLE_OPTIONS, run_identity


class GOSearch:
    """One GOS run: holds the model, the device, the work directory and the search state.

    measurer: where latencies come from (default: a `TunedMeasurer` on `device` through the tracker
    and key set before `run`, tuning with `parts`); strategies: default `default_strategies()`;
    latency_model: ranks candidate programs (default `LatencyModel`, kept in the work directory)."""

    def __init__(self, mod, params: Mapping[str, np.ndarray], device, *, calib_data: np.ndarray,
                 evaluate: EvalFn, accuracy_budget: float, work_dir: str | Path, options: SearchOptions,
                 tracker: tuple[str, int] | None = None, key: str | None = None,
                 warm_start: str | Path | None = None, measurer: Measurer | None = None,
                 strategies: Sequence[SearchStrategy] | None = None,
                 latency_model: ProgramLatencyModel | None = None, parts: TuningParts | None = None,
                 warm_start_database: str | Path | None = None):
        from .. import graph
        from ..hw import resolve_preset

        self.mod, self.params = mod, dict(params)
        self.device = resolve_preset(device)
        calib_data = np.asarray(calib_data, dtype="float32")
        self.calib = calib_data[: options.calib_samples]
        # Distillation's inputs (no labels: the original's outputs are its targets).
        self.distill_inputs = calib_data[: options.distill_samples] if options.distill else self.calib
        self.final_distill_inputs = calib_data[: options.final_distill_samples] if options.distill else self.calib
        self.evaluate_fn = evaluate
        self.budget = float(accuracy_budget)
        self.tracker, self.key = tracker, key  # set by `tune` once the device pool is up
        self.opt = options
        self.analysis = graph.analyze(mod, self.params)
        self.sites = {s.id: s for s in self.analysis.sites}
        used = calib_data[: max(map(len, (self.calib, self.distill_inputs, self.final_distill_inputs)))]  # the longest prefix read
        identity = run_identity(fingerprint(mod, self.params), self.device, options, used, evaluate, accuracy_budget)
        self.store = WorkDir(work_dir, identity)
        self.state = self.store.load_state() or {"scores": {}, "candidates": {}, "decisions": {},
                                                 "configs": {}, "phase": "start"}
        # The whole-model budgets may change between runs of one work directory: each is recorded.
        budgets = {k: getattr(options, k) for k in RESUMABLE_OPTIONS}
        if not self.state.get("budgets") or self.state["budgets"][-1] != budgets:
            self.state.setdefault("budgets", []).append(budgets)
        self.latency_model = latency_model or LatencyModel(self.device.name, self.store.path / "cost_model.json",
                                                           seed=options.seed)
        if warm_start:
            self.latency_model.load(warm_start)
        self.strategies = list(strategies) if strategies is not None else default_strategies()
        self.parts = parts
        self.warm_start_database = check_database_dir(warm_start_database)
        self._measurer = measurer
        self._programs: dict[str, OpProgram] = {}
        self.round = 0  # the search round the strategies run in (`_rounds`; `strategies.round_key`)
        self.distiller = SearchDistiller(self)
        # Set by `run` before the strategies start.
        self.original_score = math.nan
        self.baseline: dict = {}
        self.site_latency: dict[str, float] = {}

    @property
    def measurer(self) -> Measurer:
        if self._measurer is None:
            self._measurer = TunedMeasurer(self.device, self.tracker, self.key, self.store.database_dir, self.opt,
                                           self.parts, warm_start_database=self.warm_start_database)
        return self._measurer

    @property
    def floor(self) -> float:
        """The lowest score a configuration may have (original score - budget)."""
        return self.original_score - self.budget

    def close(self) -> None:
        if self._measurer is not None:
            self._measurer.close()

    def save(self) -> None:
        self.store.save_state(self.state)

    # ------------------------------------------------------------------ measurements (cached in the log)

    def site_costs(self) -> dict[str, float]:
        """Each site's share of the original model's latency as the model runs it: what the tuned
        tasks that replacing the site removes cost (`Measurer.replacements`; the site's own program
        stands in for it, so nothing new is tuned).  Asked once per budget, ever."""
        from .. import graph

        pt = self.trials_per_task
        out, todo = {}, {}
        for site_id, site in self.sites.items():
            row = self.store.measured(f"site:{site_id}:{pt}pt")
            if row is not None:
                out[site_id] = row["latency_s"]
            else:
                todo[site_id] = site
        if todo:
            variants = {s: graph.substitute(self.mod, self.params, {s: (site.program, site.weights)},
                                            relax_operators=False)
                        for s, site in todo.items()}
            measured = self.measurer.replacements((self.mod, self.params), variants, trials_per_task=None)
            for site_id, m in measured.items():
                lat = out[site_id] = m["removed_s"]
                self.store.record_measurement(f"site:{site_id}:{pt}pt", kind="site", latency_s=lat,
                                              tasks=m["removed"], program=todo[site_id].program.name)
                if math.isfinite(lat):
                    self.latency_model.update([todo[site_id].program], [lat])
        return out

    @property
    def candidate_trials(self) -> int:
        """Trials for each new task a candidate brings into the model: `kernel_trials`, or the
        model's per-task budget.  A candidate is compared with the tasks it replaces, which were
        tuned to that budget; screened with fewer trials it loses to tuning, not to its design
        (vgg-style on Fashion-MNIST: the original's large convolutions ran 1.35-3.0x slower after
        16 of their 64 trials, so candidates screened at 16 came out "accurate but not faster")."""
        return self.opt.kernel_trials or self.trials_per_task

    def _candidate_log_key(self, ckey: str) -> str:
        # Distilled variants share their program, and so their measurement, with their candidate.
        # The kernel form is in the key: a work dir measured when every stage was a TensorIR kernel
        # must not lend those latencies to stages that are now Relax convolutions.
        from ..graph.operators import STAGE_FORM

        info = self.state["candidates"][ckey]
        return f"candidate:{info['site']}:{info['hash']}:{STAGE_FORM}:{self.candidate_trials}pt"

    def candidate_measurement(self, ckey: str) -> dict | None:
        """The candidate's measurement row (`candidate_latencies`), None if it was not measured."""
        return self.store.measured(self._candidate_log_key(ckey))

    def candidate_latencies(self, ckeys: Sequence[str]) -> dict[str, dict]:
        """Each candidate as the model runs it at its site (`Measurer.replacements`): `latency_s`,
        what its new tasks cost once tuned with `candidate_trials` each; `removed_s`, what the
        original's tasks it replaces cost; `saved_s`, the difference.  Measured once, ever."""
        todo: dict[str, str] = {}
        for ckey in ckeys:
            if self.candidate_measurement(ckey) is None:
                todo.setdefault(self._candidate_log_key(ckey), ckey)  # identical blocks: measured once
        if todo:
            variants = {ckey: self.adapted({self.candidate(ckey).site: ckey}) for ckey in todo.values()}
            measured = self.measurer.replacements((self.mod, self.params), variants,
                                                  trials_per_task=self.candidate_trials)
            for log_key, ckey in todo.items():
                m, program = measured[ckey], self.program(ckey)
                self.store.record_measurement(log_key, kind="candidate", latency_s=m["added_s"],
                                              removed_s=m["removed_s"], saved_s=m["removed_s"] - m["added_s"],
                                              tasks=m["added"], replaced_tasks=m["removed"], program=program.name,
                                              trials=self.candidate_trials)
                if math.isfinite(m["added_s"]):
                    self.latency_model.update([program], [m["added_s"]])
        return {ckey: self.candidate_measurement(ckey) for ckey in ckeys}

    @functools.cached_property
    def trials_per_task(self) -> int:
        """The per-task budget of whole-model tuning, the same for the original and the adapted model
        (`SearchOptions.model_trials_per_task`; the compatibility `trials` is divided by the
        original model's task count)."""
        if self.opt.trials_per_task is not None or self.opt.trials is None:
            return self.opt.model_trials_per_task(0)
        from tvm.s_tir import meta_schedule as ms

        from ..hw.tuning import prepare_relax

        target = self.device.target
        n_tasks = len(ms.relax_integration.extract_tasks(prepare_relax(self.mod, self.params, target), target))
        return self.opt.model_trials_per_task(n_tasks)

    def model_latency(self, name: str, mod, params) -> dict:
        """Tune every task up to the per-task budget (tasks already in the run's database are not
        tuned again), compile with the database applied, and measure end to end until stable.
        The log key holds the budget: a rerun with a larger one continues tuning."""
        per_task = self.trials_per_task
        key = f"model:{name}:{fingerprint(mod, params)}:{per_task}pt"
        row = self.store.measured(key)
        if row is not None:
            return row
        data = self.measurer.model(name, mod, params, self.calib[:1], trials_per_task=per_task)
        return self.store.record_measurement(key, kind="model", name=name, **data)

    def side_by_side(self, mod, params: Mapping[str, np.ndarray], adapted: dict) -> tuple[dict, dict]:
        """The original's and the adapted model's measurement rows with their latencies from timing
        the two alternately (`Measurer.paired`, once per configuration and budget): the speed-up and
        the fall-back compare these, not the original timed at the start of the run with the
        adapted model timed at its end.  `mod, params`: the adapted model."""
        key = f"paired:{fingerprint(self.mod, self.params)}:{fingerprint(mod, params)}:{self.trials_per_task}pt"
        row = self.store.measured(key)
        if row is None:
            models = {"original": (self.mod, self.params), "adapted": (mod, params)}
            row = self.store.record_measurement(key, kind="paired", **self.measurer.paired(
                models, self.calib[:1], rounds=self.opt.max_rounds))
        note = {"timed": "alternately with the other model (Measurer.paired)"}
        return {**self.baseline, **row["original"], **note}, {**adapted, **row["adapted"], **note}

    # ------------------------------------------------------------------ accuracy and fitting

    def program(self, ckey: str) -> OpProgram:
        if ckey not in self._programs:
            self._programs[ckey] = OpProgram.from_json(self.state["candidates"][ckey]["program"])
        return self._programs[ckey]

    def candidate(self, ckey: str) -> Candidate:
        info = self.state["candidates"][ckey]
        # A distilled variant shares its program (and so its kernel measurement) with the candidate
        # it came from; only its weights differ.
        return Candidate(ckey, info["site"], info["rule"], self.program(ckey),
                         self.store.weights_path(info["site"], info.get("weights", info["hash"])))

    def adapted(self, choices: Mapping[str, str | None]):
        """(mod, params) with each chosen site replaced by its candidate."""
        return build_adapted(self.mod, self.params, self._candidates(choices))

    def _candidates(self, choices: Mapping[str, str | None]) -> list[Candidate]:
        return [self.candidate(c) for c in choices.values() if c is not None]

    def score(self, choices: Mapping[str, str | None]) -> float:
        """Model-level accuracy (or the user's score) of a configuration; computed once, with the
        configuration in its torch form where the model has one (see `predict`)."""
        from ..graph import UnsupportedModelError

        ckey = config_key(choices)
        if ckey not in self.state["scores"]:
            try:
                value = self.evaluate_fn(self.predict(choices))
            except UnsupportedModelError as err:
                self.state["no_torch_form"] = str(err)
                value = self.evaluate_fn(self.predict(choices, form="tvm"))
            self.state["scores"][ckey] = float(value)
            self.save()
        return self.state["scores"][ckey]

    def predict(self, choices: Mapping[str, str | None], form: str = "torch") -> Predict:
        """A configuration as a function of a batch of inputs.

        form 'torch': the adapted model in its trainable torch form (`fit.distill.trainable_model`),
        run in batches.  It computes the function of the TVM build (every candidate's torch module
        is checked against its TVM kernel) about 25x faster than the batch-1 TVM build with default
        schedules, which made scoring the largest cost of a search on a real validation split
        (38 s per score of vgg-style on 5,000 Fashion-MNIST images, 1.5 s in torch form).
        form 'tvm', and any model without a torch form (`state['no_torch_form']` says why): the TVM
        build.  Raises `graph.UnsupportedModelError` when the torch form fails."""
        if form == "torch" and not self.state.get("no_torch_form"):
            from ..fit.distill import trainable_model

            return torch_predictor(trainable_model((self.mod, self.params),
                                                   {c.site: (c.program, c.weights()) for c in self._candidates(choices)}))
        from .. import graph

        return predictor(graph.load_vm(graph.compile_module(*self.adapted(choices))))

    def fit_candidate(self, site_id: str, cand, choices: Mapping[str, str | None]) -> dict:
        """Fit `cand`'s weights to the site's activations in the current adapted model."""
        from .. import graph
        from ..fit import fit

        if self.store.load_weights(site_id, cand.structural_hash) is not None:
            return self.state["candidates"][f"{site_id}:{cand.structural_hash}"]["fit"]
        mod, params = self.adapted(choices)
        x_cur, _ = graph.capture(mod, params, self.calib, [site_id])[site_id]
        _, y_orig = self._calib_activations[site_id]
        res = fit(cand, x_cur, y_orig, original_weights=self.sites[site_id].weights, steps=self.opt.fit_steps,
                  seed=self.opt.seed)
        self.store.save_weights(site_id, cand.structural_hash, res.weights)
        return {"rel_error": res.rel_error, "heldout_rel_error": res.heldout_rel_error,
                "init_rel_error": res.init_rel_error, "seconds": res.seconds}

    def screen_candidates(self, site_id: str, cands: Sequence, choices: Mapping[str, str | None]) -> list[float]:
        """Short layer-wise fits of `cands` at `site_id` in the current adapted model (the site's input
        captured once): each one's relative error after `screen_fit_steps` Adam steps from its
        closed-form initialisation, the bisection's estimate of how well it can fit."""
        from .. import graph
        from ..fit import fit

        mod, params = self.adapted(choices)
        x_cur, _ = graph.capture(mod, params, self.calib, [site_id])[site_id]
        _, y_orig = self._calib_activations[site_id]
        return [fit(c, x_cur, y_orig, original_weights=self.sites[site_id].weights, steps=self.opt.screen_fit_steps,
                    seed=self.opt.seed).rel_error
                for c in tqdm(cands, desc=f"screening {site_id}", leave=False)]

    @functools.cached_property
    def _calib_activations(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every site's (input, output) on the calibration data, captured once, when first needed."""
        from .. import graph

        return graph.capture(self.mod, self.params, self.calib)

    def estimate(self, choices: Mapping[str, str | None]) -> float:
        """Model latency from the replacements' measurements: the original's, minus what each
        replaced site saves in the model (`candidate_latencies`)."""
        saved = sum(self.candidate_measurement(ckey)["saved_s"] for ckey in choices.values() if ckey is not None)
        return self.baseline["median_s"] - saved

    def configurations(self) -> list[Configuration]:
        """Every configuration whose score was computed and whose kernels were all measured."""
        out = []
        for key, acc in self.state["scores"].items():
            choices = json.loads(key)
            if any(self.candidate_measurement(c) is None for c in choices.values()):
                continue  # rejected on accuracy before it was measured
            out.append(Configuration({s: choices.get(s) for s in self.sites}, self.estimate(choices), acc,
                                     origin="original" if not choices else "search"))
        return out

    # ------------------------------------------------------------------ the loop

    def run(self) -> SearchOutcome:
        t0 = time.perf_counter()
        with tqdm(total=3 + len(self.strategies), desc="GOS", unit="phase") as bar:
            bar.set_postfix_str("baseline: tune + measure the original model")
            self.baseline = self.model_latency("original", self.mod, self.params)
            self.original_score = self.score({})
            bar.update()

            bar.set_postfix_str("complexity: each site's share of the tuned model")
            self.site_latency = self.site_costs()
            for s, site in self.sites.items():
                lat = self.site_latency[s]
                self.state["decisions"].setdefault(s, vars(Decision(s, site.kind, site.flops, lat,
                                                                    lat / self.baseline["median_s"])))
            self.save()
            bar.update()

            chosen, configs, front = self._rounds(bar)

            bar.set_postfix_str("final: tune + measure the chosen configuration")
            self._sync_decisions(chosen)
            adapted = self.baseline
            if any(chosen.choices.values()):
                mod, params = self.adapted(chosen.choices)
                adapted = self.model_latency("adapted", mod, params)
                self.baseline, adapted = self.side_by_side(mod, params, adapted)
                if speedup(self.baseline, adapted)[0] <= 1.0:
                    chosen, adapted = fall_back_to_original(self.state, configs, chosen, adapted, self.baseline)
            bar.update()
        self.state["phase"] = "done"
        self.save()
        used = {c for config in configs for c in config.choices.values() if c is not None}
        return SearchOutcome(
            baseline=self.baseline, adapted=adapted, original_score=self.original_score,
            adapted_score=chosen.accuracy, configurations=configs, front=front, chosen=chosen,
            site_latency=dict(self.site_latency),
            decisions=[Decision.from_state(d) for d in self.state["decisions"].values()],
            candidates={c: self.candidate(c) for c in sorted(used)}, fallback=self.state.get("fallback"),
            distillation=self.distiller.summary(),
            seconds=time.perf_counter() - t0, device_measurements=len(self.store.measurements),
            new_measurements=list(self.store.new_measurements))

    def _rounds(self, bar) -> tuple[Configuration, list[Configuration], list[Configuration]]:
        """The strategies, then the chosen configuration's final distillation, in up to `rounds`
        rounds: the final distillation recovers accuracy, and the next round starts from the
        distilled configuration and spends what is left of the budget on the sites still kept.
        Stops early when a round replaces nothing new or no site is left.  Returns (chosen,
        configurations, Pareto front)."""
        choices: dict[str, str | None] = {}
        rounds = self.state.setdefault("rounds", [])
        for self.round in range(self.opt.rounds):
            if self.round:
                if not (chosen.accuracy > self.floor and any(c is None for c in chosen.choices.values())):
                    break
                choices = {s: c for s, c in chosen.choices.items() if c is not None}
                bar.total += len(self.strategies)
            for strategy in self.strategies:
                bar.set_postfix_str(f"{strategy.name}: choose replacements" + (f" (round {self.round + 1})" if self.round else ""))
                choices = strategy.run(self, choices)
                bar.update()
            configs = self.configurations()
            front = pareto_front(configs)
            before = chosen.key if self.round else None
            chosen = choose(front, self.floor)
            self.state.pop("final_distillation", None)  # the report's is the last round's
            if any(chosen.choices.values()) and self.distiller.enabled and self.opt.final_distill_steps > 0:
                chosen, configs, front = self.distiller.final(chosen)
            entry = {"round": self.round + 1, "chosen": chosen.label, "score": chosen.accuracy,
                     "replaced": sum(c is not None for c in chosen.choices.values()),
                     "final_distillation": self.state.get("final_distillation")}
            rounds[self.round:] = [entry]
            self.save()
            if chosen.key == before:
                break
        return chosen, configs, front

    def _sync_decisions(self, chosen: Configuration) -> None:
        """Decisions name the candidate keys of the chosen configuration (distillation renames them).
        A decision an earlier run reverted to the original (`fall_back_to_original`) gets its
        replacement back: this run measures the configuration again and falls back again if it
        must."""
        self.state.pop("fallback", None)
        for site, ckey in chosen.choices.items():
            if ckey is not None and site in self.state["decisions"]:
                decision = self.state["decisions"][site]
                decision["choice"] = ckey
                if "kernel_reason" in decision:
                    decision.update(rule=self.state["candidates"][ckey]["rule"], reason=decision.pop("kernel_reason"))


_fingerprint = fingerprint  # its former name

__all__ = ["GOSearch", "SearchOptions", "Decision", "SearchOutcome", "fall_back_to_original"]
