"""Per-kernel and whole-module MetaSchedule tuning on devices reached through the RPC tracker.

    with LocalDevicePool("local", 2) as pool:
        builder = WarmBuilder("local")
        res = tune_primfunc(to_te(program), "local", tracker=pool.tracker, key=pool.key,
                            trials=32, builder=builder, work_dir="runs/conv")
        latency_s, record = res          # best measured mean latency (s), its TuningRecord

The XGBoost cost model is on by default (`default_cost_model`).  Records go to a JSON database (one line per measured
candidate, appended as each batch completes), so a crash or a dead device never loses the records
already measured, and a later call with the same database warm-starts from them.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import tvm
import tvm_ffi
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

from ._fastimport import import_tensor_intrin
from .ms_logging import metaschedule_logging
from .presets import Preset, resolve_target

if TYPE_CHECKING:  # pragma: no cover
    from .builder import WarmBuilder

#: Mean run time at or above which a record is a failure (MetaSchedule stores 1e10 s for a candidate
#: that failed to build or run).
FAILED_RUN_SECS = 1e9


def open_database(work_dir: str | os.PathLike) -> ms.database.JSONDatabase:
    """The JSON tuning database in `work_dir` (created if missing; records are appended as measured)."""
    os.makedirs(work_dir, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=os.path.join(work_dir, "database_workload.json"),
                                    path_tuning_record=os.path.join(work_dir, "database_tuning_record.json"),
                                    module_equality="structural")


def record_latency(record: Any) -> float:
    """Mean measured seconds of a TuningRecord; inf for a failed or unmeasured candidate."""
    secs = getattr(record, "run_secs", None)
    if not secs:
        return math.inf
    vals = [float(s) for s in secs]
    mean = sum(vals) / len(vals)
    return math.inf if mean >= FAILED_RUN_SECS else mean


def _workload_mod(func: Union[tirx.PrimFunc, tvm.IRModule]) -> tvm.IRModule:
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def database_records(database: ms.database.Database, func: Union[tirx.PrimFunc, tvm.IRModule, None] = None) -> list:
    """All tuning records in `database` (of `func`'s workload only, if given), failed ones included."""
    records = list(database.get_all_tuning_records())
    if func is None:
        return records
    mod = _workload_mod(func)
    if not database.has_workload(mod):
        return []
    wl = database.commit_workload(mod)  # the stored workload (no new entry: it exists)
    return [r for r in records if r.workload.same_as(wl) or tvm_ffi.structural_equal(r.workload.mod, mod)]


def best_record(database: ms.database.Database, func: Union[tirx.PrimFunc, tvm.IRModule]) -> tuple[float, Any]:
    """(best mean latency in s, its TuningRecord) for `func` in `database`; (inf, None) if nothing ran."""
    best: tuple[float, Any] = (math.inf, None)
    for rec in database_records(database, func):
        lat = record_latency(rec)
        if lat < best[0]:
            best = (lat, rec)
    return best


# ---------------------------------------------------------------------------------------------
# Checking tuned schedules
# ---------------------------------------------------------------------------------------------

def _random_args(func: tirx.PrimFunc, seed: int) -> list:
    import numpy as np

    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    rng = np.random.default_rng(seed)
    args = []
    for info in ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        if "float" in dtype:
            args.append(rng.standard_normal(shape).astype(dtype))
        else:  # indices and masks: zeros are in range for every consumer
            args.append(np.zeros(shape, dtype))
    return args


def _host_outputs(mod: tvm.IRModule, args: list) -> list:
    """Every buffer after running `mod` (built for this host) on a copy of `args`."""
    from ..instructions import default_target

    lib = tvm.compile(mod, target=default_target())
    tensors = [tvm.runtime.tensor(a.copy()) for a in args]
    lib["main"](*tensors)
    return [t.numpy() for t in tensors]


def _agrees(mod: tvm.IRModule, trace: Any, args: list, reference: list, rtol: float) -> bool:
    """Whether `trace` applied to `mod` gives `reference` (every buffer, outputs included, to
    `rtol` relative to its norm) on `args`."""
    import numpy as np
    from tvm.s_tir import Schedule

    sch = Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=False)
        got = _host_outputs(sch.mod, args)
    except Exception:  # noqa: BLE001 - a trace that does not replay or build is not usable
        return False
    for ref, out in zip(reference, got):
        if not np.isfinite(out).all() and np.isfinite(ref).all():
            return False
        if np.linalg.norm((out - ref).ravel()) > rtol * max(float(np.linalg.norm(ref.ravel())), 1e-30):
            return False
    return True


