"""The GOS loop: operator replacement jointly with schedules, measured on the device.

    1. baseline     tune the original model with MetaSchedule (budget `trials`), compile it with
                    the database applied, measure it end to end on the device; its accuracy.
    2. complexity   tune and measure every site's operator as a kernel: each site's share of the
                    model's latency.
    3. greedy       take the least efficient remaining site (largest measured latency), generate
                    its candidates, rank them with the XGBoost latency model (trained online on
                    this run's measurements), fit their weights to the site's activations in the
                    *current* adapted model, check model-level accuracy, tune and measure the
                    accurate ones on the device, and keep the fastest one that beats the original.
    4. evolution    mutate and recombine the per-site choices (a replacement at one site changes
                    what is best at the next), evaluating each combination's accuracy.
    5. final        Pareto front of (latency, accuracy); the fastest configuration within the
                    accuracy budget is tuned with the same budget as the original, compiled and
                    measured end to end on the device.

Every device measurement is written to the work directory's log before it is used, and
every phase checks the log first, so a killed run resumes without measuring anything twice.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..instructions import OpProgram, to_te
from .cost_model import LatencyModel
from .pareto import Configuration, pareto_front
from .store import WorkDir

Predict = Callable[[np.ndarray], np.ndarray]
EvalFn = Callable[[Predict], float]


@dataclass
class SearchOptions:
    """Budgets of one search (see `gos_tvm.tune`)."""

    trials: int = 64                 # MetaSchedule trials for each whole model (original and adapted)
    kernel_trials: int = 16          # MetaSchedule trials for each site / candidate kernel
    max_sites: int | None = None     # replace at most this many sites (None: all)
    tries_per_site: int = 6          # candidates fitted and accuracy-checked per site (bisection steps)
    measure_per_site: int = 2        # accurate candidates tuned and measured per site
    max_flops_ratio: float = 0.6     # candidates keep at most this share of the site's FLOPs
    depth: int = 2                   # rewrite chains up to this length (2: compositions)
    fit_steps: int = 150
    calib_samples: int = 256
    generations: int = 2
    population: int = 4
    repeat: int = 10                 # end-to-end timings
    seed: int = 0


@dataclass
class Decision:
    """What the search did at one site."""

    site: str
    kind: str
    flops: int
    latency_s: float | None          # the original operator's tuned kernel latency on the device
    share: float | None              # its share of the original model's measured latency
    choice: str | None = None        # candidate key, or None: kept
    rule: str = "original"
    reason: str = ""
    tried: list[dict] = field(default_factory=list)


class GOSearch:
    """One GOS run: holds the model, the device, the work directory and the search state."""

    def __init__(self, mod, params: Mapping[str, np.ndarray], device, *, calib_data: np.ndarray,
                 evaluate: EvalFn, accuracy_budget: float, work_dir: str | Path, options: SearchOptions,
                 tracker: tuple[str, int] | None = None, key: str | None = None,
                 warm_start: str | Path | None = None):
        from .. import graph
        from ..hw import resolve_preset

        self.mod, self.params = mod, dict(params)
        self.device = resolve_preset(device)
        self.calib = np.asarray(calib_data, dtype="float32")[: options.calib_samples]
        self.evaluate_fn = evaluate
        self.budget = float(accuracy_budget)
        self.tracker, self.key = tracker, key  # set by `tune` once the device pool is up
        self.opt = options
        self.analysis = graph.analyze(mod, self.params)
        self.sites = {s.id: s for s in self.analysis.sites}
        identity = {"model": _fingerprint(mod, self.params), "device": self.device.name,
                    "target": str(self.device.target), "seed": options.seed}
        if self.device.emulated:  # emulation timings must never be resumed as the board's
            identity["emulated"] = True
        self.store = WorkDir(work_dir, identity)
        self.state = self.store.load_state() or {"scores": {}, "candidates": {}, "decisions": {},
                                                 "configs": {}, "phase": "start"}
        self.cost_model = LatencyModel(self.device.name, self.store.path / "cost_model.json", seed=options.seed)
        if warm_start:
            self.cost_model.load(warm_start)
        self._builder = None
        self._runner = None
        self._databases: dict[str, Any] = {}
        self._programs: dict[str, OpProgram] = {}

    # ------------------------------------------------------------------ infrastructure

    def builder(self):
        if self._builder is None:
            from ..hw import WarmBuilder

            self._builder = WarmBuilder(self.device)
        return self._builder

    def runner(self):
        if self._runner is None:
            from ..hw import TrackerRunner

            self._runner = TrackerRunner(self.tracker, self.key)
        return self._runner

    def database(self, name: str):
        if name not in self._databases:
            from ..hw import open_database

            self._databases[name] = open_database(str(self.store.database_dir / name))
        return self._databases[name]

    def close(self) -> None:
        for obj in (self._builder, self._runner):
            if obj is not None and hasattr(obj, "close"):
                obj.close()
        self._builder = self._runner = None

    def save(self) -> None:
        self.store.save_state(self.state)

    # ------------------------------------------------------------------ measurements

    def kernel_latencies(self, programs: Mapping[str, OpProgram]) -> dict[str, float]:
        """Tuned latency (s) of each program as a kernel on the device; measured once, ever."""
        from ..hw import tune_primfuncs
        from ..hw.tuning import best_correct_record, database_records

        out, todo = {}, {}
        for name, program in programs.items():
            key = f"kernel:{program.structural_hash}"
            row = self.store.measured(key)
            if row is not None:
                out[name] = row["latency_s"]
            else:
                todo[name] = program
        if todo:
            db = self.database("kernels")
            funcs = {f"k{p.structural_hash}": to_te(p) for p in todo.values()}
            # A run killed mid-tuning left records in the database: only the rest of the budget is spent.
            done = min(len(database_records(db, _kernel_mod(f, n))) for n, f in funcs.items())
            trials = max(self.opt.kernel_trials - done, 0)
            if trials:
                tune_primfuncs(funcs, self.device, trials_per_task=trials,
                               trials_per_iter=min(8, trials), database=db, builder=self.builder(),
                               runner=self.runner(), seed=self.opt.seed,
                               work_dir=str(self.store.database_dir / "kernels"))
            remeasure_best(db, [_kernel_mod(f, n) for n, f in funcs.items()], self.device.target,
                           self.builder(), self.runner())
            done_hashes: dict[str, float] = {}  # identical sites (repeated blocks) share one kernel
            for name, program in todo.items():
                fname = f"k{program.structural_hash}"
                if program.structural_hash in done_hashes:
                    out[name] = done_hashes[program.structural_hash]
                    continue
                # The fastest schedule that computes the kernel (a few of MetaSchedule's do not).
                lat, _ = best_correct_record(db, _kernel_mod(funcs[fname], fname))
                self.store.record_measurement(f"kernel:{program.structural_hash}", kind="kernel",
                                              latency_s=lat, program=program.name, trials=self.opt.kernel_trials)
                if math.isfinite(lat):
                    self.cost_model.add(program, lat)
                out[name] = done_hashes[program.structural_hash] = lat
        return out

    def model_latency(self, name: str, mod, params) -> dict:
        """Tune (budget `trials`), compile with the database applied, and measure end to end."""
        from ..hw import compile_tuned, measure_module, tune_module
        from ..hw.tuning import prepare_relax

        key = f"model:{name}:{_fingerprint(mod, params)}"
        row = self.store.measured(key)
        if row is not None:
            return row
        from tvm.s_tir import meta_schedule as ms

        db = self.database(name)
        prepared = prepare_relax(mod, params, self.device.target)
        n_tasks = len(ms.relax_integration.extract_tasks(prepared, self.device.target))  # before tuning
        done = len(db.get_all_tuning_records())
        if self.opt.trials - done > 0:
            # MetaSchedule's scheduler first visits every task once with one batch: a batch small
            # enough for the budget to reach every task, or the last kernels stay untuned.
            per_iter = max(2, min(16, self.opt.trials // max(n_tasks, 1)))
            tune_module(mod, params, self.device, builder=self.builder(), runner=self.runner(),
                        trials=self.opt.trials - done, trials_per_iter=per_iter, database=db,
                        work_dir=str(self.store.database_dir / name), seed=self.opt.seed)
        tasks = ms.relax_integration.extract_tasks(prepared, self.device.target)
        from ..hw import TrackerRunner

        fresh = TrackerRunner(self.tracker, self.key)  # new measuring processes, as for the end-to-end run
        try:
            remeasure_best(db, [t.dispatched[0] for t in tasks], self.device.target, self.builder(), fresh)
        finally:
            fresh.close()
        executable = compile_tuned(mod, params, self.device, db)
        x = self.calib[:1]
        stats = measure_module(executable, self.device, self.tracker, self.key, [x], repeat=self.opt.repeat,
                               number=5, fetch_outputs=True)
        kernels = _database_kernel_sum(prepared, self.device.target, db)
        return self.store.record_measurement(
            key, kind="model", name=name, **stats.to_json(), kernel_sum_s=kernels, tasks=n_tasks,
            trials=len(db.get_all_tuning_records()), outputs_head=np.ravel(stats.outputs[0])[:16].tolist())

    # ------------------------------------------------------------------ accuracy and fitting

    def adapted(self, choices: Mapping[str, str | None]):
        """(mod, params) with each chosen site replaced by its candidate."""
        from .. import graph

        repl = {}
        for site, ckey in choices.items():
            if ckey is None:
                continue
            info = self.state["candidates"][ckey]
            weights = self.store.load_weights(site, info["hash"])
            repl[site] = (self.program(ckey), weights)
        if not repl:
            return self.mod, self.params
        return graph.substitute(self.mod, self.params, repl)

    def program(self, ckey: str) -> OpProgram:
        if ckey not in self._programs:
            self._programs[ckey] = OpProgram.from_json(self.state["candidates"][ckey]["program"])
        return self._programs[ckey]

    def score(self, choices: Mapping[str, str | None]) -> float:
        """Model-level accuracy (or the user's score) of a configuration; computed once."""
        ckey = _config_key(choices)
        if ckey not in self.state["scores"]:
            from .. import graph

            mod, params = self.adapted(choices)
            vm = graph.load_vm(graph.compile_module(mod, params))
            self.state["scores"][ckey] = float(self.evaluate_fn(_predictor(vm)))
            self.save()
        return self.state["scores"][ckey]

    def fit_candidate(self, site_id: str, cand, choices: Mapping[str, str | None]) -> dict:
        """Fit `cand`'s weights to the site's activations in the current adapted model."""
        from .. import graph
        from ..fit import fit

        site = self.sites[site_id]
        weights = self.store.load_weights(site_id, cand.structural_hash)
        if weights is not None:
            return self.state["candidates"][f"{site_id}:{cand.structural_hash}"]["fit"]
        mod, params = self.adapted(choices)
        x_cur, _ = graph.capture(mod, params, self.calib, [site_id])[site_id]
        _, y_orig = self._calib_activations[site_id]
        res = fit(cand, x_cur, y_orig, original_weights=site.weights, steps=self.opt.fit_steps,
                  seed=self.opt.seed)
        self.store.save_weights(site_id, cand.structural_hash, res.weights)
        return {"rel_error": res.rel_error, "heldout_rel_error": res.heldout_rel_error,
                "init_rel_error": res.init_rel_error, "seconds": res.seconds}

    @functools.cached_property
    def _calib_activations(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every site's (input, output) on the calibration data, captured once, when first needed."""
        from .. import graph

        return graph.capture(self.mod, self.params, self.calib)

    # ------------------------------------------------------------------ phases

    def run(self) -> dict:
        opt = self.opt
        t0 = time.perf_counter()
        with tqdm(total=5, desc="GOS", unit="phase") as bar:
            bar.set_postfix_str("baseline: tune + measure the original model")
            baseline = self.model_latency("original", self.mod, self.params)
            original_score = self.score({})
            bar.update()

            bar.set_postfix_str("complexity: tune each site's kernel")
            site_lat = self.kernel_latencies({s: site.program for s, site in self.sites.items()})
            for s, site in self.sites.items():
                self.state["decisions"].setdefault(s, vars(Decision(
                    s, site.kind, site.flops, site_lat[s], site_lat[s] / baseline["median_s"])))
            self.save()
            bar.update()

            bar.set_postfix_str("greedy: replace sites, least efficient first")
            choices = self._greedy(original_score, site_lat)
            bar.update()

            bar.set_postfix_str("evolution: refine the per-site choices")
            self._evolve(original_score, site_lat, baseline, choices)
            bar.update()

            bar.set_postfix_str("final: tune + measure the chosen configuration")
            configs = self.configurations(site_lat, baseline)
            front = pareto_front(configs)
            floor = original_score - self.budget
            feasible = [c for c in front if c.accuracy >= floor - 1e-12]
            chosen = min(feasible, key=lambda c: c.latency_s)
            mod, params = self.adapted(chosen.choices)
            adapted = (self.model_latency("adapted", mod, params) if any(chosen.choices.values())
                       else baseline)
            if any(chosen.choices.values()) and adapted["median_s"] >= baseline["median_s"]:
                chosen, adapted = self._fall_back_to_original(configs, chosen, adapted, baseline)
            bar.update()
        self.state["phase"] = "done"
        self.save()
        return {"baseline": baseline, "adapted": adapted, "original_score": original_score,
                "adapted_score": chosen.accuracy, "configs": configs, "front": front, "chosen": chosen,
                "site_latency": site_lat, "seconds": time.perf_counter() - t0}

    def _greedy(self, original_score: float, site_lat: Mapping[str, float]) -> dict[str, str | None]:
        from ..space import candidates as space_candidates

        opt = self.opt
        choices: dict[str, str | None] = dict(self.state.get("greedy_choices", {}))
        order = sorted(self.sites, key=lambda s: -site_lat[s] if math.isfinite(site_lat[s]) else 0)
        if opt.max_sites is not None:
            order = order[: opt.max_sites]
        done = set(self.state.get("greedy_done", []))
        floor = original_score - self.budget
        for site_id in tqdm(order, desc="sites", leave=False):
            if site_id in done:
                continue
            site = self.sites[site_id]
            decision = self.state["decisions"][site_id]
            cands = space_candidates(site.program, depth=opt.depth, max_flops_ratio=opt.max_flops_ratio,
                                     include_original=False)
            if not cands:
                decision["reason"] = f"no candidate within the FLOP budget; per family: {cands.why_none()}"
                done.add(site_id)
                continue
            ranking, how = self.cost_model.rank([c.program for c in cands])
            decision["ranking"] = how
            accurate = []  # (position in the ranking, candidate, key)

            def attempt(pos: int) -> bool:
                cand = cands[ranking[pos]]
                ckey = f"{site_id}:{cand.structural_hash}"
                self.state["candidates"].setdefault(ckey, {
                    "site": site_id, "hash": cand.structural_hash, "rule": cand.rule,
                    "params": _jsonable(cand.rule_params), "flops": cand.flops,
                    "program": cand.program.to_json()})
                info = self.state["candidates"][ckey]
                if "fit" not in info:
                    info["fit"] = self.fit_candidate(site_id, cand, choices)
                    self.save()
                acc = self.score({**choices, site_id: ckey})
                ok = acc >= floor
                tried = {"candidate": ckey, "rule": cand.rule, "params": info["params"], "flops": cand.flops,
                         "rank": pos, "fit_rel_error": info["fit"]["rel_error"], "score": acc,
                         "verdict": "accurate" if ok else f"rejected: score {acc:.4f} below {floor:.4f}"}
                decision["tried"] = [t for t in decision["tried"] if t["candidate"] != ckey] + [tried]
                if ok:
                    accurate.append((pos, cand, ckey))
                return ok

            # Accuracy grows, roughly, with cost: bisect the latency ranking for the cheapest
            # candidate that keeps the score within the budget, starting from the most capable.
            lo, hi, tries = 0, len(ranking) - 1, 1
            if attempt(hi):
                while lo < hi and tries < opt.tries_per_site:
                    mid = (lo + hi) // 2
                    tries += 1
                    if attempt(mid):
                        hi = mid
                    else:
                        lo = mid + 1
            accurate = [(c, k) for _, c, k in sorted(accurate, key=lambda a: a[0])[: opt.measure_per_site]]
            if accurate:
                lat = self.kernel_latencies({ck: c.program for c, ck in accurate})
                best = min(accurate, key=lambda cc: lat[cc[1]])
                for t in decision["tried"]:
                    if t["candidate"] in lat:
                        t["latency_s"] = lat[t["candidate"]]
                if lat[best[1]] < site_lat[site_id]:
                    choices[site_id] = best[1]
                    decision.update(choice=best[1], rule=best[0].rule,
                                    reason=f"{best[0].rule}: {site_lat[site_id] / lat[best[1]]:.2f}x faster kernel "
                                           f"({site_lat[site_id] * 1e6:.1f} -> {lat[best[1]] * 1e6:.1f} us), "
                                           f"score {self.score({**choices}):.4f}")
                else:
                    decision["reason"] = (f"kept: the fastest accurate candidate ({best[0].rule}, "
                                          f"{lat[best[1]] * 1e6:.1f} us) is not faster than the original "
                                          f"({site_lat[site_id] * 1e6:.1f} us)")
            else:
                decision["reason"] = (f"kept: none of the {len(decision['tried'])} candidates tried kept the "
                                      f"score within the budget")
            done.add(site_id)
            self.state["greedy_done"] = sorted(done)
            self.state["greedy_choices"] = choices
            self.save()
        return choices

    def _evolve(self, original_score: float, site_lat, baseline, greedy: Mapping[str, str | None]) -> None:
        """A small evolutionary search over per-site choices, seeded with the greedy result."""
        opt = self.opt
        options: dict[str, list[str | None]] = {s: [None] for s in self.sites}
        for ckey, info in self.state["candidates"].items():
            if self.store.measured(f"kernel:{info['hash']}") is not None:
                options[info["site"]].append(ckey)
        free = [s for s, o in options.items() if len(o) > 1]
        if not free:
            return
        rng = random.Random(opt.seed)
        population = [dict(greedy)]
        for gen in tqdm(range(opt.generations), desc="evolution", leave=False):
            if str(gen) in self.state.get("generations", {}):
                population = [dict(c) for c in self.state["generations"][str(gen)]]
                continue
            children = []
            for _ in range(opt.population):
                a, b = rng.choice(population), rng.choice(population)
                child = {s: (a if rng.random() < 0.5 else b).get(s) for s in self.sites}  # crossover
                s = rng.choice(free)
                child[s] = rng.choice(options[s])                                        # mutation
                children.append({k: v for k, v in child.items() if v is not None})
            for child in children:
                self.score(child)
            ranked = sorted({_config_key(c): c for c in population + children}.values(),
                            key=lambda c: self._fitness(c, original_score, site_lat, baseline))
            population = ranked[: max(2, opt.population // 2)]
            self.state.setdefault("generations", {})[str(gen)] = population
            self.save()

    def _fall_back_to_original(self, configs, chosen: Configuration, adapted: dict,
                               baseline: dict) -> tuple[Configuration, dict]:
        """The chosen configuration was estimated faster from its kernels but measured slower end to
        end (the whole-model budget spread over other kernels, other fusion): never hand back a
        slower model.  The original is returned; the decisions say why."""
        why = (f"kept: the adapted model ({chosen.key}) measured {adapted['median_s'] * 1e3:.3f} ms end to end, "
               f"not faster than the original's {baseline['median_s'] * 1e3:.3f} ms; the original is returned")
        for site, ckey in chosen.choices.items():
            if ckey is not None:
                decision = self.state["decisions"][site]
                decision.update(choice=None, rule="original",
                                reason=f"{why} (the site's kernel alone: {decision['reason']})")
        self.state["fallback"] = {"rejected": chosen.key, "adapted": adapted, "baseline": baseline}
        original = next(c for c in configs if not any(c.choices.values()))
        return original, baseline

    def _fitness(self, choices, original_score, site_lat, baseline) -> tuple:
        acc = self.score(choices)
        feasible = acc >= original_score - self.budget
        return (not feasible, self._estimate(choices, site_lat, baseline), -acc)

    def _estimate(self, choices: Mapping[str, str | None], site_lat, baseline) -> float:
        """Model latency from kernel measurements: the original's, minus what the replaced sites save."""
        saved = 0.0
        for site, ckey in choices.items():
            if ckey is not None:
                cand = self.store.measured(f"kernel:{self.state['candidates'][ckey]['hash']}")
                saved += site_lat[site] - cand["latency_s"]
        return baseline["median_s"] - saved

    def configurations(self, site_lat, baseline) -> list[Configuration]:
        """Every configuration whose score was computed and whose kernels were all measured."""
        out = []
        for key, acc in self.state["scores"].items():
            choices = _parse_config_key(key)
            if any(self.store.measured(f"kernel:{self.state['candidates'][c]['hash']}") is None
                   for c in choices.values()):
                continue  # rejected on accuracy before its kernel was measured
            out.append(Configuration({s: choices.get(s) for s in self.sites},
                                     self._estimate(choices, site_lat, baseline), acc,
                                     origin="original" if not choices else "search"))
        return out


# ---------------------------------------------------------------------------------------- helpers


def _config_key(choices: Mapping[str, str | None]) -> str:
    return json.dumps({k: v for k, v in sorted(choices.items()) if v is not None}, sort_keys=True)


def _parse_config_key(key: str) -> dict[str, str]:
    return json.loads(key)


def _fingerprint(mod, params: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256(mod.script(show_meta=False).encode())
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k]).tobytes())
    return h.hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v


def _predictor(vm) -> Predict:
    """Runs a batch-1 Relax VM over a batch of inputs."""
    import tvm

    def predict(x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(len(x)):
            out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[i: i + 1], dtype="float32")))
            if not hasattr(out, "numpy"):  # a tuple of outputs: the model's prediction is the first
                out = out[0]
            outs.append(out.numpy())
        return np.concatenate(outs)

    return predict


