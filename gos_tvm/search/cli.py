"""`gos-tvm tune`: adapt a model to a device from the command line."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="adapt a model to a device by Grassroots Operator Search",
                       description="Train (or load) a model, search cheaper operators for it, tune and measure "
                                   "original and adapted model on the device over TVM RPC, write a report.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="digits-cnn",
                     help="a built-in model trained on scikit-learn's digits: digits-cnn (default), "
                          "resnet18-style, mobilenetv2-style, vgg-style")
    src.add_argument("--onnx", help="an ONNX model file (then --data is required)")
    p.add_argument("--data", help=".npz with x_calib, x_val, y_val (for --onnx)")
    p.add_argument("--target", default="local", help="device preset: local, rasp3b, rasp3b-aarch64, redmi-note-7s")
    p.add_argument("--emulated", action="store_true",
                   help="measure on the emulated board (qemu-user on this host, built once with "
                        "`gos-tvm rpc emulate TARGET --build-only`); timings are emulation timings, not board "
                        "timings")
    p.add_argument("--tracker", help="RPC tracker host:port (default: start one with a server on loopback)")
    p.add_argument("--key", help="RPC key of the device (default: the preset's)")
    p.add_argument("--trials-per-task", type=int, default=None,
                   help="MetaSchedule trials for every task of the original and the adapted model "
                        "(default 16; rerun with more in the same --work-dir to continue tuning)")
    p.add_argument("--trials", type=int, default=None,
                   help="compatibility: a whole-model total, spread evenly over the original model's tasks "
                        "(ignored when --trials-per-task is given)")
    p.add_argument("--warm-start-database", default=None,
                   help="an earlier run's WORK_DIR/database (same device): seeds this run's tuning database")
    p.add_argument("--time-budget", type=float, default=None,
                   help="wall-clock seconds bound on each whole-model tuning session")
    p.add_argument("--kernel-trials", type=int, default=16, help="trials per site/candidate kernel (default 16)")
    p.add_argument("--budget", type=float, default=0.01, help="allowed accuracy drop (default 0.01 = 1 point)")
    p.add_argument("--max-sites", type=int, default=None, help="replace at most this many sites")
    p.add_argument("--work-dir", default="gos_work", help="work directory (rerun to resume; default gos_work)")
    p.add_argument("--export", help="write the adapted model's shared library here")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from .. import graph, models
    from .api import tune

    # The device first: a wrong --target fails before a model is trained.
    target = args.target
    if args.emulated:
        from ..hw import emulate

        try:
            target = emulate.emulated_preset(args.target, key=args.key)
        except ValueError as err:
            raise SystemExit(f"error: --emulated --target {args.target}: {err}") from None
    if args.onnx:
        if not args.data:
            raise SystemExit("--onnx needs --data FILE.npz with arrays x_calib, x_val, y_val")
        data = np.load(args.data)
        missing = {"x_calib", "x_val", "y_val"} - set(data.files)
        if missing:
            raise SystemExit(f"{args.data} lacks {sorted(missing)} (has {data.files})")
        mod, params = graph.from_onnx(args.onnx)
        calib, val = data["x_calib"], (data["x_val"], data["y_val"])
        print(f"model: {args.onnx}")
    else:
        model, split = models.trained_model(args.model, Path(args.work_dir) / "models", seed=args.seed)
        print(f"model: {args.model}, trained on scikit-learn digits "
              f"(validation accuracy in torch {models.accuracy(model, split.x_val, split.y_val):.4f})")
        mod, params = graph.from_torch(model, __import__("torch").from_numpy(split.x_train[:1]))
        calib, val = split.x_train, (split.x_val, split.y_val)
    tracker = args.tracker
    result = tune(mod, target, params=params, calib_data=calib, val_data=val, accuracy_budget=args.budget,
                  tracker=tracker, key=args.key, trials_per_task=args.trials_per_task, trials=args.trials,
                  time_budget=args.time_budget, warm_start_database=args.warm_start_database, kernel_trials=args.kernel_trials,
                  work_dir=args.work_dir, seed=args.seed, max_sites=args.max_sites)
    print(result.summary())
    print(f"report: {result.report_path}\nPareto plot: {result.plot_path}")
    if args.export:
        print(f"exported: {result.export_library(args.export)}")
    return 0