def schedule_is_correct(workload: Union[tirx.PrimFunc, tvm.IRModule], trace: Any, *, rtol: float = 1e-4,
                        seed: int = 0) -> bool:
    """Whether `trace` applied to `workload` computes what the unscheduled workload computes.

    Tuning only times candidates.  With TVM 0.27 a small share of the schedules MetaSchedule
    samples for kernels with padded intermediates compute wrong values (about 0.7% of the design
    space of a channel-bottleneck + spatially-separable convolution, at the padded border; see
    tests/test_tuned_candidates.py), and they can be the fastest.  Both versions are built for
    this host (a board's trace replays here; one tensorized with a board-only intrinsic would not
    build and counts as unusable -- gos_tvm's float32 kernels use none) and run on the same random
    arguments; every buffer, outputs included, must agree to `rtol` (relative to its norm).
    """
    mod = _workload_mod(workload)
    args = _random_args(mod["main"], seed)
    return _agrees(mod, trace, args, _host_outputs(mod, args), rtol)


def best_correct_record(database: ms.database.Database, func: Union[tirx.PrimFunc, tvm.IRModule], *,
                        max_checks: int = 8, rtol: float = 1e-4) -> tuple[float, Any]:
    """(latency, record) of the fastest record of `func` whose schedule is correct
    (`schedule_is_correct`), looking at the `max_checks` fastest; (inf, None) if none is."""
    records = sorted((r for r in database_records(database, func) if math.isfinite(record_latency(r))),
                     key=record_latency)[:max_checks]
    if not records:
        return math.inf, None
    mod = _workload_mod(records[0].workload.mod)
    args = _random_args(mod["main"], 0)
    reference = _host_outputs(mod, args)  # the unscheduled kernel, once for all its records
    for rec in records:
        if _agrees(mod, rec.trace, args, reference, rtol):
            return record_latency(rec), rec
    return math.inf, None


