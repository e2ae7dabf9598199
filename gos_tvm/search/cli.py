"""`gos-tvm tune`: adapt a model to a device from the command line."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="adapt a model to a device by Grassroots Operator Search",
                       description="Train (or load) a model, search cheaper operators for it, tune and measure "
                                   "original and adapted model on the device over TVM RPC, write a report. "
                                   "Arguments, data and device are checked first: a mistake is one line on stderr "
                                   "and exit status 2, and the work directory is left as it was.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="digits-cnn",
                     help="a built-in model, trained here on --dataset: digits-cnn (default), "
                          "resnet18-style, mobilenetv2-style, vgg-style")
    src.add_argument("--onnx", help="an ONNX model file (then --data is required)")
    p.add_argument("--data", help=".npz with x_calib, x_val, y_val (for --onnx)")
    p.add_argument("--dataset", choices=("digits", "fashion-mnist"), default=None,
                   help="data the built-in model is trained and validated on: digits (default; scikit-learn, "
                        "1,797 images) or fashion-mnist (60,000 + 10,000 images; `apt-get install -y "
                        "dataset-fashion-mnist`; training takes minutes to hours on 2 cores)")
    p.add_argument("--target", default="local", help="device preset: local, rasp3b, rasp3b-aarch64, redmi-note-7s")
    p.add_argument("--emulated", action="store_true",
                   help="measure on the emulated board (qemu-user on this host, built once with "
                        "`gos-tvm rpc emulate TARGET --build-only`); timings are emulation timings, not board "
                        "timings")
    p.add_argument("--tracker", metavar="HOST:PORT",
                   help="the RPC tracker the device's servers registered with (default: start one with a server "
                        "on loopback)")
    p.add_argument("--key", help="RPC key of the device (default: the preset's)")
    p.add_argument("--trials-per-task", type=int, default=None,
                   help="MetaSchedule trials for every task of the original and the adapted model "
                        "(default 64, where the tuned models stop gaining on 2 cores; rerun with more in the same "
                        "--work-dir to continue tuning)")
    p.add_argument("--trials", type=int, default=None,
                   help="compatibility: a whole-model total, spread evenly over the original model's tasks "
                        "(ignored when --trials-per-task is given)")
    p.add_argument("--warm-start-database", default=None,
                   help="an earlier run's WORK_DIR/database (same device): seeds this run's tuning database")
    p.add_argument("--time-budget", type=float, default=None,
                   help="wall-clock seconds bound on each whole-model tuning session")
    p.add_argument("--kernel-trials", type=int, default=None,
                   help="trials for each new task a candidate brings into the model while candidates are screened "
                        "(default: the per-task budget of the models, so a candidate is compared with original tasks "
                        "tuned as much; less screens faster)")
    p.add_argument("--screen-per-site", type=int, default=None,
                   help="candidates per site given a short layer-wise fit before the bisection, which then runs "
                        "over the best-fitting ones (default 32; fewer searches faster; 0: the latency ranking alone)")
    p.add_argument("--recover-steps", type=int, default=None,
                   help="distil the configuration for this many steps after each site the search replaces, so the "
                        "next site is judged in a model whose accuracy is won back (default 0: off)")
    p.add_argument("--tries-per-site", type=int, default=None,
                   help="candidates fitted and accuracy-checked per site, bisecting the latency ranking (default 6)")
    p.add_argument("--measure-per-site", type=int, default=None,
                   help="accurate candidates per site tuned and measured on the device (default 2)")
    p.add_argument("--distill-steps", type=int, default=None,
                   help="end-to-end distillation steps for each configuration a candidate is judged in "
                        "(default 60; 0: layer-wise fitting only)")
    p.add_argument("--final-distill-steps", type=int, default=None,
                   help="distillation steps for the chosen configuration (default 300)")
    p.add_argument("--budget", type=float, default=0.01, help="allowed accuracy drop (default 0.01 = 1 point)")
    p.add_argument("--max-sites", type=int, default=None, help="replace at most this many sites")
    p.add_argument("--work-dir", default="gos_work", help="work directory (rerun to resume; default gos_work)")
    p.add_argument("--export", help="write the adapted model's shared library here")
    p.add_argument("--no-distill", dest="distill", action="store_false",
                   help="judge candidates by their layer-wise fit only (default: a candidate that misses the "
                        "budget is judged again after distilling its configuration end to end)")
    p.add_argument("--row-split", action="store_true",
                   help="tune only schedules whose parallel loop gives each thread a band of output rows, so "
                        "that consecutive kernels split their work alike (gos_tvm.hw.metaschedule.row_split)")
    p.add_argument("--serial-kernels", action="store_true",
                   help="time each tuned kernel's best schedule also without its parallel loop and keep the faster, "
                        "so short kernels may run on one thread inside a model whose long kernels use all "
                        "(gos_tvm.hw.metaschedule.serial_kernels)")
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NHWC",
                   help="layout convolutions are compiled, tuned and judged in (default NHWC, channels-last: "
                        "the faster original and adapted models here; NCHW, the imported one; see "
                        "gos_tvm.graph.conv_layout)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from .validate import (OPTION_MINIMUM, UserError, check_device, check_float, check_int, check_options,
                           options_identity)

    # Everything that can be checked without the model, first: a wrong --target, --tracker or budget
    # fails in seconds, before a model is trained or anything is written to the work directory.
    # Each integer flag is checked against its option's least value (None: left to the default).
    for name in ("trials", "trials_per_task", "kernel_trials", "max_sites", "screen_per_site", "recover_steps",
                 "tries_per_site", "measure_per_site", "distill_steps", "final_distill_steps", "seed"):
        check_int("--" + name.replace("_", "-"), getattr(args, name), OPTION_MINIMUM[name], allow_none=name != "seed")
    if args.time_budget is not None:
        check_float("--time-budget", args.time_budget, 0.0, min_exclusive=True)
    check_float("--budget", args.budget, 0.0)
    # Given only when set on the command line: otherwise SearchOptions keeps its own default.
    search = {name: getattr(args, name) for name in ("screen_per_site", "recover_steps", "tries_per_site",
                                                     "measure_per_site", "distill_steps", "final_distill_steps")
              if getattr(args, name) is not None}
    opts = check_options(dict(trials=args.trials, trials_per_task=args.trials_per_task, time_budget=args.time_budget,
                              kernel_trials=args.kernel_trials, max_sites=args.max_sites, distill=args.distill,
                              seed=args.seed, **({"row_split": True} if args.row_split else {}),
                              **({"serial_kernels": True} if args.serial_kernels else {}), **search))
    target = args.target
    if args.emulated:
        from ..hw import emulate

        try:
            target = emulate.emulated_preset(args.target, key=args.key)
        except ValueError as err:
            raise UserError(f"--emulated --target {args.target}: {err}") from None
    device, _ = check_device(target, args.tracker, args.key)
    from .store import check_identity

    # What this run is, as far as known before the model: a work directory of another run is refused
    # before a model is trained into it (the rest -- model, data -- is compared by tune()).
    known = {"device": device.name, "target": str(device.target), "accuracy_budget": float(args.budget),
             **options_identity(opts),
             **({"emulated": True} if device.emulated else {}),
             **({"conv_layout": args.layout} if args.layout != "NCHW" else {})}
    check_identity(args.work_dir, known, partial=True)

    if args.onnx and args.dataset:
        raise UserError("--dataset chooses the data of a built-in --model; with --onnx give --data FILE.npz")
    from .. import graph, models
    from .api import tune

    if args.onnx:
        if not args.data:
            raise UserError("--onnx needs --data FILE.npz with arrays x_calib, x_val, y_val")
        for flag, path in (("--onnx", args.onnx), ("--data", args.data)):
            if not Path(path).is_file() or Path(path).stat().st_size == 0:
                raise UserError(f"{flag} {path}: {'no such file' if not Path(path).is_file() else 'the file is empty'}")
        try:
            data = np.load(args.data)
            files = list(data.files)
        except Exception as err:  # noqa: BLE001 - numpy raises several types for a non-.npz file
            raise UserError(f"--data {args.data} is not a .npz archive ({type(err).__name__}: {err}); write it with "
                            "numpy.savez(path, x_calib=..., x_val=..., y_val=...)") from None
        missing = {"x_calib", "x_val", "y_val"} - set(files)
        if missing:
            raise UserError(f"--data {args.data} lacks {sorted(missing)} (has {files}); it needs x_calib, x_val, y_val")
        mod, params = graph.from_onnx(args.onnx)
        calib, val = data["x_calib"], (data["x_val"], data["y_val"])
        print(f"model: {args.onnx}")
    else:
        if args.model not in models.MODELS:
            raise UserError(f"--model {args.model!r} is not a built-in model; the models are: "
                            f"{', '.join(models.MODELS)} (or pass --onnx FILE --data FILE.npz)")
        from ..datasets import DatasetNotFound, describe

        dataset = args.dataset or "digits"
        try:
            model, split = models.trained_model(args.model, Path(args.work_dir) / "models", seed=args.seed,
                                                dataset=dataset)
        except DatasetNotFound as err:
            raise UserError(f"--dataset {dataset}: {err}") from None
        print(f"model: {args.model}, trained on {describe(dataset)} "
              f"(validation accuracy in torch {models.accuracy(model, split.x_val, split.y_val):.4f})")
        mod, params = graph.from_torch(model, __import__("torch").from_numpy(split.x_train[:1]))
        calib, val = split.x_train, (split.x_val, split.y_val)
    with graph.conv_layout(args.layout):  # the search, the tuning and the export alike
        result = tune(mod, target, params=params, calib_data=calib, val_data=val, accuracy_budget=args.budget,
                      tracker=args.tracker, key=args.key, trials_per_task=args.trials_per_task, trials=args.trials,
                      time_budget=args.time_budget, warm_start_database=args.warm_start_database,
                      kernel_trials=args.kernel_trials, work_dir=args.work_dir, seed=args.seed,
                      max_sites=args.max_sites, distill=args.distill, **search)
        print(result.summary())
        print(f"report: {result.report_path}\nPareto plot: {result.plot_path}")
        if args.export:
            print(f"exported: {result.export_library(args.export)}")
            _deploy_threads(result, args.export, val[0][:1])
        _compare_with_alternatives(result, val[0][:1], torch_model=None if args.onnx else model, onnx_path=args.onnx)
    return 0


def _deploy_threads(result, library: str, example) -> None:
    """Time both tuned models' libraries at 1 and this host's cores threads, say which count to ship
    the adapted one with and the speed-up with each at its best (`TuneResult.time_at_deploy_threads`;
    written to `work_dir/deploy_threads.json`)."""
    if not result.device.is_local or result.device.emulated:
        return  # a board's library does not run here
    print("timing the original and adapted libraries at each TVM_NUM_THREADS, each in a fresh process ...")
    out = result.time_at_deploy_threads(example, adapted_library=library)
    for name, row in out["libraries"].items():
        timings = ", ".join(f"{t} thread{'s' if int(t) > 1 else ''} {v * 1e3:.3f} ms" for t, v in row["seconds"].items())
        print(f"  {name:<8} fastest with TVM_NUM_THREADS={row['best']} ({timings})")
    print(f"set TVM_NUM_THREADS={out['libraries']['adapted']['best']} in the process that loads {library}; "
          f"speed-up with each model at its fastest count: {out['speedup_each_at_its_best_threads']:.2f}x "
          f"({result.work_dir / 'deploy_threads.json'})")


def _compare_with_alternatives(result, example, *, torch_model, onnx_path) -> None:
    """What the user would run instead, timed beside the TVM models (`TuneResult.compare_with_alternatives`)."""
    if not result.device.is_local or result.device.emulated:
        print(f"(onnxruntime and PyTorch run on this host, not on {result.device.name}: not compared)")
        return
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("(onnxruntime is not installed, so the TVM models are not compared with it: pip install -e '.[onnx]')")
        return
    print("timing the tuned TVM models beside onnxruntime and PyTorch on the original, in this process ...")
    out = result.compare_with_alternatives(example, torch_model=torch_model, onnx_path=onnx_path)
    print(out["table"])
    print(f"adapted TVM model vs onnxruntime on the original: {out['adapted_over_onnxruntime']:.2f}x "
          f"({out['how']}; {result.work_dir / 'alternatives.json'})")
