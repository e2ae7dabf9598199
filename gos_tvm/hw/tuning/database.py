"""Queries on a MetaSchedule tuning database: the records of a workload, the best one, re-timing
the best, and what the best records of a module's tasks add up to."""
from __future__ import annotations

import math
import os
import shutil
from typing import Any, Callable, Optional, Sequence, Union

import tvm
import tvm_ffi
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

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

def measured_trials(database: ms.database.Database, func: Union[tirx.PrimFunc, tvm.IRModule]) -> int:
    """How many distinct candidates of `func`'s workload were measured into `database` (failed ones
    included): its tuning trials so far.  `remeasure_best` commits the best schedule again as a new
    record with the same trace; counting distinct traces keeps those re-timings out, so a resumed
    per-task budget continues from the trials actually spent."""
    return len({str(r.trace) for r in database_records(database, func)})


def copy_records(source: ms.database.Database, target: ms.database.Database,
                 keep: Optional[Callable[[Any], bool]] = None) -> int:
    """Commit every tuning record of `source` (those `keep(record)` accepts, if given) into
    `target` (a warm start from an earlier run's database); returns how many were copied."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    count = 0
    for rec in source.get_all_tuning_records():
        if keep is not None and not keep(rec):
            continue
        wl = target.commit_workload(rec.workload.mod)
        target.commit_tuning_record(TuningRecord(rec.trace, wl, rec.run_secs, rec.target, rec.args_info))
        count += 1
    return count


def kernel_workload(func: Union[tirx.PrimFunc, tvm.IRModule], symbol: str = "main") -> tvm.IRModule:
    """The workload module MetaSchedule stores for a kernel tuned under the name `symbol`
    (`tune_primfuncs` names each kernel by its task name)."""
    if isinstance(func, tvm.IRModule):
        return func
    return _workload_mod(func.with_attr("global_symbol", symbol))


def remeasure_best(database: ms.database.Database, workloads: Sequence, target: Any, builder: Any,
                   runner: Any, *, serial_twins: bool = False) -> int:
    """Measure each workload's best schedule again, in one batch, and commit the result as a
    new record.  With `serial_twins`, each one's serial twin (the same schedule without its
    parallel loop: `gos_tvm.hw.metaschedule.serial_kernels.serial_twin`) is measured in the same
    batch and committed too, so the faster of the two is what a model compiles.  Returns how many
    records were committed.

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
        mod = kernel_workload(mod)
        if not database.has_workload(mod):
            continue
        top = database.get_top_k(database.commit_workload(mod), 1)
        if top:
            best.append(top[0])
    if not best:
        return 0
    schedules = []  # (the record measured again or twinned, the scheduled module, its trace)
    for rec in best:
        sch = Schedule(rec.workload.mod)
        rec.trace.apply_to_schedule(sch, remove_postproc=False)
        schedules.append((rec, sch.mod, rec.trace))
        if serial_twins:
            from ..metaschedule.serial_kernels import serial_twin, target_postprocs

            twin = serial_twin(rec, target_postprocs(target, rec.workload.mod))
            if twin is not None:
                schedules.append((rec, twin.mod, twin.trace))
    built = builder.build([BuilderInput(mod, target) for _, mod, _ in schedules])
    todo = [(rec, trace, b) for (rec, _, trace), b in zip(schedules, built) if b.error_msg is None]
    count = 0
    try:
        futures = runner.run([RunnerInput(b.artifact_path, "cpu", list(rec.args_info)) for rec, _, b in todo])
        for (rec, trace, _), fut in zip(todo, futures):
            res = fut.result()
            if res.error_msg is None and res.run_secs:
                database.commit_tuning_record(TuningRecord(trace, rec.workload, [float(x) for x in res.run_secs],
                                                           rec.target, list(rec.args_info)))
                count += 1
    finally:
        # Outside a tuning session no RemoveBuildArtifact callback removes the libraries.
        for _, _, b in todo:
            shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    return count


def database_kernel_sum(prepared: tvm.IRModule, target: Any, database: ms.database.Database) -> float | None:
    """What the database's best records add up to for one run of the module: sum over its tuning
    tasks of (best measured latency x times the task runs); None if a task has no record."""
    total = 0.0
    for task in ms.relax_integration.extract_tasks(prepared, target):
        lat, _ = best_record(database, task.dispatched[0])
        if not math.isfinite(lat):
            return None  # a kernel without a record: no database estimate for the module (JSON has no NaN)
        total += task.weight * lat
    return total


def task_table(prepared: tvm.IRModule, target: Any, database: ms.database.Database) -> list[dict]:
    """One row per tuning task of a prepared module: `task` (its name), `weight` (calls per model
    run), `trials` (`measured_trials`), `latency_s` (best record; None without one), `flops`
    (TVM's `estimate_tir_flops`) and `gflops` (GFLOP/s at the best record)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    rows = []
    for task in ms.relax_integration.extract_tasks(prepared, target):
        wl = task.dispatched[0]
        lat, _ = best_record(database, wl)
        try:
            flops = float(estimate_tir_flops(wl))
        except Exception:  # noqa: BLE001 - a kernel TVM cannot count (e.g. data-dependent loops)
            flops = None
        ok = math.isfinite(lat)
        rows.append({"task": task.task_name, "weight": int(task.weight), "trials": measured_trials(database, wl),
                     "latency_s": lat if ok else None, "flops": flops,
                     "gflops": flops / lat / 1e9 if ok and flops and lat > 0 else None})
    return rows


__all__ = ["FAILED_RUN_SECS", "open_database", "record_latency", "database_records", "best_record",
           "measured_trials", "task_table", "copy_records", "kernel_workload", "remeasure_best", "database_kernel_sum"]