def verified_database(database: ms.database.Database, workloads: Sequence[Union[tirx.PrimFunc, tvm.IRModule]],
                      *, max_checks: int = 8) -> ms.database.Database:
    """An in-memory database with, for each workload, its fastest correct record in `database`
    (`best_correct_record`); a workload without one is left out and keeps its default schedule."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    out = ms.database.MemoryDatabase()
    for func in workloads:
        _, rec = best_correct_record(database, func, max_checks=max_checks)
        if rec is not None:
            wl = out.commit_workload(rec.workload.mod)
            out.commit_tuning_record(TuningRecord(rec.trace, wl, rec.run_secs, rec.target, rec.args_info))
    return out


@dataclass
class KernelTuneResult:
    """Outcome of tuning one kernel.  Unpacks as `(latency_s, record)`.

    latency_s: best measured mean latency in seconds (inf if every candidate failed);
    record: its `TuningRecord` (None if none succeeded); trials / failed: candidates measured for
    this kernel in the database (all sessions) and how many of them failed.
    """

    name: str
    latency_s: float
    record: Any
    database: Any = field(repr=False)
    trials: int = 0
    failed: int = 0

    def __iter__(self) -> Iterator:
        return iter((self.latency_s, self.record))

    @property
    def ok(self) -> bool:
        return self.record is not None and math.isfinite(self.latency_s)

    def schedule(self, func: tirx.PrimFunc) -> Optional[tvm.IRModule]:
        """`func` with the best schedule applied (None if nothing succeeded)."""
        if self.record is None:
            return None
        from tvm.s_tir import Schedule

        sch = Schedule(_workload_mod(func))
        self.record.trace.apply_to_schedule(sch, remove_postproc=False)
        return sch.mod


@derived_object
class GuardedRoundRobin(PyTaskScheduler):
    """Round-robin over the tasks, guarded against MetaSchedule's endless loop.

    MetaSchedule's schedulers loop while the global trial count is below budget, and a batch only
    counts the candidates it contained: when a task's search space is exhausted (a small kernel
    whose few distinct schedules were all measured, or all failed), its search returns an *empty*
    batch, nothing counts, and the stock schedulers pick it again forever.  Here a task whose
    batches come back empty `max_empty_batches` times in a row is terminated.  `max_seconds`
    optionally bounds the whole session (the batch in flight is finished and recorded first).
    """

    def __init__(self, max_empty_batches: int = 2, max_seconds: Optional[float] = None) -> None:
        super().__init__()
        self.max_empty_batches = int(max_empty_batches)
        self.max_seconds = max_seconds
        self._last = -1
        self._empty: dict[int, int] = {}
        self._start: Optional[float] = None
        self.terminated_empty: list[int] = []

    def next_task_id(self) -> int:
        import time

        outer = self._outer()
        tasks = outer.tasks_
        if self._start is None:
            self._start = time.monotonic()
        last = self._last
        if 0 <= last < len(tasks) and not tasks[last].is_terminated:
            results = outer.join_running_task(last)   # records the batch (database, cost model)
            self._empty[last] = 0 if len(results) else self._empty.get(last, 0) + 1
            if self._empty[last] >= self.max_empty_batches:
                outer.terminate_task(last)
                self.terminated_empty.append(last)
        if self.max_seconds is not None and time.monotonic() - self._start > self.max_seconds:
            return -1
        n = len(tasks)
        for step in range(1, n + 1):
            i = (last + step) % n
            if not tasks[i].is_terminated:
                self._last = i
                return i
        self._last = -1
        return -1


def default_strategy(evolve: bool = True, trials_per_iter: int = 16) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search sized for small hosts.

    evolve=True: population 256 and 3 genetic iterations (stock: 512 and 4).  Choosing each batch
    costs about 2.5x less host time, which on a 2-core machine is most of a batch once builds are
    warm; the XGBoost model still ranks every candidate.

    evolve=False, for a session whose cost model cannot predict: MetaSchedule's XGBoost model
    scores candidates *at random* until it holds `num_warmup_samples` (100) measurements, so
    mutating a population towards its scores is a random walk that costs host time (45% of a
    64-trial session's wall time here, by MetaSchedule's profiler) and buys nothing over random
    sampling.  Then the search samples a random population of the design space twice the batch
    (at least 32), enough for a batch of unmeasured candidates, and measures from it (no genetic
    iterations); database records still seed it.

    Pass strategy='evolutionary' to the tuning functions for the stock configuration.
    """
    if evolve:
        return ms.search_strategy.EvolutionarySearch(population_size=256, genetic_num_iters=3)
    population = max(32, 2 * trials_per_iter)
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=population * 3 // 4,
                                                 genetic_num_iters=0)


def _strategy_for(strategy: Any, cost_model: Any, session_trials: int, trials_per_iter: int) -> Any:
    """`strategy`, or the default one: evolving only if the cost model can predict during the session."""
    if strategy is not None:
        return strategy
    warm_up = getattr(cost_model, "num_warmup_samples", None)
    if warm_up is None:  # a cost model that predicts from the start (or a named stock one)
        return default_strategy(evolve=True)
    return default_strategy(evolve=getattr(cost_model, "data_size", 0) + session_trials > warm_up,
                            trials_per_iter=trials_per_iter)


