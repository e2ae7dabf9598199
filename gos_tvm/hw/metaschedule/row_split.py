"""A MetaSchedule postprocessor that keeps a model's kernels splitting their work across threads alike.

MetaSchedule schedules every kernel on its own, so one kernel's parallel loop may hand each thread
a band of output rows and the next kernel's a band of columns or channels: then each thread reads
what the *other* core just wrote, and on this 2-core host that hand-off costs ~4 us per 64 KiB
(benchmarks/bench_cross_core.py), about all of what two threads lose against one on the small
kernels of an adapted model (`gos_tvm.hw.vm_calls.time_handoffs`).  `RowSplit` rejects a candidate
schedule unless its outermost parallel loop hands thread k the k-th band of the output's rows:
consecutive kernels then read mostly what their own core wrote (a 3x3 convolution reads one halo
row from the other core).

The check reads the scheduled TIR, not text: the block writing the kernel's output, its outermost
parallel loop, and the output row index the block binds, evaluated at the first iteration of each
thread's chunk (TVM's CPU runtime hands thread k the k-th contiguous chunk of ceil(extent / threads)
iterations).  The rows must increase from chunk to chunk.
"""
from __future__ import annotations

from typing import Optional

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.postproc import PyPostproc

from ...graph.layout import current_conv_layout

#: Index of the row axis (H) in a 4-D activation, per convolution layout.
ROW_AXIS = {"NCHW": 2, "NHWC": 1}

_block_realize = tvm_ffi.get_global_func("s_tir.schedule.GetSBlockRealize")


def _value(expr: tirx.PrimExpr, at: dict) -> Optional[int]:
    analyzer = tvm.sym.Analyzer()
    for var, value in at.items():
        analyzer.bind(var, tirx.const(value, str(var.ty)))  # TVM 0.27: a Var's dtype is its `ty`
    out = analyzer.simplify(expr)
    return int(out) if isinstance(out, tirx.IntImm) else None


def _output_block(sch: tvm.s_tir.Schedule, func_name: str):
    """The block that writes the kernel's output buffer (the PrimFunc's last parameter), or None."""
    out = sch.mod[func_name].params[-1]  # TVM 0.27: a PrimFunc's parameters are its buffers
    if len(getattr(out, "shape", ())) != 4:
        return None, None
    stack = [sch.get_sblock("root", func_name=func_name)]
    while stack:
        block = stack.pop()
        for child in sch.get_child_blocks(block):
            if any(region.source.same_as(out) for region in sch.get(child).writes):
                return child, out
            stack.append(child)
    return None, out


def splits_rows(sch: tvm.s_tir.Schedule, row_axis: int, threads: int) -> bool:
    """Whether `sch`'s outermost parallel loop hands each of `threads` threads a band of output rows
    (True also where the question does not arise: no 4-D output, no parallel loop over the output,
    fewer rows or parallel iterations than threads)."""
    func_name = next(gv.name_hint for gv in sch.mod.get_global_vars())
    block, out = _output_block(sch, func_name)
    if block is None or int(out.shape[row_axis]) < threads:
        return True
    loops = [sch.get(loop) for loop in sch.get_loops(block)]
    parallel = next((loop for loop in loops if loop.kind == tirx.ForKind.PARALLEL), None)
    if parallel is None or int(parallel.extent) < threads:
        return True
    extent = int(parallel.extent)
    chunk = -(-extent // threads)
    row = _block_realize(sch, block).iter_values[row_axis]
    others = {loop.loop_var: 0 for loop in loops if not loop.same_as(parallel)}
    starts = [_value(row, {**others, parallel.loop_var: k * chunk}) for k in range(threads) if k * chunk < extent]
    return None not in starts and all(a < b for a, b in zip(starts, starts[1:]))


def _replayed(record) -> tvm.s_tir.Schedule:
    """A tuning record's schedule: its trace replayed, postprocessing included, on its workload."""
    sch = tvm.s_tir.Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch


def record_splits_rows(record, row_axis: int, threads: int) -> bool:
    """Whether a MetaSchedule tuning record's schedule passes `splits_rows`."""
    return splits_rows(_replayed(record), row_axis, threads)


@derived_object
class RowSplit(PyPostproc):
    """Reject schedules whose parallel loop does not split the output's rows among the target's
    threads (`splits_rows`).  Append it to a target's postprocessors (it checks the parallel loop
    that `RewriteParallelVectorizeUnroll` makes): `Postproc.create("llvm") + [RowSplit()]`, as
    `row_split_space` does."""

    def __init__(self, layout: Optional[str] = None, threads: Optional[int] = None) -> None:
        super().__init__()
        self.layout = layout or current_conv_layout()
        if self.layout not in ROW_AXIS:
            raise ValueError(f"RowSplit: unknown layout {self.layout!r}; use one of {sorted(ROW_AXIS)}")
        self.threads = threads

    def _initialize_with_tune_context(self, context) -> None:
        if self.threads is None:
            self.threads = int(context.target.attrs.get("num-cores", 1))

    def _passes(self, sch: tvm.s_tir.Schedule) -> bool:
        # One thread (or a target that does not say) has nothing to split.
        return self.threads is None or self.threads < 2 or splits_rows(sch, ROW_AXIS[self.layout], self.threads)

    def apply(self, sch: tvm.s_tir.Schedule) -> bool:
        return self._passes(sch)

    def clone(self) -> "RowSplit":
        return RowSplit(self.layout, self.threads)

    def accepts(self, record) -> bool:
        """Whether this postprocessor would have let `record`'s schedule through (to keep another
        run's records out of a RowSplit run: `copy_records(..., keep=RowSplit(...).accepts)`)."""
        return self._passes(_replayed(record))


def row_split_postprocs(target: tvm.target.Target, layout: Optional[str] = None) -> list:
    """`target`'s own postprocessors with `RowSplit` appended."""
    return ms.postproc.Postproc.create(str(target.kind.name)) + [RowSplit(layout)]


def row_split_space(target: tvm.target.Target, layout: Optional[str] = None):
    """MetaSchedule's design space for `target` (its own schedule rules, mutators and
    postprocessors) with `RowSplit` appended: pass it as `space=` to a tuning session."""
    return ms.space_generator.PostOrderApply(sch_rules="from-target", mutator_probs="from-target",
                                             postprocs=row_split_postprocs(target, layout))


__all__ = ["RowSplit", "splits_rows", "record_splits_rows", "row_split_postprocs", "row_split_space", "ROW_AXIS"]
