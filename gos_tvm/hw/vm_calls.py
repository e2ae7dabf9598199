"""Where a compiled model's end-to-end time goes: the calls the Relax VM makes, and each kernel timed
alone on the arguments the model gives it, beside the whole call.

MetaSchedule prices a kernel alone: the runner calls it back to back on the same buffers, so its
inputs and weights sit in the caches of the cores that read them last time.  Inside the model the
kernel reads what the previous kernel wrote, on two threads split across the cores another way:
the part written by the other core has to move (benchmarks/bench_cross_core.py: ~4 us per 64 KiB
here, ~1 us when each core reads what it wrote).  On this 2-core host (Relax VM, TVM 0.27,
Fashion-MNIST models) the difference is small on one thread and large on two: the whole call took
-7 to 31 us more than its 14-34 kernels alone on one thread, 32-97 us more (2-4 us per kernel) on
two, so a replacement that adds kernels saves less at two threads than its records say
(benchmarks/bench_vm_calls.py; README, "Where the time goes").

TVM 0.27's Relax VM has no profiler; its instrument hook (`VirtualMachine.set_instrument`, called
before and after every call instruction) gives the calls and their arguments.  (Timestamps taken in
the hook are not used: its own cost, ~1-2 us per kernel, is the size of what is measured.)
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any

import numpy as np
import tvm
from tvm import relax

# VM calls that are the VM's own bookkeeping (allocation, shape checks, tuples), not kernels
_BUILTIN_PREFIXES = ("vm.builtin.", "relax.")


@dataclasses.dataclass(frozen=True)
class KernelCall:
    """One kernel call of an inference: its symbol, the arguments it was given (inputs and output
    buffers as numpy arrays, before the call) and what its output buffers held after it."""

    symbol: str
    args_before: tuple[Any, ...]
    args_after: tuple[Any, ...]


def _loaded(executable: Any) -> Any:
    """A `.so` path loaded once (every function here needs the VM and the kernel library of it)."""
    import os

    if isinstance(executable, (str, os.PathLike)):
        return tvm.runtime.load_module(os.fspath(executable))
    return executable


def _tensors(arrays, dev) -> list:
    """Recorded arguments as the kernel takes them (arrays as tensors, scalars as they were)."""
    return [tvm.runtime.tensor(a, dev) if isinstance(a, np.ndarray) else a for a in arrays]


def record_calls(executable: Any, inputs: Any, device: Any = None) -> tuple[list[KernelCall], Counter]:
    """Run ``main`` once on `inputs` and record every kernel call (`KernelCall`, in order) and how
    often each VM builtin was called.  `executable`: what `graph.compile_module` returns, a loaded
    `.so` module or a path to one."""
    from ..graph import input_tensors, load_vm

    vm = load_vm(executable, device)
    pending: list[tuple[str, tuple]] = []
    kernels: list[KernelCall] = []
    builtins: Counter = Counter()

    def copy(args) -> tuple:
        return tuple(a.numpy().copy() if isinstance(a, tvm.runtime.Tensor) else a for a in args)

    def instrument(func, symbol, before_run, ret_value, *args):
        if symbol.startswith(_BUILTIN_PREFIXES):
            builtins[symbol] += before_run
        elif before_run:
            pending.append((symbol, copy(args)))
        else:
            symbol_, before = pending.pop()
            kernels.append(KernelCall(symbol_, before, copy(args)))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    vm.set_instrument(instrument)
    vm["main"](*input_tensors(inputs, device))
    return kernels, builtins


def kernel_library(executable: Any) -> tvm.runtime.Module:
    """The module holding the compiled kernels of a Relax executable (in memory or loaded)."""
    executable = _loaded(executable)
    module = executable.mod if isinstance(executable, relax.VMExecutable) else executable
    if not module.imports:
        raise ValueError(f"{executable!r} has no kernel library: give what graph.compile_module returns or an "
                         "exported .so")
    return module.imports[0]


def time_vm_calls(executable: Any, inputs: Any, *, calls: int = 300, number: int = 100, repeat: int = 3,
                  device: Any = None) -> dict:
    """Time one inference of `executable` two ways, in this process at its thread count:

    * ``end_to_end_s``: median of `calls` calls of ``main`` (as `deploy_threads` times a library);
    * per kernel, ``alone_s``: the best of `repeat` runs of `number` back-to-back calls on the
      arguments the model gave it (`time_evaluator`), as MetaSchedule measures a kernel.

    What the first has beyond the sum of the second is the cost of running the kernels as a chain
    (the VM's own calls, and each kernel's inputs no longer where it left them).  Returns
    ``{"end_to_end_s", "alone_sum_s", "kernels": [{"symbol", "alone_s"}], "builtins": {symbol:
    calls per inference}}``."""
    from ..graph import input_tensors, load_vm

    dev = device or tvm.cpu()
    executable = _loaded(executable)
    recorded, builtins = record_calls(executable, inputs, device)
    vm = load_vm(executable, device)
    args = input_tensors(inputs, device)
    main = vm["main"]
    for _ in range(min(calls, 100)):
        main(*args)
    end_to_end = []
    for _ in range(calls):
        t0 = time.perf_counter()
        main(*args)
        end_to_end.append(time.perf_counter() - t0)

    library = kernel_library(executable)
    kernels = []
    for call in recorded:
        timer = library.time_evaluator(call.symbol, dev, number=number, repeat=repeat)
        alone = min(timer(*_tensors(call.args_before, dev)).results)
        kernels.append({"symbol": call.symbol, "alone_s": float(alone)})
    return {"end_to_end_s": float(np.median(end_to_end)),
            "alone_sum_s": float(sum(k["alone_s"] for k in kernels)),
            "kernels": kernels, "builtins": dict(builtins)}


def time_handoffs(executable: Any, inputs: Any, *, calls: int = 400, repeat: int = 5, device: Any = None) -> list[dict]:
    """For every kernel that reads what the kernel before it wrote, what that hand-off costs at
    this process's thread count: the pair called back to back (the second reading the first's
    output buffer) minus each called alone, each the best of `repeat` loops of `calls` (one Python
    loop for all three, so the per-call overhead cancels).  On two threads this is where a model
    loses to its kernels alone when consecutive kernels split their parallel loops differently
    (benchmarks/bench_cross_core.py).

    Returns ``[{"reader", "writer", "bytes", "handoff_s"}]`` in call order."""
    executable = _loaded(executable)
    recorded, _ = record_calls(executable, inputs, device)
    library = kernel_library(executable)
    dev = device or tvm.cpu()

    def best_loop(steps) -> float:
        for _ in range(min(calls, 50)):
            for f, a in steps:
                f(*a)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(calls):
                for f, a in steps:
                    f(*a)
            best = min(best, (time.perf_counter() - t0) / calls)
        return best

    edges = []
    for writer, reader in zip(recorded, recorded[1:]):
        written = writer.args_after[-1]  # a kernel's last argument is its output (destination passing)
        if not isinstance(written, np.ndarray):
            continue
        reads = [i for i, a in enumerate(reader.args_before[:-1])
                 if isinstance(a, np.ndarray) and a.shape == written.shape and np.array_equal(a, written)]
        if not reads:
            continue
        w_args, r_args = _tensors(writer.args_before, dev), _tensors(reader.args_before, dev)
        w, r = library[writer.symbol], library[reader.symbol]
        alone = best_loop([(w, w_args)]) + best_loop([(r, r_args)])
        r_args[reads[0]] = w_args[-1]
        pair = best_loop([(w, w_args), (r, r_args)])
        edges.append({"reader": reader.symbol, "writer": writer.symbol, "bytes": int(written.nbytes),
                      "handoff_s": pair - alone})
    return edges


__all__ = ["KernelCall", "record_calls", "kernel_library", "time_vm_calls", "time_handoffs"]
