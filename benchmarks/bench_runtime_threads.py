"""What TVM's runtime thread setting costs: one parallel kernel launch, and whole compiled models,
under TVM's own default, ``TVM_NUM_THREADS=1`` and ``TVM_NUM_THREADS=<cores>`` (what `gos_tvm`
sets on import, see `gos_tvm.threads`), side by side in one run -- and onnxruntime on the same
models at 1 and <cores> threads, so each runtime can be compared at the thread count it runs best at.

Each setting runs in a fresh process that imports TVM only (not gos_tvm, which would set the
variable): TVM sizes its thread pool once, from the environment, at the first parallel launch.
onnxruntime runs in fresh processes of its own (a TVM pool spinning beside it would slow it).

    python benchmarks/bench_runtime_threads.py
    python benchmarks/bench_runtime_threads.py --library gos_work/adapted.so 1,1,16,16
    python benchmarks/bench_runtime_threads.py --library work/vgg_original.so 1,32,32,1 \
        --library work/vgg_adapted.so 1,32,32,1 --onnx work/vgg.onnx 1,1,32,32 --out results/threads

Kernel: y = 2x over a (1, 14, 14, 32) float32 tensor, compiled for this host's CPU, once with its
three outer loops fused into a parallel loop and once serial; time per call from
``time_evaluator`` (medians of `--repeat` runs of 200 calls).  A `--library` is an exported Relax
library (``.so``) run by the Relax VM on a random input of the given shape, timed two ways: the
VM's own loop (``time_evaluator``) and one Python call at a time (what a user's program does; the
median over `--repeat` runs of 200 calls).  An `--onnx` model is timed one Python call at a time.

Writes ``<out>/runtime_threads.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

_CHILD = r"""
import json, sys
import numpy as np
import tvm, tvm_ffi
from tvm import te
from tvm.s_tir import Schedule
from tvm.target import codegen

repeat, library, shape, cores = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
dev = tvm.cpu()
out = {"runtime_threads": int(tvm_ffi.get_global_func("runtime.NumThreads")())}
target = {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": cores}

def per_call_us(f, *args):
    r = f.time_evaluator(f.entry_name if hasattr(f, "entry_name") else "main", dev, number=200,
                         repeat=repeat, min_repeat_ms=0)(*args)
    return float(np.median(r.results)) * 1e6

a_np = np.random.default_rng(0).standard_normal((1, 14, 14, 32)).astype("float32")
A = te.placeholder(a_np.shape, name="A")
B = te.compute(A.shape, lambda *i: A[i] * 2.0, name="B")
for parallel in (False, True):
    sch = Schedule(te.create_prim_func([A, B]))
    loops = sch.get_loops(sch.get_sblock("B"))
    outer = sch.fuse(*loops[:3])
    if parallel:
        sch.parallel(outer)
    sch.vectorize(loops[3])
    lib = tvm.compile(sch.mod, target=tvm.target.Target(target)).mod
    a, b = tvm.runtime.tensor(a_np), tvm.runtime.tensor(np.zeros_like(a_np))
    out["parallel_kernel_us" if parallel else "serial_kernel_us"] = per_call_us(lib, a, b)
if library != "-":
    import time
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(library), dev)
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal([int(s) for s in shape.split(",")]).astype("float32"))
    r = vm.time_evaluator("main", dev, number=200, repeat=repeat)(x)
    out["library_us"] = float(np.median(r.results)) * 1e6
    main = vm["main"]
    for _ in range(200):
        main(x)
    calls = []
    for _ in range(repeat * 200):
        t0 = time.perf_counter()
        main(x)
        calls.append(time.perf_counter() - t0)
    out["library_call_us"] = float(np.median(calls)) * 1e6
print("RESULT " + json.dumps(out))
"""

_ONNX_CHILD = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort

repeat, path, shape, threads = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal([int(s) for s in shape.split(",")]).astype("float32")
feed = {session.get_inputs()[0].name: x}
for _ in range(200):
    session.run(None, feed)
calls = []
for _ in range(repeat * 200):
    t0 = time.perf_counter()
    session.run(None, feed)
    calls.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({"call_us": float(np.median(calls)) * 1e6}))
"""


def _child(code: str, args: list[str], env: dict[str, str], what: str) -> dict:
    from gos_tvm.hw.deploy_threads import run_in_fresh_process

    try:
        return run_in_fresh_process(code, args, env, f"measurement of {what} failed")
    except RuntimeError as err:
        raise SystemExit(str(err)) from None


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}


def measure(setting: dict[str, str], repeat: int, library: str, shape: str, cores: int) -> dict:
    """The kernels and `library` in a fresh process under the TVM thread `setting` (environment)."""
    return _child(_CHILD, [str(repeat), library, shape, str(cores)], {**_clean_env(), **setting},
                  f"{library} under {setting or 'TVM default'}")


def measure_onnx(path: str, shape: str, threads: int, repeat: int) -> float:
    """Median per-call time (us) of the ONNX model at `path` in onnxruntime on `threads` threads, in a fresh process."""
    return _child(_ONNX_CHILD, [str(repeat), path, shape, str(threads)], _clean_env(),
                  f"{path} in onnxruntime on {threads} threads")["call_us"]