def default_cost_model(num_tuning_cores: Optional[int] = None, num_warmup_samples: int = 100) -> Any:
    """MetaSchedule's XGBoost cost model, without the training that cannot be used.

    `XGBModel` predicts *random* scores until it holds `num_warmup_samples` (100) measured
    samples, yet it retrains its booster after every batch from the first one on: seconds of
    host time per batch, thrown away.  Here training is deferred until the model can predict
    with it (by starting its adaptive-training counter near the warm-up size), so the search
    behaves exactly as with the stock model, only faster.  Share one instance across calls (the
    `cost_model` argument) to let its samples accumulate past the warm-up.
    """
    model = ms.cost_model.XGBModel(num_tuning_cores=int(num_tuning_cores or os.cpu_count() or 1),
                                   num_warmup_samples=num_warmup_samples, adaptive_training=True)
    # XGBModel.update skips training while data_size - last_train_size < last_train_size / 5:
    # the first training then happens once data_size reaches ~num_warmup_samples.
    model.last_train_size = max(int(num_warmup_samples / 1.2), 1)
    return model


def _make_runner(tracker, key, runner):
    if runner is not None:
        if isinstance(runner, str) and runner == "local":
            return ms.runner.LocalRunner()
        return runner
    if tracker is None or key is None:
        raise ValueError("give tracker=(host, port) and key=... (or runner=...); to use this machine as the "
                         "device, start a gos_tvm.hw.LocalDevicePool or `gos-tvm rpc tracker` + `gos-tvm rpc server`")
    from .runner import TrackerRunner

    return TrackerRunner(tuple(tracker), key)


def _make_builder(builder, device):
    if builder is not None:
        return builder
    from .builder import WarmBuilder

    return WarmBuilder(device if isinstance(device, (Preset, str)) else None)


def _device_of(target) -> Optional[Union[Preset, str]]:
    return target if isinstance(target, (Preset, str)) else None


def _prepare(work_dir, database):
    import_tensor_intrin()  # TuneContext imports it; do it the fast way first (1-2 s instead of 25-60 s)
    work_dir = str(work_dir or tempfile.mkdtemp(prefix="gos_tvm_tune_"))
    os.makedirs(work_dir, exist_ok=True)
    if database is None:
        database = open_database(work_dir)
    return work_dir, database


