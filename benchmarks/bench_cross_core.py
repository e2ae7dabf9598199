"""Why a kernel costs more inside a model than alone on two threads: its input is in the other
core's cache.  A controlled chain, side by side with the kernels alone, at each thread count.

A Relax function calls 16 elementwise kernels in a chain (``y = 1.0001 * x`` over a (rows, 256)
float32 tensor), each parallel over rows, so with two threads thread 0 computes the first half of
the rows and thread 1 the second.  In the *same* chain every kernel reads row i where the previous
one wrote it; in the *swapped* chain every other kernel computes output row i from input row
rows-1-i, so each thread reads the half the other thread just wrote.  The same work, the same kernel
count; only where the data was written differs.  Each chain is timed by the VM's own loop
(``time_evaluator`` on ``main``), and its two kernels alone, back to back (as MetaSchedule's
runner prices a kernel; x 8 each).  Each thread count runs in a fresh process (TVM sizes its pool
once); the best of `--rounds` rounds.

    python benchmarks/bench_cross_core.py --out benchmarks/results/cross_core

Writes ``<out>/cross_core.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_CHILD = r"""
import json, sys
import numpy as np
import tvm, tvm_ffi
from tvm import relax, te
from tvm.s_tir import Schedule
from gos_tvm.targets import cpu_target

COLS, CHAIN = 256, 16
rows_list, rounds = [int(r) for r in sys.argv[1].split(",")], int(sys.argv[2])
target, dev = cpu_target(), tvm.cpu()


def kernel(rows, reverse):
    a = te.placeholder((rows, COLS), name="A")
    b = te.compute((rows, COLS), (lambda i, j: a[rows - 1 - i, j] * 1.0001) if reverse
                   else (lambda i, j: a[i, j] * 1.0001), name="B")
    sch = Schedule(te.create_prim_func([a, b]))
    i, j = sch.get_loops(sch.get_sblock("B"))
    sch.parallel(i)
    sch.vectorize(j)
    return sch.mod["main"]


def chain(rows, swapped):
    ty = relax.TensorType([rows, COLS], "float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", ty)
    with bb.function("main", [x]):
        with bb.dataflow():
            plain = bb.add_func(kernel(rows, False).with_attr("global_symbol", "plain"), "plain")
            other = bb.add_func(kernel(rows, swapped).with_attr("global_symbol", "other"), "other")
            v = x
            for n in range(CHAIN):
                v = bb.emit(relax.call_tir(plain if n % 2 == 0 else other, relax.Tuple([v]), ty))
            out = bb.emit_output(v)
        bb.emit_func_output(out)
    return tvm.compile(bb.get(), target=target)


out = {"threads": int(tvm_ffi.get_global_func("runtime.NumThreads")()), "rows": {}}
for rows in rows_list:
    x = tvm.runtime.tensor(np.random.default_rng(0).random((rows, COLS)).astype("float32"), dev)
    y = tvm.runtime.tensor(np.zeros((rows, COLS), "float32"), dev)
    row = {}
    for name, swapped in (("same", False), ("swapped", True)):
        ex = chain(rows, swapped)
        vm = relax.VirtualMachine(ex, dev)
        lib = ex.mod.imports[0]
        expected = x.numpy() * np.float32(1.0001) ** CHAIN
        got = vm["main"](x).numpy()
        # the swapped chain reverses the rows CHAIN/2 times: an even number, so the same result
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        chain_s = min(min(vm.time_evaluator("main", dev, number=200, repeat=3)(x).results) for _ in range(rounds))
        alone_s = min(sum(min(lib.time_evaluator(k, dev, number=200, repeat=3)(x, y).results)
                          for k in ("plain", "other")) * CHAIN / 2 for _ in range(rounds))
        row[name] = {"chain_s": chain_s, "kernels_alone_s": alone_s}
    out["rows"][str(rows)] = row
print("RESULT " + json.dumps(out))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="16,64,512", help="tensor rows (x 256 float32 columns)")
    p.add_argument("--threads", default=None, help="thread counts (default: 1 and this host's cores)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results/cross_core")
    args = p.parse_args()

    from gos_tvm.hw.deploy_threads import run_in_fresh_process
    from gos_tvm.threads import THREAD_VARIABLES, host_cores

    counts = sorted({int(t) for t in args.threads.split(",")}) if args.threads else sorted({1, host_cores()})
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    results = {}
    for t in counts:
        results[str(t)] = run_in_fresh_process(_CHILD, (args.rows, args.rounds), {**env, "TVM_NUM_THREADS": str(t)},
                                               f"the chains at TVM_NUM_THREADS={t} failed", timeout=1800)

    print(f"{'threads':>7} {'rows':>5} {'KiB':>5} {'chain':>8} {'whole chain':>12} {'kernels alone':>13} {'extra per kernel':>16}")
    for t, res in results.items():
        for rows, row in res["rows"].items():
            for name, r in row.items():
                extra = (r["chain_s"] - r["kernels_alone_s"]) / 16
                print(f"{t:>7} {rows:>5} {int(rows) * 256 * 4 // 1024:>5} {name:>8} {r['chain_s'] * 1e6:>9.1f} us "
                      f"{r['kernels_alone_s'] * 1e6:>10.1f} us {extra * 1e6:>13.2f} us")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "cross_core.json"
    path.write_text(json.dumps({"rows": args.rows, "rounds": args.rounds, "kernels_per_chain": 16,
                                "results": results}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
