"""What TVM's runtime thread setting costs: one parallel kernel launch, and whole compiled models,
under TVM's own default, ``TVM_NUM_THREADS=1`` and ``TVM_NUM_THREADS=<cores>`` (what `gos_tvm`
sets on import, see `gos_tvm.threads`), side by side in one run.

Each setting runs in a fresh process that imports TVM only (not gos_tvm, which would set the
variable): TVM sizes its thread pool once, from the environment, at the first parallel launch.

    python benchmarks/bench_runtime_threads.py
    python benchmarks/bench_runtime_threads.py --library gos_work/adapted.so 1,1,16,16

Kernel: y = 2x over a (1, 14, 14, 32) float32 tensor, compiled for this host's CPU, once with its
three outer loops fused into a parallel loop and once serial; time per call from
``time_evaluator`` (medians of `--repeat` runs of 200 calls).  A `--library` is an exported Relax
library (``.so``) run by the Relax VM on a random input of the given shape.

Writes ``<out>/runtime_threads.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
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
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(library), dev)
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal([int(s) for s in shape.split(",")]).astype("float32"))
    r = vm.time_evaluator("main", dev, number=200, repeat=repeat)(x)
    out["library_us"] = float(np.median(r.results)) * 1e6
print("RESULT " + json.dumps(out))
"""


def measure(setting: dict[str, str], repeat: int, library: str, shape: str, cores: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(setting)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(repeat), library, shape, str(cores)], env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"measurement under {setting or 'TVM default'} failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> int:
    from bench_models import machine_info

    from gos_tvm.threads import host_cores

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", nargs=2, metavar=("SO", "INPUT_SHAPE"), action="append", default=[],
                   help="an exported Relax library and its input shape (e.g. 1,1,16,16); repeatable")
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
    for _ in range(args.rounds):  # interleaved: drift on a shared host hits every setting alike
        for row in rows:
            run = {}
            for so, shape in libraries:
                result = measure(row["env"], args.repeat, so, shape, cores)
                if so != "-":
                    run.setdefault("libraries", {})[so] = result.pop("library_us")
                run.update(result)
            row["runs"].append(run)
    for row in rows:
        runs = row["runs"]
        row["runtime_threads"] = runs[0]["runtime_threads"]
        for key in ("serial_kernel_us", "parallel_kernel_us"):
            row[key] = min(r[key] for r in runs)
        row["libraries_us"] = {so: min(r["libraries"][so] for r in runs) for so, _ in libraries if so != "-"}
    print(f"| setting | TVM threads | serial kernel (us) | parallel kernel (us) |"
          + "".join(f" {Path(so).name} (us) |" for so, _ in libraries if so != "-"))
    print("|---|---|---|---|" + "---|" * sum(so != "-" for so, _ in libraries))
    for row in rows:
        print(f"| {row['setting']} | {row['runtime_threads']} | {row['serial_kernel_us']:.2f} | "
              f"{row['parallel_kernel_us']:.2f} |" + "".join(f" {v:.1f} |" for v in row["libraries_us"].values()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "note": "per call, best of the interleaved rounds (each a median of --repeat runs of 200 calls)",
               "rows": rows}
    (out / "runtime_threads.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {out / 'runtime_threads.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
