"""Serial twins: a tuned kernel's best schedule timed again without its parallel loop.

MetaSchedule's CPU design space parallelizes every kernel whose loops allow it: its
`ParallelizeVectorizeUnroll` rule marks the kernel ``meta_schedule.parallel`` and a postprocessor
turns its outer loops into one parallel loop.  A tuner therefore never measures the serial version
of a kernel that could be parallel, and on two threads every such kernel, however short, wakes the
other thread and hands its output across cores.  An adapted model is many short kernels: the
vgg-style one ran fastest on one thread while its original ran fastest on two
(benchmarks/results/fashion_mnist_row_split_vgg), so a deployment had to pick one thread count for
all kernels.

`serial_twin` replays a tuning record's trace without that one mark (tiling, vectorization,
unrolling and compute locations unchanged) and applies the postprocessors as a search does; timing
it beside the record (`gos_tvm.hw.tuning.database.remeasure_best(serial_twins=True)`) lets the
faster of the two be what the model compiles, per kernel.  A serial kernel needs no thread-pool
launch, so a two-thread model can mix both.

Why not search the serial space as well (a `SpaceGeneratorUnion` of the stock space and one with
parallelism off)?  Tried (benchmarks/results/serial_kernels): with the same trials per task the
union spent half its candidates on serial schedules of the long convolutions and tuned them worse
(digits original: records 59.5 -> 73.8 us, 65.0 -> 76.5 us per call on two threads).
"""
from __future__ import annotations

from typing import Optional, Sequence

import tvm
from tvm.s_tir import meta_schedule as ms


def _is_parallel_mark(inst) -> bool:
    return inst.kind.name == "Annotate" and list(inst.attrs) == ["meta_schedule.parallel"]


def target_postprocs(target: tvm.target.Target, mod: tvm.IRModule, postprocs="from-target") -> list:
    """`postprocs` (default: the target's own), initialized for `mod` on `target` as a tuning
    session initializes them."""
    from ._fastimport import import_tensor_intrin

    import_tensor_intrin()  # a TuneContext imports TVM's tensor intrinsics: ~1 s this way, not 70
    space = ms.space_generator.PostOrderApply(postprocs=postprocs)
    ms.TuneContext(mod=mod, target=target, space_generator=space)
    return list(space.postprocs)


def record_is_serial(record) -> bool:
    """Whether a tuning record's schedule has no parallel loop."""
    from .row_split import _replayed

    sch = _replayed(record)
    func_name = next(gv.name_hint for gv in sch.mod.get_global_vars())
    stack = [sch.get_sblock("root", func_name=func_name)]
    while stack:
        block = stack.pop()
        if any(sch.get(loop).kind == tvm.tirx.ForKind.PARALLEL for loop in sch.get_loops(block)):
            return False
        stack.extend(sch.get_child_blocks(block))
    return True


def is_serial_twin(record) -> bool:
    """Whether a tuning record is a serial twin (`serial_twin`'s trace): it lacks the parallel mark
    that MetaSchedule's CPU space puts on every kernel it schedules."""
    return not any(_is_parallel_mark(inst) for inst in record.trace.insts)


def serial_twin(record, postprocs: Sequence) -> Optional[tvm.s_tir.Schedule]:
    """The schedule of `record` without its parallel loop: its trace replayed without the
    ``meta_schedule.parallel`` mark, then `postprocs` (initialized: `target_postprocs`) applied
    as a search applies them.  None when the record is serial already or a postprocessor rejects
    the result."""
    if record_is_serial(record):
        return None
    trace = record.trace
    insts = list(trace.insts)
    end = next((i for i, inst in enumerate(insts) if inst.kind.name == "EnterPostproc"), len(insts))
    kept = [inst for inst in insts[:end] if not _is_parallel_mark(inst)]
    if len(kept) == end:
        return None
    decisions = {inst: d for inst, d in trace.decisions.items() if any(inst.same_as(k) for k in kept)}
    sch = tvm.s_tir.Schedule(record.workload.mod)
    tvm.s_tir.Trace(kept, decisions).apply_to_schedule(sch, remove_postproc=True)
    sch.enter_postproc()
    return sch if all(p.apply(sch) for p in postprocs) else None


__all__ = ["target_postprocs", "record_is_serial", "is_serial_twin", "serial_twin"]