def best_settings(rows: list[dict], onnx: dict) -> list[dict]:
    """Each library and ONNX model at the thread setting it runs fastest at (per-call times), and each
    library's ratio to the fastest onnxruntime (> 1: the library is faster)."""
    best_ort = min((v for runs in onnx.values() for v in runs.values()), default=None)
    out = []
    for so in rows[0]["libraries_call_us"]:
        setting = min(rows, key=lambda r: r["libraries_call_us"][so])
        us = setting["libraries_call_us"][so]
        out.append({"runtime": Path(so).name, "setting": setting["setting"], "call_us": us,
                    "fastest_onnxruntime_over_this": best_ort / us if best_ort else None})
    for path, runs in onnx.items():
        threads, us = min(runs.items(), key=lambda kv: kv[1])
        out.append({"runtime": f"onnxruntime {Path(path).name}", "setting": f"{threads} threads", "call_us": us,
                    "fastest_onnxruntime_over_this": best_ort / us})
    return out


def main() -> int:
    from bench_models import machine_info

    from gos_tvm.threads import host_cores

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", nargs=2, metavar=("SO", "INPUT_SHAPE"), action="append", default=[],
                   help="an exported Relax library and its input shape (e.g. 1,1,16,16); repeatable")
    p.add_argument("--onnx", nargs=2, metavar=("ONNX", "INPUT_SHAPE"), action="append", default=[],
                   help="an ONNX model and its input shape, timed in onnxruntime at 1 and <cores> threads; repeatable")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2, help="each setting is measured this many times, interleaved")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()
    cores = host_cores()
    settings = {"TVM default (no TVM_NUM_THREADS)": {}, "TVM_NUM_THREADS=1": {"TVM_NUM_THREADS": "1"},
                f"TVM_NUM_THREADS={cores} (gos_tvm)": {"TVM_NUM_THREADS": str(cores)}}
    libraries = args.library or [["-", "-"]]
    rows = []
    for name, setting in settings.items():
        rows.append({"setting": name, "env": setting, "runs": []})
    onnx_threads = sorted({1, cores})
    onnx_runs: dict[str, dict[int, list[float]]] = {path: {t: [] for t in onnx_threads} for path, _ in args.onnx}
    for _ in range(args.rounds):  # interleaved: drift on a shared host hits every setting alike
        for row in rows:
            run = {}
            for so, shape in libraries:
                result = measure(row["env"], args.repeat, so, shape, cores)
                if so != "-":
                    run.setdefault("libraries", {})[so] = result.pop("library_us")
                    run.setdefault("libraries_call", {})[so] = result.pop("library_call_us")
                run.update(result)
            row["runs"].append(run)
        for path, shape in args.onnx:
            for t in onnx_threads:
                onnx_runs[path][t].append(measure_onnx(path, shape, t, args.repeat))
    named = [so for so, _ in libraries if so != "-"]
    for row in rows:
        runs = row["runs"]
        row["runtime_threads"] = runs[0]["runtime_threads"]
        for key in ("serial_kernel_us", "parallel_kernel_us"):
            row[key] = min(r[key] for r in runs)
        row["libraries_us"] = {so: min(r["libraries"][so] for r in runs) for so in named}
        row["libraries_call_us"] = {so: min(r["libraries_call"][so] for r in runs) for so in named}
    print(f"| setting | TVM threads | serial kernel (us) | parallel kernel (us) |"
          + "".join(f" {Path(so).name}: VM loop / per call (us) |" for so in named))
    print("|---|---|---|---|" + "---|" * len(named))
    for row in rows:
        print(f"| {row['setting']} | {row['runtime_threads']} | {row['serial_kernel_us']:.2f} | "
              f"{row['parallel_kernel_us']:.2f} |"
              + "".join(f" {row['libraries_us'][so]:.1f} / {row['libraries_call_us'][so]:.1f} |" for so in named))
    onnx = {path: {t: min(v) for t, v in runs.items()} for path, runs in onnx_runs.items()}
    for path, runs in onnx.items():
        print(f"onnxruntime {Path(path).name}: " + ", ".join(f"{t} thread(s) {us:.1f} us" for t, us in runs.items()))
    best = best_settings(rows, onnx) if named or onnx else []
    if best:
        print("\n| runtime | fastest setting | per call (us) | fastest onnxruntime / this |\n|---|---|---|---|")
        for b in best:
            ratio = b["fastest_onnxruntime_over_this"]
            print(f"| {b['runtime']} | {b['setting']} | {b['call_us']:.1f} | "
                  + ("n/a" if ratio is None else f"{ratio:.2f}x") + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "note": "per call, best of the interleaved rounds (each a median of --repeat runs of 200 calls); "
                       "libraries_us: the VM's own loop (time_evaluator), libraries_call_us: one Python call at a time",
               "rows": rows, "onnxruntime_call_us": {p: {str(t): us for t, us in r.items()} for p, r in onnx.items()},
               "fastest": best}
    (out / "runtime_threads.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {out / 'runtime_threads.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
