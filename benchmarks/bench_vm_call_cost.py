"""What one kernel call costs the Relax VM, apart from the kernel's own work: chains of N tiny kernels
(a 64-float multiply each, left unfused) compiled for this CPU and timed whole with the VM's
``time_evaluator`` (no Python per call); the slope over N is the VM's cost per kernel call (argument
passing, the kernel's argument checks, the output's allocation), the intercept the cost of a call of
``main`` itself.  A replacement that turns one convolution into k kernels pays k - 1 more of these.

    python benchmarks/bench_vm_call_cost.py [--chains 1 8 16 32] [--out benchmarks/results/vm_call_cost.json]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from gos_tvm.graph import compile_lowered, load_vm
from gos_tvm.hw.presets import resolve_target


def chain(n: int, width: int = 64) -> tvm.IRModule:
    """``main(x) = x * c_1 * ... * c_n``, legalized, one kernel per multiply (FuseOps not run)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, width], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = x
            for i in range(n):
                y = bb.emit(relax.op.multiply(y, relax.const(np.full((width,), 1.0 + 1e-3 * i, "float32"))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()])(bb.get())


def time_chain(n: int, number: int, repeat: int) -> float:
    """Best of `repeat` means of `number` calls of the n-kernel chain's ``main``, in seconds."""
    vm = load_vm(compile_lowered(chain(n), resolve_target("local")))
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    vm.set_input("main", tvm.runtime.tensor(x))
    timer = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=repeat)
    return float(min(timer("main").results))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chains", type=int, nargs="+", default=[1, 8, 16, 32], help="kernels per chain")
    p.add_argument("--number", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "vm_call_cost.json"))
    args = p.parse_args(argv)
    times = {n: time_chain(n, args.number, args.repeat) for n in args.chains}
    slope, intercept = np.polyfit(list(times), list(times.values()), 1)
    print("| kernels in the chain | whole call (us) |\n|---|---|")
    for n, t in times.items():
        print(f"| {n} | {t * 1e6:.2f} |")
    print(f"per kernel call: {slope * 1e6:.3f} us; a call of main: {intercept * 1e6:.2f} us "
          f"(TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'unset')})")
    result = {"chains_s": {str(n): t for n, t in times.items()}, "per_kernel_call_s": float(slope),
              "main_call_s": float(intercept), "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
              "target": str(resolve_target("local"))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
