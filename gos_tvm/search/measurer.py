"""Where the search's latencies come from: a `Measurer` tunes and times kernels and whole models.

    TunedMeasurer   the real device: MetaSchedule tuning (of kernels in the model's convolution
                    layout, `program_kernel`) through a builder and an RPC runner into
                    the run's one JSON database (per-task budgets), tuned records re-timed and checked, models compiled with their
                    database applied and timed end to end.  Its parts (`TuningParts`: builder,
                    runner factory, database factory, MetaSchedule cost model) are swappable.
    FakeMeasurer    a fake device, like MetaSchedule's DummyBuilder/DummyRunner: deterministic
                    latencies from a formula, no tuning, no tracker, so the search's strategies,
                    bisection, fall-back, Pareto front and resume are unit-tested in seconds.

The search caches what a measurer returns in the work directory's log, so a measurer is asked
about each kernel and each model at most once per work directory.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
import math
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..instructions import OpProgram, to_te
from .results import SearchOptions


def program_kernel(program: OpProgram) -> Any:
    """The stand-alone kernel of `program` that is tuned and timed: its TensorIR PrimFunc in the
    layout the model's convolutions are compiled in (`graph.kernel_in_layout`)."""
    from ..graph import kernel_in_layout

    x_shape = next(iter(program.inputs.values()))
    return kernel_in_layout(to_te(program), x_shape, program.output_shape)


class Measurer(ABC):
    """Latencies of kernels and whole models on one device (see the module docstring)."""

    @abstractmethod
    def kernels(self, programs: Mapping[str, OpProgram]) -> dict[str, float]:
        """Tuned latency (s) of each program as a stand-alone kernel, by the mapping's keys; inf for
        a kernel without a correct tuned schedule."""

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
        each one's `LatencyStats.to_json()` fields over all its timings plus `rounds` and `spread`.
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
    MetaSchedule CostModel for each tuning session (None: `gos_tvm.hw.tuning.default_cost_model`).
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

                copy_records(self.parts.database(self.warm_start_database), db)
            self._database = db
        return self._database

    def _cost_model(self) -> Any:
        return self.parts.cost_model() if self.parts.cost_model is not None else None

    def close(self) -> None:
        for obj in (self._builder, self._runner):
            if obj is not None and hasattr(obj, "close"):
                obj.close()
        self._builder = self._runner = None

    def kernels(self, programs: Mapping[str, OpProgram]) -> dict[str, float]:
        from ..hw import tune_primfuncs
        from ..hw.tuning.database import kernel_workload, measured_trials, remeasure_best
        from ..hw.tuning.verify import best_correct_record

        db = self.database()
        funcs = {f"k{p.structural_hash}": program_kernel(p) for p in programs.values()}
        # A run killed mid-tuning left records in the database: only the rest of the budget is spent.
        done = min(measured_trials(db, kernel_workload(f, n)) for n, f in funcs.items())
        trials = max(self.opt.kernel_trials - done, 0)
        if trials:
            tune_primfuncs(funcs, self.device, trials_per_task=trials, trials_per_iter=min(8, trials), database=db,
                           builder=self.builder(), runner=self.runner(), cost_model=self._cost_model(),
                           seed=self.opt.seed, work_dir=str(self.database_dir / "logs" / "kernels"))
        remeasure_best(db, [kernel_workload(f, n) for n, f in funcs.items()], self.device.target,
                       self.builder(), self.runner())
        # The fastest schedule that computes the kernel (a few of MetaSchedule's do not).
        best = {n: best_correct_record(db, kernel_workload(f, n))[0] for n, f in funcs.items()}
        return {name: best[f"k{p.structural_hash}"] for name, p in programs.items()}

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
                                    seed=self.opt.seed, max_seconds=self.opt.time_budget)
        prepared = prepare_relax(mod, params, target)
        tasks = ms.relax_integration.extract_tasks(prepared, target)
        if info["tuned"]:  # re-time the winners alone (see `remeasure_best`); records already re-timed stay
            fresh = self.parts.runner(self.tracker, self.key)  # new measuring processes, as for the end-to-end run
            try:
                remeasure_best(db, [t.dispatched[0] for t in tasks if t.task_name in info["tuned"]], target,
                               self.builder(), fresh)
            finally:
                if hasattr(fresh, "close"):
                    fresh.close()
        executable = compile_tuned(mod, params, self.device, db)

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
        try:
            for _ in range(rounds):
                for name, library in libraries.items():
                    stats = measure_module(None, self.device, self.tracker, self.key, [example],
                                           repeat=self.opt.repeat, number=5, library=library)
                    raw[name] += [float(x) for x in stats.raw]
        finally:
            for library in libraries.values():
                shutil.rmtree(Path(library).parent, ignore_errors=True)
        return {name: {**LatencyStats.from_raw(r, number=5, device=self.device.name,
                                               emulated=bool(self.device.emulated)).to_json(),
                       "rounds": rounds, "spread": relative_spread(r)} for name, r in raw.items()}