def _kernel_mod(func, symbol: str = "main"):
    """The workload module MetaSchedule stores for a kernel tuned under the name `symbol`."""
    import tvm

    if isinstance(func, tvm.IRModule):
        return func
    return tvm.IRModule({"main": func.with_attr("global_symbol", symbol)})


def remeasure_best(database, workloads: Sequence, target, builder, runner) -> int:
    """Measure each workload's best schedule again, in one batch, and commit the result as a
    new record.  Returns how many were re-measured.

    Why: on a device that is also the tuning host (this machine as `local`), candidates are
    timed while MetaSchedule's search and builders run beside them; the records came out
    2-3x slower than the same kernels timed alone.  Re-timing the winners once tuning is
    over gives records that agree with the end-to-end measurement.
    """
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.database import TuningRecord
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    best = []
    for mod in workloads:
        mod = _kernel_mod(mod)
        if not database.has_workload(mod):
            continue
        top = database.get_top_k(database.commit_workload(mod), 1)
        if top:
            best.append(top[0])
    if not best:
        return 0
    mods = []
    for rec in best:
        sch = Schedule(rec.workload.mod)
        rec.trace.apply_to_schedule(sch, remove_postproc=False)
        mods.append(sch.mod)
    built = builder.build([BuilderInput(m, target) for m in mods])
    todo = [(rec, b) for rec, b in zip(best, built) if b.error_msg is None]
    futures = runner.run([RunnerInput(b.artifact_path, "cpu", list(rec.args_info)) for rec, b in todo])
    count = 0
    for (rec, _), fut in zip(todo, futures):
        res = fut.result()
        if res.error_msg is None and res.run_secs:
            database.commit_tuning_record(TuningRecord(rec.trace, rec.workload, [float(x) for x in res.run_secs],
                                                       rec.target, list(rec.args_info)))
            count += 1
    return count


def _database_kernel_sum(prepared, target, database) -> float | None:
    """What the database's best records add up to for one run of the module: sum over its tuning
    tasks of (best measured latency x times the task runs)."""
    from tvm.s_tir import meta_schedule as ms

    from ..hw.tuning import best_record

    total = 0.0
    for task in ms.relax_integration.extract_tasks(prepared, target):
        lat, _ = best_record(database, task.dispatched[0])
        if not math.isfinite(lat):
            return None  # a kernel without a record: no database estimate for the module (JSON has no NaN)
        total += task.weight * lat
    return total
