"""Record verification: does a tuned schedule compute what the unscheduled kernel computes?"""
from __future__ import annotations

import math
from typing import Any, Sequence, Union

import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from .database import _workload_mod, database_records, record_latency


def random_args(func: tirx.PrimFunc, seed: int) -> list:
    """Seeded arguments for `func` (numpy arrays): standard normal floats, zeros for integer buffers."""
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
    """Every buffer after running `mod` (built for this host's CPU, as the local device builds it) on a
    copy of `args`."""
    from ..presets import preset

    # The host's own target (its -mcpu): a schedule that LLVM miscompiles only for this CPU's vector
    # units (seen with AVX-512) passed a check built for generic x86-64.
    lib = tvm.compile(mod, target=preset("local").target)
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
    args = random_args(mod["main"], seed)
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
    args = random_args(mod["main"], 0)
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


__all__ = ["random_args", "schedule_is_correct", "best_correct_record", "verified_database"]