# ---------------------------------------------------------------------------------------- fake device


def formula_latency(program: OpProgram) -> float:
    """The fake device's kernel latency: 2 us of launch, 1 ns per 10 FLOPs, 1 ns per parameter."""
    return 2e-6 + 1e-10 * float(program.flops) + 1e-9 * float(program.params)


class FakeMeasurer(Measurer):
    """A fake device: latencies from a deterministic formula, nothing tuned or timed.

    kernel latency = `kernel_latency(program)` (default `formula_latency`); model latency = 2 us
    per kernel of the legalized module + 1 ns per 10 FLOPs of its PrimFuncs (TVM's
    `estimate_tir_flops`), times `slowdown.get(name, 1)` (e.g. {"adapted": 3.0} makes the adapted
    model measure slower end to end than its kernels promise, to exercise the fall-back).
    `kernel_calls` / `model_calls` record what was asked, so tests can check that a resumed search
    asks nothing twice."""

    def __init__(self, kernel_latency: Callable[[OpProgram], float] = formula_latency,
                 slowdown: Mapping[str, float] | None = None, repeat: int = 3):
        self.kernel_latency = kernel_latency
        self.slowdown = dict(slowdown or {})
        self.repeat = repeat
        self.kernel_calls: list[str] = []
        self.model_calls: list[str] = []
        self.model_trials: list[int] = []  # the per-task budget each model call was given
        self.paired_calls: list[list[str]] = []

    def kernels(self, programs: Mapping[str, OpProgram]) -> dict[str, float]:
        self.kernel_calls += [p.structural_hash for p in programs.values()]
        return {name: float(self.kernel_latency(p)) for name, p in programs.items()}

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
        """(latency, PrimFunc count) of the legalized model by the fake device's formula."""
        import tvm
        from tvm.s_tir.analysis import estimate_tir_flops

        from ..graph import legalize

        lowered = legalize(mod, params)
        funcs = [f for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        flops = sum(float(estimate_tir_flops(tvm.IRModule({"main": f}))) for f in funcs)
        return (2e-6 * len(funcs) + 1e-10 * flops) * self.slowdown.get(name, 1.0), len(funcs)

    def paired(self, models: Mapping[str, tuple[Any, Mapping[str, np.ndarray]]], example: np.ndarray, *,
               rounds: int) -> dict[str, dict]:
        self.paired_calls.append(sorted(models))
        out = {}
        for name, (mod, params) in models.items():
            lat, _ = self._formula(name, mod, params)
            out[name] = {"median_s": lat, "mean_s": lat, "std_s": 0.0, "min_s": lat, "max_s": lat,
                         "raw_s": [lat] * self.repeat * rounds, "number": 1, "device": "fake", "emulated": False,
                         "rounds": rounds, "spread": 0.0}
        return out


__all__ = ["Measurer", "TuningParts", "TunedMeasurer", "FakeMeasurer", "formula_latency", "measure_until_stable",
           "relative_spread"]
