"""Kernel speed-ups of the replacement space on MobileNetV2-style depthwise sites.

For the most expensive depthwise convolutions of the trained `mobilenetv2-style` model (digits,
32x32), every candidate within the FLOP budget (depth 1, and the cheapest compositions) is
fitted to the layer's real activations (closed form, least squares, Adam) and tuned as a
kernel with MetaSchedule beside the original: same trials per kernel, one shared database,
measured on this host.  Latencies are those of the fastest *correct* tuned record
(`best_correct_record`).  Prints a table and writes benchmarks/results/space.json.

    python benchmarks/bench_space.py --trials 32 --sites 1

On a shared 2-core machine use small trial counts; the ratios are measured side by side in one
run, but they are not converged-tuning figures unless --trials is large (hundreds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tvm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gos_tvm import models  # noqa: E402
from gos_tvm.fit import capture, fit, layer_program  # noqa: E402
from gos_tvm.hw import tune_primfuncs  # noqa: E402
from gos_tvm.hw.tuning import best_correct_record  # noqa: E402
from gos_tvm.instructions import to_te  # noqa: E402
from gos_tvm.space import candidates  # noqa: E402


def depthwise_layers(model: torch.nn.Module, x: np.ndarray) -> list[tuple[str, torch.nn.Module, tuple, int]]:
    """(name, layer, input shape, FLOPs) of every depthwise Conv2d, most FLOPs first."""
    shapes = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:  # returns None: the output is left alone
            shapes[name] = (tuple(inputs[0].shape), tuple(output.shape))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.from_numpy(x[:1]))
    for h in hooks:
        h.remove()
    out = []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1:
            (ins, outs) = shapes[n]
            out.append((n, m, ins, 2 * int(np.prod(outs)) * int(np.prod(m.kernel_size))))
    return sorted(out, key=lambda t: -t[3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per kernel (same for all)")
    ap.add_argument("--sites", type=int, default=1, help="depthwise sites, most FLOPs first")
    ap.add_argument("--fit-steps", type=int, default=100)
    ap.add_argument("--max-flops-ratio", type=float, default=0.6)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "gos_tvm_models"),
                    help="trained-model cache")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "space.json"))
    ap.add_argument("--work-dir", default=None, help="MetaSchedule work dir (default: a temporary one)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model, data = models.trained_model("mobilenetv2-style", cache_dir=args.cache)
    calib = data.x_train[:256]
    rows, funcs, meta = [], {}, []
    for name, layer, in_shape, _ in depthwise_layers(model, calib)[:args.sites]:
        program, weights = layer_program(layer, (1, *in_shape[1:]))
        x, y = capture(model, name, calib)
        cands = candidates(program, depth=2, max_flops_ratio=args.max_flops_ratio, include_original=False)
        # Every single rewrite, and the two cheapest compositions (the rest only differ in details).
        chosen = [c for c in cands if len(c.steps) == 1] + [c for c in cands if len(c.steps) == 2][:2]
        funcs[f"k{len(funcs)}"] = to_te(program)
        meta.append((name, None, program))
        for cand in chosen:
            result = fit(cand, x, y, original_weights=weights, steps=args.fit_steps, seed=0)
            funcs[f"k{len(funcs)}"] = to_te(cand.program)
            meta.append((name, (cand, result), cand.program))
        print(f"{name}: {program.flops} FLOPs, {len(cands)} candidates within {args.max_flops_ratio}x, "
              f"{len(chosen)} fitted and tuned", flush=True)

    work = args.work_dir or None
    tuned = tune_primfuncs(funcs, "local", runner="local", trials_per_task=args.trials,
                           trials_per_iter=min(16, args.trials), work_dir=work, seed=0)
    original_us = {}
    for (key, func), (name, info, program) in zip(funcs.items(), meta):
        db = tuned[key].database
        latency, _ = best_correct_record(db, tvm.IRModule({"main": func.with_attr("global_symbol", key)}))
        us = latency * 1e6
        if info is None:
            original_us[name] = us
            rows.append({"site": name, "rule": "original", "params": {}, "flops_ratio": 1.0,
                         "heldout_rel_error": 0.0, "latency_us": us})
            continue
        cand, result = info
        rows.append({"site": name, "rule": cand.rule, "params": cand.rule_params, "flops_ratio": cand.flops_ratio,
                     "heldout_rel_error": result.heldout_rel_error, "latency_us": us})
    for r in rows:
        r["speedup"] = original_us[r["site"]] / r["latency_us"] if r["latency_us"] > 0 else None

    print(f"\n{'site':24s} {'candidate':34s} {'FLOPs':>6s} {'rel.err':>8s} {'us':>8s} {'speed-up':>8s}")
    for r in sorted(rows, key=lambda r: (r["site"], r["latency_us"])):
        params = ",".join(f"{k}={v}" for k, v in r["params"].items() if k != "steps")
        label = f"{r['rule']}({params})" if params else r["rule"]
        print(f"{r['site']:24s} {label[:34]:34s} {r['flops_ratio']:6.2f} {r['heldout_rel_error']:8.3f} "
              f"{r['latency_us']:8.1f} {r['speedup']:7.2f}x")
    report = {"model": "mobilenetv2-style (digits, 32x32)", "trials_per_kernel": args.trials,
              "fit_steps": args.fit_steps, "max_flops_ratio": args.max_flops_ratio,
              "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "note": "one MetaSchedule session, shared database, same trials per kernel, measured on this host "
                      "(a shared 2-core machine): small trial counts, not converged tuning",
              "seconds": time.perf_counter() - t0, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=float))
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
