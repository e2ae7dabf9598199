"""A MetaSchedule design space in which each kernel may also run on one thread.

MetaSchedule's CPU design space always parallelizes: its `ParallelizeVectorizeUnroll` rule marks
every kernel's outer loops parallel (up to 16 jobs per core) and `AddRFactor` splits small
reductions for the same purpose.  So a tuner never measures the serial version of a kernel, and
on two threads every kernel, however short, wakes the other thread and hands its output across
cores.  An adapted model is many short kernels: the vgg-style one ran fastest on one thread while
its original ran fastest on two (benchmarks/results/fashion_mnist_row_split_vgg), so a deployment
had to pick one thread count for all kernels.

`serial_or_parallel_space` is the union of the target's own space and the same space with those
two rules' parallelism switched off (``max_jobs_per_core=-1``, TVM's documented switch): the
evolutionary search and its cost model then decide per kernel, by measuring it at the runtime's
thread count, whether it runs on one thread or on all of them.  A serial kernel needs no thread
pool launch, so a two-thread model can mix both.
"""
from __future__ import annotations

from typing import Sequence

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.schedule_rule import AddRFactor, ParallelizeVectorizeUnroll


def target_schedule_rules(target: tvm.target.Target) -> list:
    """The schedule rules MetaSchedule's "from-target" picks for `target` (resolved by TVM itself:
    a design space initialized by a tuning context on an empty module)."""
    from ._fastimport import import_tensor_intrin

    import_tensor_intrin()  # a TuneContext imports TVM's tensor intrinsics: ~1 s this way, not 70
    space = ms.space_generator.PostOrderApply()
    ms.TuneContext(mod=tvm.IRModule(), target=target, space_generator=space)
    return list(space.sch_rules)


def serial_schedule_rules(rules: Sequence) -> list:
    """`rules` with parallelism switched off: `ParallelizeVectorizeUnroll` keeps its vectorization
    and unrolling, `AddRFactor` (which only exists to parallelize reductions) is dropped."""
    serial = []
    for rule in rules:
        if isinstance(rule, ParallelizeVectorizeUnroll):
            serial.append(ParallelizeVectorizeUnroll(max_jobs_per_core=-1,
                                                     max_vectorize_extent=int(rule.max_vectorize_extent),
                                                     unroll_max_steps=[int(s) for s in rule.unroll_max_steps],
                                                     unroll_explicit=bool(rule.unroll_explicit)))
        elif not isinstance(rule, AddRFactor):
            serial.append(rule)
    return serial


def serial_or_parallel_space(target: tvm.target.Target, postprocs="from-target"):
    """MetaSchedule's design space for `target` united with its serial twin (see the module
    docstring); `postprocs` are those every candidate passes (e.g. with `RowSplit` appended).  Pass
    it as `space=` to a tuning session."""
    rules = target_schedule_rules(target)
    return ms.space_generator.SpaceGeneratorUnion(
        [ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs="from-target"),
         ms.space_generator.PostOrderApply(sch_rules=serial_schedule_rules(rules), postprocs=postprocs,
                                           mutator_probs="from-target")],
        sch_rules=rules, postprocs=postprocs, mutator_probs="from-target")


def record_is_serial(record) -> bool:
    """Whether a tuning record's schedule has no parallel loop (it came from the serial half)."""
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


__all__ = ["target_schedule_rules", "serial_schedule_rules", "serial_or_parallel_space", "record_is_serial"]
