"""
Quick start: adapt a PyTorch model to this machine with Grassroots Operator Search
==================================================================================

This how-to takes a trained PyTorch CNN and makes it faster *on the device it will run
on* — here, the CPU of this machine, reached through a TVM RPC server on loopback — while
keeping its accuracy within a budget:

1. train a small CNN on scikit-learn's digits (cached in the work directory);
2. import it into TVM Relax with ``gos_tvm.from_torch``;
3. run ``gos_tvm.tune``: it tunes the original model with MetaSchedule, replaces its most
   costly operators by cheaper programs of primitive instructions whose weights are fitted
   to the original's activations, keeps only those that stay within the accuracy budget,
   and tunes the adapted model with the same MetaSchedule budget;
4. check the adapted model's accuracy on held-out test images and export the compiled
   library for deployment.

Run it::

    python tutorials/quickstart.py                       # a few minutes on 2 cores
    python tutorials/quickstart.py --small --work-dir /tmp/qs   # reduced budgets (smoke test)

Rerunning with the same ``--work-dir`` reuses the trained weights and the search state.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GOS quick start on the local device")
    p.add_argument("--model", default="digits-cnn", help="digits-cnn, resnet18-style, mobilenetv2-style, vgg-style")
    p.add_argument("--work-dir", default="quickstart_work")
    p.add_argument("--small", action="store_true", help="reduced epochs and tuning budgets")
    p.add_argument("--trials-per-task", type=int, default=None)
    p.add_argument("--max-sites", type=int, default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    trials_per_task = args.trials_per_task or (2 if args.small else 8)
    kernel_trials = 2 if args.small else 8
    max_sites = args.max_sites if args.max_sites is not None else (1 if args.small else 2)

    import gos_tvm
    from gos_tvm import graph, models

    # ------------------------------------------------------------------------------------------
    # Step 1: a trained model and its data
    # ------------------------------------------------------------------------------------------
    # ``trained_model`` trains on scikit-learn's digits (available offline) and caches the
    # weights under ``cache_dir``.  ``split`` holds train / validation / test arrays (NCHW float32).
    model, split = models.trained_model(args.model, work / "weights", epochs=2 if args.small else 6)
    print(f"[1] {args.model}: torch test accuracy {models.accuracy(model, split.x_test, split.y_test):.4f}")

    # ------------------------------------------------------------------------------------------
    # Step 2: import into TVM (torch.export -> Relax); the weights become ``params``
    # ------------------------------------------------------------------------------------------
    mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
    sites = graph.find_sites(mod, params)
    print(f"[2] imported: {len(sites)} replaceable operator sites: "
          + ", ".join(f"{s.id} ({s.kind})" for s in sites))

    # ------------------------------------------------------------------------------------------
    # Step 3: Grassroots Operator Search on the local device
    # ------------------------------------------------------------------------------------------
    # * "local" is the preset for this machine's CPU. Without ``tracker=`` an RPC tracker and a
    #   server are started on loopback, so latencies are measured exactly as on a remote board.
    # * ``calib_data``: inputs whose activations the replacements' weights are fitted to.
    # * ``val_data`` + ``accuracy_budget``: a candidate is kept only if validation accuracy drops
    #   by at most 0.01 (one percentage point).
    # * ``trials_per_task``: the MetaSchedule budget for every task (kernel) of each whole model
    #   (original and adapted get the same; both are tuned into one database in the work dir, so
    #   the adapted model's unchanged kernels are not tuned again); ``kernel_trials``: per operator
    #   kernel; ``max_sites``: at most this many sites replaced.
    result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train,
                          val_data=(split.x_val, split.y_val), accuracy_budget=0.01,
                          trials_per_task=trials_per_task, kernel_trials=kernel_trials, max_sites=max_sites,
                          work_dir=work / "gos", seed=0)
    print("[3] " + result.summary())

    # ------------------------------------------------------------------------------------------
    # Step 4: held-out accuracy, and the deployable library
    # ------------------------------------------------------------------------------------------
    # ``result.compile()`` applies the tuned schedules; the module takes a batch of one image.
    executable = result.compile()
    vm = graph.load_vm(executable)
    pred = np.array([graph.run(vm, split.x_test[i:i + 1])[0].argmax() for i in range(len(split.x_test))])
    test_acc = float((pred == split.y_test).mean())
    so = result.export_library(work / "adapted.so")
    print(f"[4] adapted model: test accuracy {test_acc:.4f}; library {so}")
    print(f"    report {result.report_path}, Pareto plot {result.plot_path} (see tutorials/read_report.py)")
    return {"speedup": result.speedup, "test_accuracy": test_acc, "library": str(so),
            "report": str(result.report_path), "work_dir": str(work / "gos")}


if __name__ == "__main__":
    main()
