"""What replacing part of a model changes in its tuning tasks.

A replacement is judged by the kernels the *model* runs, not by the replaced operator compiled on
its own: in the model an operator is fused with its epilogue (bias, residual add, ReLU), runs in
the model's layout and shares tuned records with identical layers.  Stand-alone, the same
convolution tuned to 270 us where the model's fused task `fused_conv2d1_add_relu` ran in 61 us
(resnet18-style on Fashion-MNIST), so a candidate that was "6x faster" than the stand-alone site
ran slower than the original in the model.

`task_delta` compares the tasks MetaSchedule extracts from the original and from a variant (the
original with one site replaced): the tasks the variant no longer runs are the site as the model
runs it, the new ones are the replacement as the model runs it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import tvm_ffi


def workload_key(task: Any) -> int:
    """A key of an extracted task's workload: structurally equal workloads share it (as they share
    records in a database opened with module_equality="structural")."""
    return int(tvm_ffi.structural_hash(task.dispatched[0]))


@dataclass
class TaskDelta:
    """removed: (task of the original, how many fewer times the variant runs it per model run);
    added: (task of the variant, how many more times it runs than in the original)."""

    removed: list[tuple[Any, int]] = field(default_factory=list)
    added: list[tuple[Any, int]] = field(default_factory=list)

    @staticmethod
    def seconds(items: Sequence[tuple[Any, int]], latency: Callable[[Any], float]) -> float:
        """What `items` (`removed` or `added`) cost per model run: sum of count x latency(task)."""
        return float(sum(count * latency(task) for task, count in items))

    @staticmethod
    def names(items: Sequence[tuple[Any, int]]) -> list[str]:
        return [task.task_name if count == 1 else f"{task.task_name} x{count}" for task, count in items]


def task_delta(before: Sequence[Any], after: Sequence[Any]) -> TaskDelta:
    """The difference between two lists of extracted tasks (`ms.relax_integration.extract_tasks`),
    counting each workload (structurally) with its weight: tasks of `before` that `after` runs
    fewer times, and tasks of `after` that it runs more times."""
    tasks_before = {workload_key(t): t for t in before}
    tasks_after = {workload_key(t): t for t in after}
    calls_before = Counter({k: int(t.weight) for k, t in tasks_before.items()})
    calls_after = Counter({k: int(t.weight) for k, t in tasks_after.items()})
    return TaskDelta(removed=[(tasks_before[k], n) for k, n in (calls_before - calls_after).items()],
                     added=[(tasks_after[k], n) for k, n in (calls_after - calls_before).items()])


__all__ = ["TaskDelta", "task_delta", "workload_key"]
