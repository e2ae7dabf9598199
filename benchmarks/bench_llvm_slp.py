"""What disabling LLVM's SLP vectorizer costs tuned kernels: every workload's best schedule in a
MetaSchedule database, built with our targets' ``cl-opt`` (``-vectorize-slp=false``,
`gos_tvm.targets.LLVM_CL_OPT`) and without it, timed alone on this host and compared numerically.

Our targets turn SLP off because TVM 0.27's bundled LLVM fails module verification on some small
loop nests with it on ("Instruction does not dominate all uses").  This measures what that costs.

    python benchmarks/bench_llvm_slp.py --database work/database --out benchmarks/results/llvm_slp

Writes ``<out>/llvm_slp.json`` (a row per workload: its buffers' shapes, the record's tuning-time
latency, seconds with SLP off and on, whether both compute the same) and prints a table.  Set
``TVM_NUM_THREADS`` to the thread count the database was tuned at.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np


def time_kernel(mod, target, args: list[np.ndarray], number: int, repeat: int) -> tuple[float | None, list, str]:
    """(best of `repeat` mean seconds over `number` calls, output buffers, build error or '')."""
    import tvm

    try:
        lib = tvm.compile(mod, target=target).jit()
    except Exception as err:  # the LLVM verifier failure this benchmark is about
        return None, [], str(err).splitlines()[0][:200]
    tensors = [tvm.runtime.tensor(a.copy()) for a in args]
    lib["main"](*tensors)
    outputs = [t.numpy() for t in tensors]
    timer = lib.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
    return float(min(timer(*tensors).results)), outputs, ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database", required=True, help="a work directory's MetaSchedule database folder")
    p.add_argument("--number", type=int, default=200)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/llvm_slp")
    args = p.parse_args()

    import tvm
    from bench_models import machine_info

    from gos_tvm.hw.metaschedule._fastimport import import_tensor_intrin
    from gos_tvm.hw.presets import preset
    from gos_tvm.hw.tuning.database import open_database, record_latency
    from gos_tvm.hw.tuning.verify import random_args

    if not Path(args.database, "database_tuning_record.json").is_file():
        raise SystemExit(f"--database {args.database}: no database_tuning_record.json there; pass the "
                         "folder a run tuned into (e.g. <work-dir>/database)")
    import_tensor_intrin()  # records of tensorized schedules name TVM's registered intrinsics
    best: dict[str, tuple[float, object]] = {}
    for record in open_database(args.database).get_all_tuning_records():
        key, latency = str(record.workload.mod), record_latency(record)
        if latency < best.get(key, (np.inf, None))[0]:
            best[key] = (latency, record)

    slp_off = preset("local").target
    config = dict(slp_off.export())
    config.pop("cl-opt")
    slp_on = tvm.target.Target(config)
    rows = []
    for latency, record in sorted(best.values(), key=lambda item: item[0]):
        sch = tvm.s_tir.Schedule(record.workload.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        inputs = random_args(sch.mod["main"], 0)
        off, out_off, err_off = time_kernel(sch.mod, slp_off, inputs, args.number, args.repeat)
        on, out_on, err_on = time_kernel(sch.mod, slp_on, inputs, args.number, args.repeat)
        same = bool(out_off and out_on and all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(out_off, out_on)))
        rows.append({"shapes": [list(a.shape) for a in inputs], "record_s": latency, "slp_off_s": off,
                     "slp_on_s": on, "same_outputs": same, "build_error": err_off or err_on or None})
        print(f"{off * 1e6 if off else float('nan'):8.2f} {on * 1e6 if on else float('nan'):8.2f} us  "
              f"{'same' if same else 'DIFFERENT/FAILED'}  {rows[-1]['shapes']}", flush=True)
    both = [r for r in rows if r["slp_off_s"] and r["slp_on_s"]]
    summary = {"workloads": len(rows), "built_both": len(both),
               "sum_slp_off_s": sum(r["slp_off_s"] for r in both), "sum_slp_on_s": sum(r["slp_on_s"] for r in both),
               "different_outputs": sum(not r["same_outputs"] for r in both),
               "build_failures": [r for r in rows if r["build_error"]]}
    print(f"{len(both)} of {len(rows)} kernels built both ways: summed {summary['sum_slp_off_s'] * 1e6:.1f} us with "
          f"SLP off, {summary['sum_slp_on_s'] * 1e6:.1f} us on; {summary['different_outputs']} differ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llvm_slp.json").write_text(json.dumps({
        "machine": machine_info(), "command": shlex.join([sys.executable, *sys.argv]),
        "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"), "database": args.database,
        "target_slp_off": str(slp_off), "summary": summary, "rows": rows}, indent=1))
    print(f"wrote {out / 'llvm_slp.json'}")


if __name__ == "__main__":
    main()
