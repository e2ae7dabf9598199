"""Where an exported model's end-to-end time goes, at each thread count: its kernels timed alone
(as MetaSchedule's runner times them: back to back, on the arguments the model passes them)
beside the whole call (`gos_tvm.hw.vm_calls`).

Each library and ``TVM_NUM_THREADS`` runs in a fresh process (TVM sizes its pool once), all of
them taking turns for `--rounds` rounds; each keeps its round with the fastest end-to-end time.

    python benchmarks/bench_vm_calls.py \
        --library original=work/mobilenetv2_original.so --library adapted=work/mobilenetv2_adapted.so \
        --shape 1,1,32,32 --out benchmarks/results/vm_calls

Writes ``<out>/vm_calls.json`` (per library and thread count: end to end, the sums, every
kernel alone; with ``--handoffs`` every kernel-to-kernel hand-off too) and prints a table.
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
from gos_tvm.hw.vm_calls import time_handoffs, time_vm_calls
x = np.random.default_rng(0).standard_normal(tuple(int(v) for v in sys.argv[2].split(","))).astype("float32")
out = time_vm_calls(sys.argv[1], x, calls=int(sys.argv[3]))
if sys.argv[4] == "1":
    out["handoffs"] = time_handoffs(sys.argv[1], x)
    out["handoff_sum_s"] = sum(e["handoff_s"] for e in out["handoffs"])
print("RESULT " + json.dumps(out))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--library", action="append", required=True, metavar="NAME=PATH",
                   help="an exported Relax library (.so) built for this CPU; repeat for several")
    p.add_argument("--shape", required=True, help="the input's shape, e.g. 1,1,32,32")
    p.add_argument("--threads", default=None, help="thread counts, e.g. 1,2 (default: 1 and this host's cores)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--handoffs", action="store_true",
                   help="also time each kernel-to-kernel hand-off (gos_tvm.hw.vm_calls.time_handoffs; ~1 min a library)")
    p.add_argument("--out", default="benchmarks/results/vm_calls")
    args = p.parse_args()

    from gos_tvm.hw.deploy_threads import run_in_fresh_process
    from gos_tvm.threads import THREAD_VARIABLES, host_cores

    libraries = dict(item.split("=", 1) for item in args.library)
    for name, path in libraries.items():
        if not Path(path).is_file():
            sys.exit(f"--library {name}={path}: no such file (export one with TuneResult.export_library)")
    counts = sorted({int(t) for t in args.threads.split(",")}) if args.threads else sorted({1, host_cores()})
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    runs: dict[str, dict[int, list[dict]]] = {name: {t: [] for t in counts} for name in libraries}
    for _ in range(args.rounds):
        for name, path in libraries.items():
            for t in counts:
                runs[name][t].append(run_in_fresh_process(
                    _CHILD, (path, args.shape, args.calls, int(args.handoffs)), {**env, "TVM_NUM_THREADS": str(t)},
                    f"{path} at TVM_NUM_THREADS={t} failed", timeout=1200))
    best = {name: {t: min(rs, key=lambda r: r["end_to_end_s"]) for t, rs in per.items()} for name, per in runs.items()}

    print(f"{'library':<10} {'threads':>7} {'end to end':>11} {'kernels alone':>14} "
          f"{'end-alone':>10} {'kernels':>8} {'per kernel':>11}" + (f" {'hand-offs':>10}" if args.handoffs else ""))
    for name, per in best.items():
        for t, r in per.items():
            n = len(r["kernels"])
            gap = r["end_to_end_s"] - r["alone_sum_s"]
            print(f"{name:<10} {t:>7} {r['end_to_end_s'] * 1e6:>8.1f} us {r['alone_sum_s'] * 1e6:>11.1f} us "
                  f"{gap * 1e6:>7.1f} us {n:>8} {gap / n * 1e6:>8.2f} us"
                  + (f" {r['handoff_sum_s'] * 1e6:>7.1f} us" if args.handoffs else ""))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result = {"libraries": libraries, "shape": args.shape, "threads": counts, "rounds": args.rounds,
              "calls": args.calls, "runs": {name: {str(t): r for t, r in per.items()} for name, per in best.items()}}
    path = Path(args.out) / "vm_calls.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
