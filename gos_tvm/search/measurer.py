"""Where the search's latencies come from: a `Measurer` tunes and times kernels and whole models.

    TunedMeasurer   the real device: MetaSchedule tuning through a builder and an RPC runner into
                    JSON databases, tuned records re-timed and checked, models compiled with their
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
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..instructions import OpProgram, to_te
from .results import SearchOptions


class Measurer(ABC):
    """Latencies of kernels and whole models on one device (see the module docstring)."""

    @abstractmethod
    def kernels(self, programs: Mapping[str, OpProgram]) -> dict[str, float]:
        """Tuned latency (s) of each program as a stand-alone kernel, by the mapping's keys; inf for
        a kernel without a correct tuned schedule."""

    @abstractmethod
    def model(self, name: str, mod: Any, params: Mapping[str, np.ndarray], example: np.ndarray) -> dict:
        """Tune `(mod, params)` (into the database called `name`), compile and time it end to end
        on `example`.  Returns `LatencyStats.to_json()` fields plus `kernel_sum_s` (what the tuned
        records add up to, or None), `tasks`, `trials` and `outputs_head` (the first outputs)."""

    def database(self, name: str) -> Any:
        """The tuning database called `name` (None where the measurer keeps none)."""
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
    that re-times a model's best records);  database(directory) -> Database;  cost_model() ->
    MetaSchedule CostModel for each tuning session (None: `gos_tvm.hw.tuning.default_cost_model`).
    """

    builder: Callable[[Any], Any] = _warm_builder
    runner: Callable[[tuple[str, int], str], Any] = _tracker_runner
    database: Callable[[Path], Any] = _json_database
    cost_model: Optional[Callable[[], Any]] = None


class TunedMeasurer(Measurer):
    """The device behind an RPC tracker, measured through MetaSchedule (see the module docstring).

    The builder and runner are started when first needed and live until `close` (a resumed search
    that measures nothing starts neither)."""

    def __init__(self, device: Any, tracker: tuple[str, int] | None, key: str | None, database_dir: Path,
                 options: SearchOptions, parts: TuningParts | None = None):
        self.device, self.tracker, self.key = device, tracker, key
        self.database_dir, self.opt = Path(database_dir), options
        self.parts = parts or TuningParts()
        self._builder = self._runner = None
        self._databases: dict[str, Any] = {}

    def builder(self) -> Any:
        if self._builder is None:
            self._builder = self.parts.builder(self.device)
        return self._builder

    def runner(self) -> Any:
        if self._runner is None:
            self._runner = self.parts.runner(self.tracker, self.key)
        return self._runner

    def database(self, name: str) -> Any:
        if name not in self._databases:
            self._databases[name] = self.parts.database(self.database_dir / name)
        return self._databases[name]

    def _cost_model(self) -> Any:
        return self.parts.cost_model() if self.parts.cost_model is not None else None

    def close(self) -> None:
        for obj in (self._builder, self._runner):
            if obj is not None and hasattr(obj, "close"):
                obj.close()
        self._builder = self._runner = None

    def kernels(self, programs: Mapping[str, OpProgram]) -> dict[str, float]:
        from ..hw import tune_primfuncs
        from ..hw.tuning.database import database_records, kernel_workload, remeasure_best
        from ..hw.tuning.verify import best_correct_record

        db = self.database("kernels")
        funcs = {f"k{p.structural_hash}": to_te(p) for p in programs.values()}
        # A run killed mid-tuning left records in the database: only the rest of the budget is spent.
        done = min(len(database_records(db, kernel_workload(f, n))) for n, f in funcs.items())
        trials = max(self.opt.kernel_trials - done, 0)
        if trials:
            tune_primfuncs(funcs, self.device, trials_per_task=trials, trials_per_iter=min(8, trials), database=db,
                           builder=self.builder(), runner=self.runner(), cost_model=self._cost_model(),
                           seed=self.opt.seed, work_dir=str(self.database_dir / "kernels"))
        remeasure_best(db, [kernel_workload(f, n) for n, f in funcs.items()], self.device.target,
                       self.builder(), self.runner())
        # The fastest schedule that computes the kernel (a few of MetaSchedule's do not).
        best = {n: best_correct_record(db, kernel_workload(f, n))[0] for n, f in funcs.items()}
        return {name: best[f"k{p.structural_hash}"] for name, p in programs.items()}

    def model(self, name: str, mod: Any, params: Mapping[str, np.ndarray], example: np.ndarray) -> dict:
        from tvm.s_tir import meta_schedule as ms

        from ..hw import compile_tuned, measure_module, tune_module
        from ..hw.tuning.database import database_kernel_sum, remeasure_best
        from ..hw.tuning import prepare_relax

        db = self.database(name)
        target = self.device.target
        prepared = prepare_relax(mod, params, target)
        n_tasks = len(ms.relax_integration.extract_tasks(prepared, target))  # before tuning
        done = len(db.get_all_tuning_records())
        if self.opt.trials - done > 0:
            # MetaSchedule's scheduler first visits every task once with one batch: a batch small
            # enough for the budget to reach every task, or the last kernels stay untuned.
            per_iter = max(2, min(16, self.opt.trials // max(n_tasks, 1)))
            tune_module(mod, params, self.device, builder=self.builder(), runner=self.runner(),
                        trials=self.opt.trials - done, trials_per_iter=per_iter, database=db,
                        cost_model=self._cost_model(), work_dir=str(self.database_dir / name), seed=self.opt.seed)
        tasks = ms.relax_integration.extract_tasks(prepared, target)
        fresh = self.parts.runner(self.tracker, self.key)  # new measuring processes, as for the end-to-end run
        try:
            remeasure_best(db, [t.dispatched[0] for t in tasks], target, self.builder(), fresh)
        finally:
            if hasattr(fresh, "close"):
                fresh.close()
        executable = compile_tuned(mod, params, self.device, db)
        stats = measure_module(executable, self.device, self.tracker, self.key, [example], repeat=self.opt.repeat,
                               number=5, fetch_outputs=True)
        return {**stats.to_json(), "kernel_sum_s": database_kernel_sum(prepared, target, db), "tasks": n_tasks,
                "trials": len(db.get_all_tuning_records()),
                "outputs_head": np.ravel(stats.outputs[0])[:16].tolist()}


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

    def kernels(self, programs: Mapping[str, OpProgram]) -> dict[str, float]:
        self.kernel_calls += [p.structural_hash for p in programs.values()]
        return {name: float(self.kernel_latency(p)) for name, p in programs.items()}

    def model(self, name: str, mod: Any, params: Mapping[str, np.ndarray], example: np.ndarray) -> dict:
        import tvm
        from tvm.s_tir.analysis import estimate_tir_flops

        from ..graph import legalize

        self.model_calls.append(name)
        lowered = legalize(mod, params)
        funcs = [f for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        flops = sum(float(estimate_tir_flops(tvm.IRModule({"main": f}))) for f in funcs)
        lat = (2e-6 * len(funcs) + 1e-10 * flops) * self.slowdown.get(name, 1.0)
        return {"median_s": lat, "mean_s": lat, "std_s": 0.0, "min_s": lat, "max_s": lat, "raw_s": [lat] * self.repeat,
                "number": 1, "device": "fake", "emulated": False, "kernel_sum_s": lat, "tasks": len(funcs),
                "trials": 0, "outputs_head": []}


__all__ = ["Measurer", "TuningParts", "TunedMeasurer", "FakeMeasurer", "formula_latency"]
