"""Where the search's latencies come from: a `Measurer` tunes and times kernels and whole models.

    TunedMeasurer   the real device: MetaSchedule tuning through a builder and an RPC runner into
                    the run's one JSON database (per-task budgets) of the model's tasks and of
                    the new tasks a replacement brings into it, tuned records re-timed and
                    checked, models compiled with their database applied and timed end to end.
                    Its parts (`TuningParts`: builder, runner factory, database factory,
                    MetaSchedule cost model) are swappable.
    FakeMeasurer    a fake device, like MetaSchedule's DummyBuilder/DummyRunner: deterministic
                    latencies from a formula, no tuning, no tracker, so the search's strategies,
                    bisection, fall-back, Pareto front and resume are unit-tested in seconds.

A site and its candidates are priced as the model runs them (`Measurer.replacements`): by the
tasks MetaSchedule extracts from the model with the site replaced (`hw.tuning.task_delta`), so
a kernel's fused epilogue, its layout and the records it shares with identical layers count.

The search caches what a measurer returns in the work directory's log, so a measurer is asked
about each replacement and each model at most once per work directory and budget.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
import math
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .results import SearchOptions


Model = tuple[Any, Mapping[str, np.ndarray]]


class Measurer(ABC):
    """Latencies of kernels and whole models on one device (see the module docstring)."""

    def replacements(self, original: Model, variants: Mapping[str, Model], *,
                     trials_per_task: int | None) -> dict[str, dict]:
        """What each variant -- the original model with one site replaced -- changes in the model as
        it is compiled (`hw.tuning.task_delta` of their extracted tasks).  Per variant:

        removed_s  what the original's tasks it no longer runs cost (their best correct records,
                   from the original's tuning): the site as the model runs it, fused epilogue,
                   layout and shared records included;
        added_s    what its new tasks cost once each is tuned up to `trials_per_task` measured
                   candidates (inf where one has no correct schedule); trials_per_task=None tunes
                   nothing and gives None (a site's own cost needs only `removed_s`);
        removed, added  the task names."""
        from ..hw.tuning.delta import TaskDelta, task_delta, workload_key

        before = self._original_tasks(original)
        deltas = {name: task_delta(before, self.tasks(model)) for name, model in variants.items()}
        known = {workload_key(t): t for d in deltas.values() for t, _ in d.removed}
        new = {workload_key(t): t for d in deltas.values() for t, _ in d.added} if trials_per_task is not None else {}
        latency = self.task_latencies(list(known.values()), list(new.values()), trials_per_task)
        price = lambda task: latency[workload_key(task)]  # noqa: E731
        return {name: {"removed_s": TaskDelta.seconds(d.removed, price),
                       "added_s": TaskDelta.seconds(d.added, price) if trials_per_task is not None else None,
                       "removed": TaskDelta.names(d.removed), "added": TaskDelta.names(d.added)}
                for name, d in deltas.items()}

    @abstractmethod
    def task_latencies(self, known: Sequence[Any], new: Sequence[Any], trials_per_task: int | None) -> dict[int, float]:
        """Seconds per call of each extracted task, by `hw.tuning.workload_key`: `known` ones (the
        original's, already tuned) from their records, `new` ones after tuning each up to
        `trials_per_task` trials; inf for a task without a correct schedule."""

    def target(self) -> Any:
        """The target whose tasks are extracted (`replacements`)."""
        from ..targets import cpu_target

        return cpu_target()

    def tasks(self, model: Model) -> list:
        """MetaSchedule's tuning tasks of `(mod, params)` as compiled for `target()` (under the
        current `graph.conv_layout`)."""
        from tvm.s_tir import meta_schedule as ms

        from ..hw.tuning import prepare_relax

        target = self.target()
        return list(ms.relax_integration.extract_tasks(prepare_relax(*model, target), target))

    def _original_tasks(self, original: Model) -> list:
        # The search asks about the same original many times; extracting its tasks takes ~1 s.
        cached = getattr(self, "_original", None)
        if cached is None or cached[0] is not original[0]:
            self._original = cached = (original[0], self.tasks(original))
        return cached[1]

    @abstractmethod
    def model(self, name: str, mod: Any, params: Mapping[str, np.ndarray], example: np.ndarray, *,
              trials_per_task: int) -> dict:
        """Tune every task of `(mod, params)` up to `trials_per_task` trials (tasks the database
        already holds are not tuned again), compile and time it end to end on `example`.  Returns
        `LatencyStats.to_json()` fields plus `rounds`, `spread`, `stable` (see
        `measure_until_stable`), `kernel_sum_s` (what the tuned records add up to, or None),
        `tasks`, `trials`, `trials_per_task`, `per_task` (`gos_tvm.hw.tuning.task_table` rows),
        `tuned_tasks` (the tasks tuned by this call) and `outputs_head` (the first outputs)."""

    @abstractmethod
    def paired(self, models: Mapping[str, tuple[Any, Mapping[str, np.ndarray]]], example: np.ndarray, *,
               rounds: int) -> dict[str, dict]:
        """Time models that `model` already tuned alternately, `rounds` times round-robin, and return
        each one's `LatencyStats.to_json()` fields over all its timings plus `rounds`, `spread` and
        `stable` (whether the spread is at most `max_spread`).
        Two models are compared this way, not from timings taken minutes apart."""

    def database(self) -> Any:
        """The run's one tuning database (None where the measurer keeps none)."""
        return None

    def close(self) -> None:
        """Release processes and connections (a later call starts them again)."""

    def __enter__(self) -> "Measurer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- real device


def _warm_builder(device: Any) -> Any:
    from ..hw import WarmBuilder

    return WarmBuilder(device)


def _tracker_runner(tracker: tuple[str, int], key: str) -> Any:
    from ..hw import TrackerRunner

    return TrackerRunner(tracker, key)


def _json_database(path: Path) -> Any:
    from ..hw import open_database

    return open_database(str(path))


@dataclass
class TuningParts:
    """The MetaSchedule parts a `TunedMeasurer` tunes with; the defaults are gos_tvm's own.

    builder(device) -> Builder;  runner(tracker, key) -> Runner (also called for the fresh runner
    that re-times a model's best records);  database(directory) -> the run's one Database;  cost_model() ->
    MetaSchedule CostModel for each tuning session (None: one `gos_tvm.hw.tuning.default_cost_model`
    shared by all the run's sessions, so the samples of the original's tuning guide the searches of
    the candidates' tasks).
    """

    builder: Callable[[Any], Any] = _warm_builder
    runner: Callable[[tuple[str, int], str], Any] = _tracker_runner
    database: Callable[[Path], Any] = _json_database
    cost_model: Optional[Callable[[], Any]] = None


def relative_spread(raw: Sequence[float]) -> float:
    """(p75 - p25) / median of timings: the spread of the middle half, robust to the odd outlier
    a shared host adds."""
    q25, q50, q75 = np.percentile(np.asarray(raw, dtype=float), [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else math.inf


def speedup(original: Mapping[str, Any], adapted: Mapping[str, Any]) -> tuple[float, str]:
    """(original / adapted latency, the statistic it compares) for two measurement rows.

    Medians when both timings are stable.  This host is shared and bimodal: for seconds at a time
    every kernel runs ~2x slower, so two models timed alternately get different shares of slow
    turns and their medians compare host modes, not models (resnet18-style on Fashion-MNIST,
    timed alternately in 4 rounds: original 0.73-0.81 ms in its slow turns and 0.35 ms in its fast
    ones, adapted 0.58-0.62 and 0.30 ms; medians 0.413 vs 0.466 ms, "slower", minima 0.350 vs
    0.285 ms).  A model cannot run faster than it can, so when either timing is not stable the
    minima compare both models in the host's fast mode."""
    if original.get("stable", True) and adapted.get("stable", True):
        return original["median_s"] / adapted["median_s"], "median"
    return original["min_s"] / adapted["min_s"], "min"


# Seconds the driver waits between running TVM kernels itself (`compile_tuned` checks every tuned
# record on random inputs) and timing the device.  Measured with the README main command's
# adapted.so on a one-server local pool: 77-83 us when timed after a 1 s pause, 190-224 us when
# timed right after the driver ran 2,000 parallel kernels, 83 us with those kernels and then this
# pause.  A Python busy loop (here or in a child process) or PyTorch's two threads here did not slow
# it; a 0.3 s pause recovered half.  Only TVM's thread pool in the driver does, for under a second.
SETTLE_S = 1.0


def measure_until_stable(time_once: Callable[[int], Any], *, max_spread: float, max_rounds: int) -> tuple[Any, dict]:
    """Call `time_once(round)` (a `LatencyStats` of one round of timings) until the spread of all
    timings so far (`relative_spread`) is at most `max_spread`, or `max_rounds` rounds were timed.

    Returns (the first round's stats, which carries the outputs; a dict of `LatencyStats.to_json()`
    fields over all rounds plus `rounds`, `spread` and `stable`: whether the spread got small)."""
    from ..hw import LatencyStats

    raw: list[float] = []
    first = None
    for rnd in range(max_rounds):
        stats = time_once(rnd)
        first = first or stats
        raw += [float(x) for x in stats.raw]
        spread = relative_spread(raw)
        if spread <= max_spread:
            break
    merged = LatencyStats.from_raw(raw, number=first.number, device=first.device, emulated=first.emulated)
    return first, {**merged.to_json(), "rounds": rnd + 1, "spread": spread, "stable": spread <= max_spread}


class TunedMeasurer(Measurer):
    """The device behind an RPC tracker, measured through MetaSchedule (see the module docstring).

    Everything a run tunes -- the original model, the site kernels, the candidate kernels, the
    adapted model -- goes into one JSON database in `database_dir`: a workload already tuned is
    not tuned again (the adapted model's unchanged tasks keep exactly the original's records).
    The builder and runner are started when first needed and live until `close` (a resumed search
    that measures nothing starts neither)."""

    def __init__(self, device: Any, tracker: tuple[str, int] | None, key: str | None, database_dir: Path,
                 options: SearchOptions, parts: TuningParts | None = None,
                 warm_start_database: str | Path | None = None):
        self.device, self.tracker, self.key = device, tracker, key
        self.database_dir, self.opt = Path(database_dir), options
        self.parts = parts or TuningParts()
        self.warm_start_database = None if warm_start_database is None else Path(warm_start_database)
        self._builder = self._runner = None
        self._database: Any = None
        self._correct: dict[int, float] = {}  # workload key -> its best correct record's latency
        self._shared_cost_model: Any = None

    def builder(self) -> Any:
        if self._builder is None:
            self._builder = self.parts.builder(self.device)
        return self._builder

    def runner(self) -> Any:
        if self._runner is None:
            self._runner = self.parts.runner(self.tracker, self.key)
        return self._runner

    def database(self) -> Any:
        if self._database is None:
            db = self.parts.database(self.database_dir)
            # A warm start: an earlier run's records (same device) seed a new run's database once;
            # its workloads count as tuned (per-task budgets include their records).
            if self.warm_start_database is not None and not len(db.get_all_tuning_records()):
                from ..hw.tuning.database import copy_records

                copy_records(self.parts.database(self.warm_start_database), db, keep=self._row_split_accepts())
            self._database = db
        return self._database

    def _cost_model(self) -> Any:
        if self.parts.cost_model is not None:
            return self.parts.cost_model()
        if self._shared_cost_model is None:
            from ..hw.tuning import default_cost_model

            # One XGBoost model for all the run's sessions: it predicts only from 100 samples on,
            # which a candidate's session of a task or two at 16 trials never reaches alone
            # (its search would stay random); after the original's tuning it has them.
            self._shared_cost_model = default_cost_model()
        return self._shared_cost_model

    def _row_split_accepts(self) -> Any:
        """With `row_split`, the check a warm start's records must pass (an earlier run without it
        tuned the same workloads without the constraint); else None (keep all)."""
        if not self.opt.row_split:
            return None
        from ..hw.metaschedule.row_split import RowSplit

        return RowSplit(threads=int(self.target().attrs.get("num-cores", 1))).accepts

    def _space(self) -> Any:
        """MetaSchedule's design space: the target's own, with `RowSplit` among its postprocessors
        when the options ask for it."""
        if not self.opt.row_split:
            return "post-order-apply"
        from ..hw.metaschedule.row_split import row_split_space

        return row_split_space(self.target())

    def close(self) -> None:
        for obj in (self._builder, self._runner):
            if obj is not None and hasattr(obj, "close"):
                obj.close()
        self._builder = self._runner = None

    def target(self) -> Any:
        return self.device.target

    def task_latencies(self, known: Sequence[Any], new: Sequence[Any], trials_per_task: int | None) -> dict[int, float]:
        from ..hw import tune_tasks_per_task
        from ..hw.tuning.database import remeasure_best
        from ..hw.tuning.delta import workload_key
        from ..hw.tuning.verify import best_correct_record

        db = self.database()
        if new:
            info = tune_tasks_per_task(new, self.device, trials_per_task, database=db,
                                       work_dir=str(self.database_dir / "logs" / "replacements"),
                                       builder=self.builder(), runner=self.runner(),
                                       trials_per_iter=min(16, trials_per_task), cost_model=self._cost_model(),
                                       seed=self.opt.seed, max_seconds=self.opt.time_budget, space=self._space())
            tuned = [t for t in new if t.task_name in info["tuned"]]
            remeasure_best(db, [t.dispatched[0] for t in tuned], self.target(), self.builder(), self.runner(),
                           serial_twins=self.opt.serial_kernels)
            for t in tuned:
                self._correct.pop(workload_key(t), None)
        out = {}
        for task in list(known) + list(new):
            key = workload_key(task)
            if key not in self._correct:
                # The fastest schedule that computes the task (a few of MetaSchedule's do not), as
                # `compile_tuned` applies it.
                self._correct[key] = best_correct_record(db, task.dispatched[0])[0]
            out[key] = self._correct[key]
        return out

    def model(self, name: str, mod: Any, params: Mapping[str, np.ndarray], example: np.ndarray, *,
              trials_per_task: int) -> dict:
        from tvm.s_tir import meta_schedule as ms

        from ..hw import compile_tuned, measure_module, tune_module_per_task
        from ..hw.tuning.database import database_kernel_sum, remeasure_best, task_table
        from ..hw.tuning import prepare_relax

        db = self.database()
        target = self.device.target
        info = tune_module_per_task(mod, params, self.device, trials_per_task, database=db,
                                    work_dir=str(self.database_dir / "logs" / name), builder=self.builder(),
                                    runner=self.runner(), trials_per_iter=16, cost_model=self._cost_model(),
                                    seed=self.opt.seed, max_seconds=self.opt.time_budget, space=self._space())
        prepared = prepare_relax(mod, params, target)
        tasks = ms.relax_integration.extract_tasks(prepared, target)
        if info["tuned"]:
            self._correct.clear()  # re-time the winners alone (see `remeasure_best`); records already re-timed stay
            fresh = self.parts.runner(self.tracker, self.key)  # new measuring processes, as for the end-to-end run
            try:
                remeasure_best(db, [t.dispatched[0] for t in tasks if t.task_name in info["tuned"]], target,
                               self.builder(), fresh, serial_twins=self.opt.serial_kernels)
            finally:
                if hasattr(fresh, "close"):
                    fresh.close()
        executable = compile_tuned(mod, params, self.device, db)
        time.sleep(SETTLE_S)

        def time_once(rnd: int) -> Any:
            return measure_module(executable, self.device, self.tracker, self.key, [example], repeat=self.opt.repeat,
                                  number=5, fetch_outputs=rnd == 0)

        first, stats = measure_until_stable(time_once, max_spread=self.opt.max_spread, max_rounds=self.opt.max_rounds)
        table = task_table(prepared, target, db)
        return {**stats, "kernel_sum_s": database_kernel_sum(prepared, target, db), "tasks": info["tasks"],
                "trials": sum(r["trials"] for r in table), "trials_per_task": trials_per_task, "per_task": table,
                "tuned_tasks": info["tuned"], "tuning_s": info["seconds"],
                "outputs_head": np.ravel(first.outputs[0])[:16].tolist()}


    def paired(self, models: Mapping[str, tuple[Any, Mapping[str, np.ndarray]]], example: np.ndarray, *,
               rounds: int) -> dict[str, dict]:
        # On this shared machine timings minutes apart differ by more than two models do: at the end
        # of a search vgg-style's adapted model measured 0.647 ms against the original's 0.507 ms from
        # the search's start; timed alternately, on a quiet machine, they were 0.46 and 0.50 ms.
        from ..hw import LatencyStats, compile_tuned, export_module, measure_module

        db = self.database()
        libraries = {name: export_module(compile_tuned(mod, params, self.device, db), self.device)
                     for name, (mod, params) in models.items()}
        raw: dict[str, list[float]] = {name: [] for name in models}
        time.sleep(SETTLE_S)
        try:
            for _ in range(rounds):
                for name, library in libraries.items():
                    stats = measure_module(None, self.device, self.tracker, self.key, [example],
                                           repeat=self.opt.repeat, number=5, library=library)
                    raw[name] += [float(x) for x in stats.raw]
        finally:
            for library in libraries.values():
                shutil.rmtree(Path(library).parent, ignore_errors=True)
        spreads = {name: relative_spread(r) for name, r in raw.items()}
        return {name: {**LatencyStats.from_raw(r, number=5, device=self.device.name,
                                               emulated=bool(self.device.emulated)).to_json(),
                       "rounds": rounds, "spread": spreads[name], "stable": spreads[name] <= self.opt.max_spread}
                for name, r in raw.items()}


# ---------------------------------------------------------------------------------------- fake device


def formula_latency(task: Any) -> float:
    """The fake device's latency of one call of a tuning task: 2 us of launch + 1 ns per 10 FLOPs
    of its workload (TVM's `estimate_tir_flops`)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    return 2e-6 + 1e-10 * float(estimate_tir_flops(task.dispatched[0]))


class FakeMeasurer(Measurer):
    """A fake device: latencies from a deterministic formula, nothing tuned or timed.

    Task latency = `task_latency(task)` (default `formula_latency`), the same for the original's
    tasks and for a replacement's new ones; model latency = the sum over the model's tasks of
    weight x task latency, times `slowdown.get(name, 1)` (e.g. {"adapted": 3.0} makes the adapted
    model measure slower end to end than its kernels promise, to exercise the fall-back).
    `replacement_calls` / `model_calls` record what was asked, so tests can check that a resumed
    search asks nothing twice."""

    def __init__(self, task_latency: Callable[[Any], float] = formula_latency,
                 slowdown: Mapping[str, float] | None = None, repeat: int = 3):
        self.task_latency = task_latency
        self.slowdown = dict(slowdown or {})
        self.repeat = repeat
        self.replacement_calls: list[str] = []  # the variants asked about (site ids, candidate keys)
        self.model_calls: list[str] = []
        self.model_trials: list[int] = []  # the per-task budget each model call was given
        self.paired_calls: list[list[str]] = []

    def replacements(self, original: Model, variants: Mapping[str, Model], *,
                     trials_per_task: int | None) -> dict[str, dict]:
        self.replacement_calls += list(variants)
        return super().replacements(original, variants, trials_per_task=trials_per_task)

    def task_latencies(self, known: Sequence[Any], new: Sequence[Any], trials_per_task: int | None) -> dict[int, float]:
        from ..hw.tuning.delta import workload_key

        return {workload_key(t): float(self.task_latency(t)) for t in list(known) + list(new)}

    def model(self, name: str, mod: Any, params: Mapping[str, np.ndarray], example: np.ndarray, *,
              trials_per_task: int) -> dict:
        self.model_calls.append(name)
        self.model_trials.append(trials_per_task)
        lat, n_funcs = self._formula(name, mod, params)
        return {"median_s": lat, "mean_s": lat, "std_s": 0.0, "min_s": lat, "max_s": lat, "raw_s": [lat] * self.repeat,
                "number": 1, "device": "fake", "emulated": False, "rounds": 1, "spread": 0.0, "stable": True,
                "kernel_sum_s": lat, "tasks": n_funcs, "trials": 0, "trials_per_task": trials_per_task,
                "per_task": [], "tuned_tasks": [], "tuning_s": 0.0, "outputs_head": []}

    def _formula(self, name: str, mod: Any, params: Mapping[str, np.ndarray]) -> tuple[float, int]:
        """(latency, task count) of the model by the fake device's formula."""
        tasks = self.tasks((mod, params))
        lat = sum(int(t.weight) * self.task_latency(t) for t in tasks)
        return lat * self.slowdown.get(name, 1.0), len(tasks)

    def paired(self, models: Mapping[str, tuple[Any, Mapping[str, np.ndarray]]], example: np.ndarray, *,
               rounds: int) -> dict[str, dict]:
        self.paired_calls.append(sorted(models))
        out = {}
        for name, (mod, params) in models.items():
            lat, _ = self._formula(name, mod, params)
            out[name] = {"median_s": lat, "mean_s": lat, "std_s": 0.0, "min_s": lat, "max_s": lat,
                         "raw_s": [lat] * self.repeat * rounds, "number": 1, "device": "fake", "emulated": False,
                         "rounds": rounds, "spread": 0.0, "stable": True}
        return out


__all__ = ["Measurer", "TuningParts", "TunedMeasurer", "FakeMeasurer", "formula_latency", "measure_until_stable",
           "relative_spread", "speedup", "SETTLE_S"]