def tune_primfuncs(funcs: Union[Mapping[str, tirx.PrimFunc], Sequence[tirx.PrimFunc]],
                   target: Union[str, dict, Preset, tvm.target.Target], *,
                   tracker: Optional[tuple[str, int]] = None, key: Optional[str] = None,
                   trials_per_task: int = 32, trials_per_iter: int = 16,
                   work_dir: Optional[str] = None, database: Optional[ms.database.Database] = None,
                   builder: Optional[Any] = None, runner: Optional[Any] = None,
                   cost_model: Union[str, ms.cost_model.CostModel, None] = None,
                   task_scheduler: Any = None, strategy: Any = None, max_seconds: Optional[float] = None,
                   seed: Optional[int] = None, num_tuning_cores: Optional[int] = None) -> dict[str, KernelTuneResult]:
    """Tune several PrimFuncs (tasks) in one MetaSchedule session into one shared database.

    Parameters
    ----------
    funcs:
        {name: PrimFunc} (or a list, named task0, task1, ...); each is one task.
    target:
        A preset name ('local', 'rasp3b', ...), a Preset, a target dict or a Target (llvm with num-cores).
    tracker, key:
        The RPC tracker and device key the candidates are measured on (through a `TrackerRunner`).
    trials_per_task, trials_per_iter:
        Measured candidates per task, and per batch.
    work_dir, database:
        Where the JSON database and the logs go (a temporary directory if neither is given);
        pass `database` to share one between calls (then earlier records warm-start the search).
    builder, runner:
        Default: a new `WarmBuilder` for the target's preset and a `TrackerRunner(tracker, key)`.
        Pass them to reuse warm workers across calls (recommended); `runner="local"` measures on
        this host without RPC (MetaSchedule's LocalRunner).
    cost_model:
        Default `default_cost_model()` (MetaSchedule's XGBoost model, training deferred until it
        can predict); 'xgb' for the stock XGBModel, 'random', or a CostModel object (reuse one
        across calls to carry its samples).
    strategy:
        The search strategy; default `default_strategy()` (evolutionary, sized for small hosts;
        without genetic iterations when the cost model cannot predict within this session).
    task_scheduler, max_seconds:
        Default `GuardedRoundRobin(max_seconds=...)`: equal budgets, no endless loop on an exhausted
        task, and (optionally) a wall-clock bound on the session; 'gradient'/'round-robin' for stock.

    Returns {name: KernelTuneResult}.  Candidates that fail to build or run are stored as failed
    records and do not stop the tuning.
    """
    if not isinstance(funcs, Mapping):
        funcs = {f"task{i}": f for i, f in enumerate(funcs)}
    if not funcs:
        raise ValueError("no PrimFunc to tune")
    tgt = resolve_target(target)
    work_dir, database = _prepare(work_dir, database)
    own_builder, own_runner = builder is None, runner is None
    runner = _make_runner(tracker, key, runner)
    builder = _make_builder(builder, _device_of(target))
    cores = int(num_tuning_cores or os.cpu_count() or 1)
    cost_model = cost_model if cost_model is not None else default_cost_model(cores)
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    try:
        with metaschedule_logging():
            ms.tir_integration.tune_tir(
                mod, tgt, work_dir, max_trials_global=trials_per_task * len(funcs),
                max_trials_per_task=trials_per_task, num_trials_per_iter=min(trials_per_iter, trials_per_task),
                builder=builder, runner=runner, database=database, cost_model=cost_model,
                task_scheduler=task_scheduler if task_scheduler is not None else GuardedRoundRobin(max_seconds=max_seconds),
                strategy=_strategy_for(strategy, cost_model, trials_per_task * len(funcs),
                                       min(trials_per_iter, trials_per_task)),
                num_tuning_cores=cores, seed=seed)
    finally:
        if own_builder:
            builder.close()
        if own_runner and hasattr(runner, "close"):
            runner.close()
    results = {}
    for name, f in funcs.items():
        f = f.with_attr("global_symbol", name)
        recs = database_records(database, f)
        lat, rec = best_record(database, f)
        results[name] = KernelTuneResult(name, lat, rec, database, trials=len(recs),
                                         failed=sum(1 for r in recs if not math.isfinite(record_latency(r))))
    return results


def tune_primfunc(func: tirx.PrimFunc, target: Union[str, dict, Preset, tvm.target.Target], *,
                  tracker: Optional[tuple[str, int]] = None, key: Optional[str] = None,
                  trials: int = 32, trials_per_iter: int = 16, work_dir: Optional[str] = None,
                  database: Optional[ms.database.Database] = None, builder: Optional[Any] = None,
                  runner: Optional[Any] = None, cost_model: Union[str, ms.cost_model.CostModel, None] = None,
                  strategy: Any = None, seed: Optional[int] = None, num_tuning_cores: Optional[int] = None,
                  task_scheduler: Any = None, max_seconds: Optional[float] = None) -> KernelTuneResult:
    """Tune one PrimFunc with MetaSchedule, measuring candidates on the device behind the tracker.

    Returns a `KernelTuneResult` that unpacks as `(best_latency_seconds, record)`.  See
    `tune_primfuncs` for the parameters.
    """
    name = "main"
    res = tune_primfuncs({name: func}, target, tracker=tracker, key=key, trials_per_task=trials,
                         trials_per_iter=trials_per_iter, work_dir=work_dir, database=database, builder=builder,
                         runner=runner, cost_model=cost_model, strategy=strategy, seed=seed,
                         num_tuning_cores=num_tuning_cores, task_scheduler=task_scheduler, max_seconds=max_seconds)
    return res[name]


# ---------------------------------------------------------------------------------------------
# Whole Relax modules
# ---------------------------------------------------------------------------------------------

def prepare_relax(mod: tvm.IRModule, params: Optional[Mapping[str, Any]],
                  target: Union[str, dict, Preset, tvm.target.Target]) -> tvm.IRModule:
    """Bind `params`, then legalize and fuse under `target` (`gos_tvm.graph.legalize`): the module
    that MetaSchedule extracts tasks from and that the tuned database is applied to."""
    from ..graph import legalize

    return legalize(mod, params, resolve_target(target))


