"""Accuracy recovery by end-to-end distillation (gos_tvm.fit.distill) against layer-wise fitting.

    python benchmarks/bench_distill.py                 # digits-cnn, ~3 min on 2 loaded cores
    python benchmarks/bench_distill.py --steps 100     # shorter distillations

The main job's model (digits-cnn, trained here on scikit-learn's digits) gets a configuration of
three aggressive replacements: the first candidate of `gos_tvm.space.candidates` that keeps at
least 15% of conv2's and conv3's FLOPs and 25% of fc's, each fitted layer-wise (`fit.fit`, 150
steps, on the original's activations of 256 training images, as the search does).  Each row then
distils that configuration on the training images with other loss settings (the KL rows are the
classification defaults; the MSE rows treat the logits as regression outputs).  Accuracy is
measured on the validation and test images, which distillation never sees.  No device, no TVM
compilation: the trainable form computes what the Relax module computes (tests/test_distill.py).
Prints a Markdown table and writes JSON (default benchmarks/results/distill.json).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gos_tvm import graph, models
from gos_tvm.fit import distill, fit, trainable_model
from gos_tvm.graph.reference import capture_torch
from gos_tvm.space import candidates

SHARES = {"conv2": 0.15, "conv3": 0.15, "fc": 0.25}
ROWS = [("KL, T=4", "classification", 4.0, 1e-2), ("KL, T=2", "classification", 2.0, 1e-2),
        ("MSE on logits", "regression", 1.0, 1e-2), ("MSE on logits", "regression", 1.0, 3e-3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="most distillation steps per row")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core host)")
    ap.add_argument("--cache", default="/tmp/gos_tvm_models", help="where the trained model is cached")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, split = models.trained_model("digits-cnn", cache_dir=args.cache)
    mod, params = graph.from_torch(model, torch.from_numpy(split.x_train[:1]))
    sites = {s.id: s for s in graph.find_sites(mod, params)}
    acts = capture_torch(model, split.x_train[:256], list(SHARES))
    replacements, chosen = {}, {}
    for sid, share in SHARES.items():
        site = sites[sid]
        cand = next(c for c in candidates(site.program, max_flops_ratio=0.6) if c.flops_ratio >= share)
        res = fit(cand, *acts[sid], original_weights=site.weights, steps=150)
        replacements[sid] = (cand.program, res.weights)
        chosen[sid] = {"rule": cand.rule, "flops_ratio": cand.flops_ratio,
                       "layerwise_heldout_rel_error": res.heldout_rel_error}

    def accuracies(m: torch.nn.Module) -> dict:
        return {"val": models.accuracy(m, split.x_val, split.y_val),
                "test": models.accuracy(m, split.x_test, split.y_test)}

    rows = [{"row": "original", **accuracies(model)},
            {"row": "layer-wise fitted", **accuracies(trainable_model(model, replacements))}]
    for label, task, temperature, lr in ROWS:
        start = time.perf_counter()
        res = distill(model, replacements, split.x_train, steps=args.steps, task=task, temperature=temperature,
                      lr=lr, progress=False)
        rows.append({"row": f"distilled: {label}, lr {lr:g}", **accuracies(trainable_model(model, res.replacements)),
                     "steps": res.steps, "best_step": res.best_step, "error_before": res.error_before,
                     "error_after": res.error_after, "seconds": time.perf_counter() - start})

    print("replaced:", ", ".join(f"{s} -> {c['rule']} ({c['flops_ratio']:.2f} of the FLOPs)"
                                 for s, c in chosen.items()))
    print("| configuration | val accuracy | test accuracy | steps run | held-out output error before -> after |")
    print("|---|---|---|---|---|")
    for r in rows:
        extra = (f"{r['steps']} | {r['error_before']:.3f} -> {r['error_after']:.3f}" if "steps" in r else " | ")
        print(f"| {r['row']} | {r['val']:.4f} | {r['test']:.4f} | {extra} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": "digits-cnn", "sites": chosen, "steps": args.steps,
                               "threads": args.threads, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