def tune_module(mod: tvm.IRModule, params: Optional[Mapping[str, Any]],
                target: Union[str, dict, Preset, tvm.target.Target], *,
                tracker: Optional[tuple[str, int]] = None, key: Optional[str] = None,
                runner: Optional[Any] = None, builder: Optional[Any] = None, trials: int = 64,
                trials_per_iter: int = 16, max_trials_per_task: Optional[int] = None,
                database: Optional[ms.database.Database] = None, work_dir: Optional[str] = None,
                cost_model: Union[str, ms.cost_model.CostModel, None] = None, op_names: Optional[list[str]] = None,
                strategy: Any = None, seed: Optional[int] = None, task_scheduler: Any = None,
                max_seconds: Optional[float] = None) -> ms.database.Database:
    """Tune every kernel of a Relax module (after `prepare_relax`) through the same builder and runner.

    `trials` is the global budget, shared round-robin by `GuardedRoundRobin` (pass
    task_scheduler='gradient' for MetaSchedule's gradient scheduler, which can loop forever on an
    exhausted task); `max_trials_per_task` caps each kernel.  Returns the database; compile with
    `compile_tuned(mod, params, target, database)`.
    """
    tgt = resolve_target(target)
    work_dir, database = _prepare(work_dir, database)
    own_builder, own_runner = builder is None, runner is None
    runner = _make_runner(tracker, key, runner)
    builder = _make_builder(builder, _device_of(target))
    prepared = prepare_relax(mod, params, tgt)
    cost_model = cost_model if cost_model is not None else default_cost_model()
    try:
        with metaschedule_logging():
            ms.relax_integration.tune_relax(
                prepared, params={}, target=tgt, work_dir=work_dir, max_trials_global=trials,
                max_trials_per_task=max_trials_per_task, num_trials_per_iter=trials_per_iter, op_names=op_names,
                builder=builder, runner=runner, database=database, cost_model=cost_model,
                task_scheduler=task_scheduler if task_scheduler is not None else GuardedRoundRobin(max_seconds=max_seconds),
                strategy=_strategy_for(strategy, cost_model, trials, trials_per_iter), seed=seed)
    finally:
        if own_builder:
            builder.close()
        if own_runner and hasattr(runner, "close"):
            runner.close()
    return database


def compile_tuned(mod: tvm.IRModule, params: Optional[Mapping[str, Any]],
                  target: Union[str, dict, Preset, tvm.target.Target],
                  database: Optional[ms.database.Database] = None) -> Any:
    """Compile a Relax module for `target`, with the database's best schedules applied to its kernels
    (kernels without a record keep the default schedule).  Returns the executable (`export_library`-able).

    Each kernel gets its fastest record whose schedule computes the same as the unscheduled kernel
    (`verified_database`).  The database is applied explicitly (`gos_tvm.graph.compile_lowered`:
    `MetaScheduleApplyDatabase` on the legalized and fused module) rather than through
    `compile_relax`, which was seen to drop the tuned schedules.
    """
    from ..graph import compile_lowered

    tgt = resolve_target(target)
    lowered = prepare_relax(mod, params, tgt)
    if database is not None:
        import_tensor_intrin()  # records of tensorized schedules name TVM's registered intrinsics
        # Only schedules that compute the right thing (see `schedule_is_correct`).
        tasks = ms.relax_integration.extract_tasks(lowered, tgt)
        database = verified_database(database, [t.dispatched[0] for t in tasks])
    return compile_lowered(lowered, tgt, database)


__all__ = ["GuardedRoundRobin", "default_strategy", "default_cost_model", "KernelTuneResult", "tune_primfunc", "tune_primfuncs", "tune_module", "compile_tuned", "prepare_relax",
           "open_database", "best_record", "record_latency", "database_records", "FAILED_RUN_SECS",
           "schedule_is_correct", "best_correct_record", "verified_database"]
