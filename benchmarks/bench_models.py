"""Model benchmark: GOS-adapted vs tuned TVM original vs PyTorch / torch.compile / onnxruntime.

For each model (ResNet-18-style, MobileNetV2-style, VGG-style; all trained here on
``--dataset``: scikit-learn's digits, upsampled from 8x8 to 32x32 bilinearly, 60/20/20 split
(the default), or Fashion-MNIST, 28x28 padded to 32x32, 55,000 / 5,000 / 10,000 images, from
``apt-get install -y dataset-fashion-mnist``):

1. train on the CPU (weights cached under ``--work-dir``);
2. export to ONNX (``torch.onnx.export(..., dynamo=False)``) and check that onnxruntime
   and TVM's ONNX importer reproduce the torch logits;
3. ``gos_tvm.tune`` on the local RPC device with MetaSchedule budget ``--trials-per-task`` (the
   original and the adapted model are tuned with the same budget and measured end to end on
   the local RPC server);
4. in the same run, time the original model at batch 1 with PyTorch eager
   (``torch.set_num_threads(2)``), torch.compile (where it works) and onnxruntime (2 threads),
   and measure the test-split accuracy of the original and the adapted TVM modules;
5. write ``<out>/models.json``, ``<out>/models.md`` and ``<out>/models.png``.

Each model's record is also written to ``<out>/raw/<model>.json`` as soon as it is done,
and the table is rebuilt from all records there, so models can be run one at a time
(``--models vgg-style``) and the table fills up.

    python benchmarks/bench_models.py --trials-per-task 16 --work-dir bench_work
    python benchmarks/bench_models.py --quick --models resnet18-style --out /tmp/bench_quick
    python benchmarks/bench_models.py --dataset fashion-mnist --epochs 4 --work-dir bench_work_fm

Records of a data set other than digits are named ``<model>-<dataset>`` (raw record, ONNX
file, search work directory), so both can share ``--out`` and ``--work-dir``; every record
has a ``dataset`` field.

Latencies come from ONE run on whatever machine runs this; on a shared, noisy 2-core
machine they move by tens of percent between runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

MODELS = ("resnet18-style", "mobilenetv2-style", "vgg-style")
RUNTIMES = ("tvm_original_tuned", "gos_adapted_tuned", "torch_eager", "torch_compile", "onnxruntime")
RUNTIME_LABELS = {"tvm_original_tuned": "TVM original (tuned)", "gos_adapted_tuned": "GOS adapted (tuned)",
                  "torch_eager": "PyTorch eager", "torch_compile": "torch.compile", "onnxruntime": "onnxruntime"}
TARGET_SPEEDUP = 2.2     # the published minimum over the tuned original
TARGET_ACC_LOSS = 0.01   # at most 1 percentage point of test accuracy
NOISE_NOTE = ("Latencies are from one run on a shared 2-core virtual machine (its host is shared with other "
              "jobs; each record keeps the load average at its start); expect run-to-run variation of up to tens of "
              "percent in absolute numbers. The speed-up compares the original and the adapted model timed "
              "alternately in the same minute. TVM numbers are measured over the local RPC server, PyTorch / "
              "onnxruntime in-process, all at batch 1, float32, 2 threads (TVM at the machine's tvm_threads "
              "where a record has it: TVM_NUM_THREADS=1 tunes and times TVM on one); the alternating comparison "
              "times onnxruntime at 1 and 2 threads and compares with the faster.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), help=f"any of {', '.join(MODELS)} (or digits-cnn)")
    p.add_argument("--trials-per-task", type=int, default=None,
                   help="MetaSchedule trials for every task of the original and of the adapted model, in one "
                        "database (default: gos_tvm's DEFAULT_TRIALS_PER_TASK; quick 4)")
    p.add_argument("--kernel-trials", type=int, default=None,
                   help="MetaSchedule trials for each new task of a candidate (default: --trials-per-task; quick 4)")
    p.add_argument("--max-sites", type=int, default=None, help="replace at most this many sites (default: every site "
                                                                  "is eligible; quick 1)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 6; quick 2)")
    p.add_argument("--budget", type=float, default=TARGET_ACC_LOSS, help="validation accuracy the search may lose")
    p.add_argument("--distill-steps", type=int, default=None,
                   help="distillation steps per configuration a candidate is judged in (default: gos_tvm's)")
    p.add_argument("--final-distill-steps", type=int, default=None,
                   help="distillation steps of the chosen configuration (default: gos_tvm's)")
    p.add_argument("--recover-steps", type=int, default=None,
                   help="distillation steps after each site replaced (gos_tvm's SearchOptions.recover_steps; default 0)")
    p.add_argument("--rounds", type=int, default=None,
                   help="search rounds, each from the last one's distilled choice (default: gos_tvm's)")
    p.add_argument("--repeats", type=int, default=None, help="timed batch-1 calls per runtime (default 200; quick 30)")
    p.add_argument("--work-dir", default="bench_work", help="trained weights, ONNX files, search state")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="where results go")
    p.add_argument("--quick", action="store_true", help="reduced run (fewer epochs, trials, sites, repeats)")
    p.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile (reported as n/a)")
    p.add_argument("--emulated", action="store_true",
                   help="search and measure on the emulated rasp3b-aarch64 (qemu-user; `gos-tvm rpc emulate "
                        "rasp3b-aarch64 --build-only` first): EMULATION timings, not board timings; the PyTorch / "
                        "onnxruntime columns stay host timings")
    p.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits",
                   help="training / validation / test data (default digits; fashion-mnist needs "
                        "`apt-get install -y dataset-fashion-mnist`)")
    p.add_argument("--train-samples", type=int, default=None,
                   help="train on the first N training images only (a quick run; accuracy is still measured on "
                        "the whole test split)")
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW",
                   help="layout the convolutions are compiled, tuned and judged in (gos_tvm.graph.conv_layout; "
                        "`gos-tvm tune` defaults to NHWC)")
    p.add_argument("--warm-start-database", action="append", default=[], metavar="MODEL=DIR",
                   help="start MODEL's search database from an earlier run's MetaSchedule database (e.g. a "
                        "bench_tuning_convergence.py db_NHWC: the original is then tuned only where it has fewer "
                        "than --trials-per-task records); repeat per model")
    p.add_argument("--row-split", action="store_true",
                   help="tune only schedules that give each thread a band of output rows (gos-tvm tune --row-split)")
    p.add_argument("--serial-kernels", action="store_true",
                   help="time each tuned kernel also without its parallel loop (gos-tvm tune --serial-kernels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild models.json / .md / .png from the records in <out>/raw")
    args = p.parse_args(argv)
    q = args.quick
    from gos_tvm.search.results import DEFAULT_TRIALS_PER_TASK

    args.trials_per_task = args.trials_per_task or (4 if q else DEFAULT_TRIALS_PER_TASK)
    args.kernel_trials = args.kernel_trials or (4 if q else None)  # None: the per-task budget
    args.max_sites = args.max_sites if args.max_sites is not None else (1 if q else None)
    args.epochs = args.epochs or (2 if q else 6)
    args.repeats = args.repeats or (30 if q else 200)
    return args


# ----------------------------------------------------------------------------------------------
# Machine and timing helpers
# ----------------------------------------------------------------------------------------------
@functools.cache
def _gos_tvm_source() -> dict:
    """Which gos_tvm tree was imported (editable installs can point at another checkout), its commit and
    whether gos_tvm/ had uncommitted edits, taken ONCE, when this process first asks (main() does so before
    any model runs): the modules stay loaded for the whole run, so later models of the same process run
    this code even if the tree's HEAD moves meanwhile."""
    info: dict = {}
    try:
        import subprocess

        import gos_tvm
        root = Path(gos_tvm.__file__).resolve().parent.parent
        info["gos_tvm_path"] = str(root)
        info["gos_tvm_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                                capture_output=True, text=True, timeout=10).stdout.strip() or None
        info["gos_tvm_dirty"] = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "gos_tvm"],
                                                    capture_output=True, text=True, timeout=10).stdout.strip())
        info["gos_tvm_source_taken"] = time.strftime("%Y-%m-%d %H:%M:%S")
    except Exception:  # noqa: BLE001
        pass
    return info


def machine_info() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu_model": cpu or platform.processor(), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        info["cores_available"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    for name in ("tvm", "onnxruntime", "onnx"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - recorded as missing
            info[name] = None
    info.update(_gos_tvm_source())  # update copies: the cached dict stays as taken
    from gos_tvm.threads import configure_runtime_threads

    info["tvm_threads"] = configure_runtime_threads()  # TVM_NUM_THREADS=1 tunes and times for one thread
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def time_calls(fn, repeats: int, warmup: int = 5) -> dict:
    """Median / mean / std of `repeats` single calls of fn() in seconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "mean_s": statistics.fmean(ts),
            "std_s": statistics.pstdev(ts), "repeats": repeats}


def na(reason: str) -> dict:
    return {"median_s": None, "na": reason}


def strict(obj):
    """obj with every non-finite float (NaN, inf) replaced by None and numpy scalars made Python numbers,
    so the JSON written is strict (json.loads with parse_constant rejecting NaN / Infinity reads it)."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def dump_json(obj) -> str:
    return json.dumps(strict(obj), indent=2, default=float, allow_nan=False)


# ----------------------------------------------------------------------------------------------
# The per-model benchmark
# ----------------------------------------------------------------------------------------------
def export_onnx(model: torch.nn.Module, x1: np.ndarray, path: Path, x_check: np.ndarray) -> dict:
    """Export to ONNX; compare onnxruntime and TVM's ONNX import with torch on `x_check`."""
    import onnxruntime as ort

    from gos_tvm import graph

    torch.onnx.export(model, (torch.from_numpy(x1),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x_check)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_out = np.concatenate([sess.run(None, {"input": x_check[i:i + 1]})[0] for i in range(len(x_check))])
    out = {"path": str(path), "bytes": path.stat().st_size, "samples_checked": len(x_check),
           "onnxruntime_max_abs_diff": float(np.abs(ort_out - ref).max()),
           "onnxruntime_argmax_agrees": bool((ort_out.argmax(1) == ref.argmax(1)).all())}
    try:  # TVM's ONNX frontend: the same model as GOS would get it from ONNX
        mod, params = graph.from_onnx(path)
        vm = graph.load_vm(graph.compile_module(mod, params))
        tvm_out = np.concatenate([graph.run(vm, x_check[i:i + 1])[0] for i in range(len(x_check))])
        out["tvm_from_onnx_max_abs_diff"] = float(np.abs(tvm_out - ref).max())
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        out["tvm_from_onnx_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    out["ok"] = out["onnxruntime_max_abs_diff"] < 1e-3
    return out


def tvm_accuracy(executable, x: np.ndarray, y: np.ndarray) -> float:
    from gos_tvm import graph

    vm = graph.load_vm(executable)
    pred = [int(graph.run(vm, np.ascontiguousarray(x[i:i + 1]))[0].argmax()) for i in range(len(x))]
    return float((np.asarray(pred) == y).mean())


def bench_torch_compile(model, x1: torch.Tensor, ref: torch.Tensor, repeats: int) -> dict:
    try:
        torch._dynamo.reset()
        t0 = time.perf_counter()
        compiled = torch.compile(model)
        with torch.no_grad():
            out = compiled(x1)
        compile_s = time.perf_counter() - t0
        diff = float((out - ref).abs().max())
        with torch.no_grad():
            r = time_calls(lambda: compiled(x1), repeats)
        return r | {"compile_s": compile_s, "max_abs_diff": diff}
    except Exception as err:  # noqa: BLE001 - torch.compile needs a C++ toolchain etc.; report why not
        msg = str(err).strip().splitlines()
        return na(f"{type(err).__name__}: {msg[0][:300] if msg else ''}")


def search_options(args: argparse.Namespace) -> dict[str, int]:
    """The distillation budgets and search rounds given on the command line (the others stay
    gos_tvm's defaults)."""
    given = {k: getattr(args, k) for k in ("distill_steps", "final_distill_steps", "rounds", "recover_steps")
             if getattr(args, k) is not None}
    return {**given, **{flag: True for flag in ("row_split", "serial_kernels") if getattr(args, flag)}}


def export_without_serial_twins(result, layout: str, work: Path, tag: str, libraries: dict) -> dict:
    """With --serial-kernels: the original and adapted models compiled from the run's database
    without its serial twins (`serial_kernels.is_serial_twin`), exported beside the shipped
    libraries as `<which>_no_twins` (added to `libraries`), so one timing compares both."""
    import dataclasses

    from tvm.s_tir import meta_schedule as ms

    from gos_tvm import graph
    from gos_tvm.hw import compile_tuned
    from gos_tvm.hw.metaschedule.serial_kernels import is_serial_twin
    from gos_tvm.hw.tuning.database import copy_records

    db = result.tuning_database()
    without = ms.database.MemoryDatabase()
    total = len(db.get_all_tuning_records())
    out = {"records": total, "twins": total - copy_records(db, without, keep=lambda r: not is_serial_twin(r))}
    for which, config in (("original", dataclasses.replace(result.chosen, choices={})), ("adapted", result.chosen)):
        mod, params = result.build(config)
        with graph.conv_layout(layout):
            path = work / f"{tag}_{which}_no_twins.so"
            compile_tuned(mod, params, result.device, without).export_library(str(path))
        libraries[f"{which}_no_twins"] = str(path)
    return out


def search_dir(args: argparse.Namespace, work: Path, name: str) -> Path:
    """A model's search work directory (its state, report and MetaSchedule database) in `work`."""
    return work / (f"gos_{record_name(name, args.dataset)}" + ("" if args.layout == "NCHW" else f"-{args.layout.lower()}"))


def run_search(name: str, args: argparse.Namespace, work: Path, mod, params, split, device="local"):
    """`gos_tvm.tune` as this benchmark runs it for model `name` (in --layout, with the command
    line's budgets), in `search_dir`: a finished search is resumed, nothing measured again."""
    import gos_tvm
    from gos_tvm import graph

    with graph.conv_layout(args.layout):
        return gos_tvm.tune(mod, device, params=params, calib_data=split.x_train,
                            val_data=(split.x_val, split.y_val), accuracy_budget=args.budget,
                            trials_per_task=args.trials_per_task, kernel_trials=args.kernel_trials,
                            max_sites=args.max_sites, seed=args.seed, **search_options(args),
                            warm_start_database=warm_start_databases(args).get(name),
                            work_dir=search_dir(args, work, name))


def resume_run(argv: list[str]):
    """A finished one-model run of this benchmark, from its command line's arguments (`argv`, without
    the program name): its trained model and data split, and its search resumed (`run_search`).
    For scripts that take a run further (benchmarks/results/*/equal_budget.py, other_layout.py).
    Returns (args, work dir, data split, `gos_tvm.TuneResult`)."""
    import gos_tvm
    from gos_tvm import models

    args = parse_args(argv)
    if len(args.models) != 1:
        raise SystemExit(f"resume one model's run at a time, got --models {' '.join(args.models)}")
    (name,) = args.models
    work = Path(args.work_dir).resolve()
    model, split = models.trained_model(name, work / "weights", epochs=args.epochs, seed=args.seed,
                                        dataset=args.dataset, train_samples=args.train_samples)
    mod, params = gos_tvm.from_torch(model.eval(), torch.from_numpy(split.x_train[:1]))
    result = run_search(name, args, work, mod, params, split)
    print(result.summary(), flush=True)
    return args, work, split, result


def time_in_fresh_processes(libraries: dict[str, str], onnx_path: Path, shape: str, rounds: int, out: Path) -> None:
    """Time exported `libraries` ({name: .so}) and onnxruntime on `onnx_path` at 1 and 2 threads, each
    library and thread count in a fresh process, `rounds` interleaved rounds (bench_runtime_threads.py;
    table on stdout, JSON in `out`)."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).with_name("bench_runtime_threads.py")), "--rounds", str(rounds),
           "--out", str(out), "--onnx", str(onnx_path), shape]
    for lib in libraries.values():
        cmd += ["--library", lib, shape]
    subprocess.run(cmd, check=True)


def warm_start_databases(args: argparse.Namespace) -> dict[str, str]:
    """--warm-start-database MODEL=DIR pairs as {model: dir}."""
    out = {}
    for pair in args.warm_start_database:
        model, sep, folder = pair.partition("=")
        if not sep or not folder:
            raise SystemExit(f"--warm-start-database {pair!r}: write MODEL=DIR, e.g. vgg-style=/work/conv/db_NHWC")
        out[model] = folder
    return out


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    import onnxruntime as ort

    import gos_tvm
    from gos_tvm import datasets, graph, models

    tag = record_name(name, args.dataset)
    rec: dict = {"model": name, "dataset": args.dataset, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
                 "config": {k: getattr(args, k) for k in ("trials_per_task", "kernel_trials", "max_sites", "epochs", "budget",
                                                          "repeats", "seed", "quick", "dataset", "train_samples",
                                                          "layout", "distill_steps", "final_distill_steps", "rounds",
                                                          "recover_steps", "row_split", "serial_kernels")},
                 "warm_start_database": warm_start_databases(args).get(name)}
    t_model = time.time()
    torch.set_num_threads(2)

    # 1. Train (cached)
    t0 = time.time()
    model, split = models.trained_model(name, work / "weights", epochs=args.epochs, seed=args.seed,
                                        dataset=args.dataset, train_samples=args.train_samples)
    model.eval()
    rec["train_or_load_s"] = time.time() - t0
    rec["data"] = {"dataset": datasets.describe(args.dataset), "input_shape": list(split.x_train.shape[1:]),
                   "trained_on": args.train_samples or len(split.y_train),
                   "train": len(split.y_train), "val": len(split.y_val), "test": len(split.y_test)}
    rec["torch_test_accuracy"] = models.accuracy(model, split.x_test, split.y_test)
    rec["params"] = int(sum(p.numel() for p in model.parameters()))
    print(f"[{name}] trained/loaded in {rec['train_or_load_s']:.0f} s; torch test accuracy "
          f"{rec['torch_test_accuracy']:.4f}; {rec['params']:,} parameters", flush=True)

    x1_np = np.ascontiguousarray(split.x_test[:1])
    x1 = torch.from_numpy(x1_np)
    with torch.no_grad():
        ref = model(x1)

    # 2. ONNX export and checks
    onnx_path = work / f"{tag}.onnx"
    try:
        rec["onnx"] = export_onnx(model, x1_np, onnx_path, np.ascontiguousarray(split.x_test[:16]))
    except Exception as err:  # noqa: BLE001
        rec["onnx"] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:400]}
    print(f"[{name}] onnx: {rec['onnx']}", flush=True)

    # 3. GOS on the local RPC device
    mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
    n_sites = len(graph.find_sites(mod, params))
    t0 = time.time()
    device = "local"
    if args.emulated:
        from gos_tvm.hw import emulate

        device = emulate.emulated_preset("rasp3b-aarch64")
    result = run_search(name, args, work, mod, params, split, device)
    tune_wall = time.time() - t0
    print(result.summary(), flush=True)
    rec["device"] = result.device.label
    rec["emulated"] = bool(result.device.emulated)
    rec["sites_total"] = n_sites
    rec["decisions"] = [{"site": d.site, "kind": d.kind, "choice": d.choice, "rule": d.rule, "reason": d.reason}
                        for d in result.decisions]
    rec["replaced"] = [{"site": d.site, "kind": d.kind, "by": d.rule} for d in result.decisions if d.choice]
    rec["search"] = {"seconds": result.seconds, "wall_s": tune_wall, "device_measurements": result.device_measurements,
                     "report": str(result.report_path), "pareto_plot": str(result.plot_path)}
    rec["val_accuracy"] = {"original": result.original_score, "adapted": result.adapted_score}
    lat = {"tvm_original_tuned": dict(result.original_latency), "gos_adapted_tuned": dict(result.adapted_latency)}

    # 4. Test-split accuracy of both TVM modules (the adapted one with its tuned schedules)
    # (tuned schedules where the device is this machine: 10,000 batch-1 calls with default schedules take minutes)
    t0 = time.time()

    untuned = []  # executables compiled with default schedules: judged for accuracy, not exported

    def executable(config):
        mod_, params_ = result.build(config)
        if result.device.is_local:
            try:
                return result.compile(config)
            except Exception as err:  # noqa: BLE001 - fall back to default schedules; accuracy does not depend on them
                print(f"[{name}] compiling with the tuned schedules failed ({err}); default schedules", flush=True)
                untuned.append(config)
        return graph.compile_module(mod_, params_)  # a board's executable does not run here: the host build

    executables = {"original": executable(dataclasses.replace(result.chosen, choices={})),
                   "adapted": executable(result.chosen)}
    acc_orig = tvm_accuracy(executables["original"], split.x_test, split.y_test)
    acc_adapt = tvm_accuracy(executables["adapted"], split.x_test, split.y_test)
    rec["test_accuracy"] = {"original": acc_orig, "adapted": acc_adapt, "delta_points": 100 * (acc_adapt - acc_orig),
                            "seconds": time.time() - t0}

    # 5. The alternatives a user would deploy with, batch 1, 2 threads, same machine, same run
    with torch.no_grad():
        lat["torch_eager"] = time_calls(lambda: model(x1), args.repeats)
    lat["torch_compile"] = (na("skipped (--no-torch-compile)") if args.no_torch_compile
                            else bench_torch_compile(model, x1, ref, args.repeats))
    if rec["onnx"].get("path"):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        lat["onnxruntime"] = time_calls(lambda: sess.run(None, {"input": x1_np}), args.repeats)
    else:
        lat["onnxruntime"] = na("ONNX export failed")
    rec["latency"] = lat
    if result.device.is_local and not result.device.emulated and not untuned:
        # What a user ships (the executables judged above), kept for timing outside this process.
        rec["libraries"] = {}
        for which, ex in executables.items():
            ex.export_library(str(work / f"{tag}_{which}.so"))
            rec["libraries"][which] = str(work / f"{tag}_{which}.so")
        if args.serial_kernels:  # the same models compiled without the serial twins: what the twins bought
            rec["serial_twins"] = export_without_serial_twins(result, args.layout, work, tag, rec["libraries"])
        # Each at each thread count in fresh processes: they need not run best at the same one.
        from gos_tvm.hw.deploy_threads import json_ready, speedup_each_at_its_best_threads, time_libraries_at_threads

        timed = json_ready(time_libraries_at_threads(rec["libraries"], x1_np))
        rec["deploy_threads"] = timed["libraries"]
        rec["speedup_each_at_its_best_threads"] = speedup_each_at_its_best_threads(rec["deploy_threads"])
        if args.serial_kernels:
            rec["serial_twins"]["speedup_each_at_its_best_threads"] = speedup_each_at_its_best_threads(
                {which: rec["deploy_threads"][f"{which}_no_twins"] for which in ("original", "adapted")})
        print(f"[{name}] each at its fastest thread count: {rec['deploy_threads']}", flush=True)
    # The tuned TVM models and onnxruntime / PyTorch in one process, taking turns: the ratio to
    # onnxruntime then compares runtimes in the same host minutes (the columns above are timed apart).
    if rec["onnx"].get("path") and result.device.is_local and not result.device.emulated:
        rec["alternatives"] = result.compare_with_alternatives(x1_np, torch_model=model, onnx_path=onnx_path)
        print(rec["alternatives"]["table"], flush=True)

    speedup = result.speedup
    loss = acc_orig - acc_adapt
    rec["speedup_vs_tuned_original"] = speedup
    rec["speedup_statistic"] = result.speedup_statistic  # median, or min when a timing was not stable
    rec["target"] = {"speedup": TARGET_SPEEDUP, "max_accuracy_loss_points": 100 * TARGET_ACC_LOSS,
                     "speedup_met": speedup >= TARGET_SPEEDUP, "accuracy_met": loss <= TARGET_ACC_LOSS + 1e-9}
    rec["target"]["met"] = rec["target"]["speedup_met"] and rec["target"]["accuracy_met"]
    rec["model_wall_s"] = time.time() - t_model
    rec["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return rec


# ----------------------------------------------------------------------------------------------
# Outputs: JSON, Markdown, plot
# ----------------------------------------------------------------------------------------------
def record_name(model: str, dataset: str) -> str:
    """File stem of a model's record, ONNX file and search directory (digits keeps the plain model name)."""
    return model if dataset == "digits" else f"{model}-{dataset}"


def _statistic(record: dict) -> str:
    """' (min)' when the speed-up compares minima (a timing was not stable), else ''."""
    return " (min)" if record.get("speedup_statistic") == "min" else ""


def _ms(entry: dict | None) -> str:
    if not entry or entry.get("median_s") is None:
        return "n/a"
    return f"{entry['median_s'] * 1e3:.3f}"


def vs_ort(lat: dict, alternatives: dict | None = None) -> str:
    """How much faster the adapted TVM model runs than onnxruntime on the original (>1: faster):
    from the in-process alternating timing (`TuneResult.compare_with_alternatives`) when the
    record has one, else from the separately timed columns."""
    if alternatives:
        return f"{alternatives['adapted_over_onnxruntime']:.2f}x (alternating)"
    ort, gos = lat.get("onnxruntime", {}), lat.get("gos_adapted_tuned", {})
    if not ort.get("median_s") or not gos.get("median_s"):
        return "n/a"
    return f"{ort['median_s'] / gos['median_s']:.2f}x"


def budget_label(cfg: dict) -> str:
    k = "all" if cfg.get("max_sites") is None else cfg["max_sites"]
    t = f"T={cfg['trials_per_task']}/task" if "trials_per_task" in cfg else f"T={cfg['trials']}"
    return (f"{t}, K={k}" + (", row split" if cfg.get("row_split") else "")
            + (", serial kernels" if cfg.get("serial_kernels") else ""))


def markdown(records: list[dict], machine: dict) -> str:
    from gos_tvm import datasets

    cmds = sorted({r["command"] for r in records})
    lines = ["# Model benchmark: GOS-adapted vs tuned TVM original vs PyTorch / onnxruntime", "",
             f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores "
             f"({machine.get('platform')}); TVM {machine.get('tvm')}, torch {machine.get('torch')}, "
             f"onnxruntime {machine.get('onnxruntime')}.", "",
             "Command(s):", "", *[f"    {c}" for c in cmds], "",
             f"**{NOISE_NOTE}**", "",
             *(["**Rows marked EMULATED were searched and measured on the emulated Raspberry Pi (qemu-user on "
                "this host): their TVM columns are emulation timings, not board timings, and are not comparable "
                "with the host's PyTorch / onnxruntime columns.**", ""] if any(r.get("emulated") for r in records)
               else []),
             "Data: " + "; ".join(f"{d}: {datasets.describe(d)}, test split of "
                                  f"{next(r['data']['test'] for r in records if r.get('dataset', 'digits') == d and 'data' in r)} images"
                                  for d in sorted({r.get('dataset', 'digits') for r in records if 'data' in r})) + "; "
             "the search sees the validation split, accuracy below is on the held-out test split. "
             "Latency: median ms per batch-1 inference.", "",
             "| model | TVM original tuned | GOS adapted tuned | speedup | PyTorch eager | torch.compile | "
             "onnxruntime | adapted vs onnxruntime | test acc orig → adapted (Δ pts) | sites replaced | search (wall, device meas.) | "
             f"target {TARGET_SPEEDUP}x & ≤{100 * TARGET_ACC_LOSS:.0f} pt |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("failed"):
            lines.append(f"| {r['model']} | FAILED: {r['failed'][:160]} | | | | | | | | | | not measured |")
            continue
        lat, acc = r["latency"], r["test_accuracy"]
        repl = ", ".join(f"{x['site']}→{x['by']}" for x in r["replaced"]) or "none"
        t = r["target"]
        verdict = "met" if t["met"] else ("MISSED: " + ", ".join(
            w for w, ok in (("speedup", t["speedup_met"]), ("accuracy", t["accuracy_met"])) if not ok))
        cfg = r["config"]
        lines.append(
            f"| {r['model']}{'' if r.get('dataset', 'digits') == 'digits' else ' on ' + r['dataset']}"
            f"{' (EMULATED rasp3b-aarch64)' if r.get('emulated') else ''} "
            f"({budget_label(cfg)}) | {_ms(lat['tvm_original_tuned'])} | "
            f"{_ms(lat['gos_adapted_tuned'])} | {r['speedup_vs_tuned_original']:.2f}x{_statistic(r)} | {_ms(lat['torch_eager'])} | "
            f"{_ms(lat['torch_compile'])} | {_ms(lat['onnxruntime'])} | {vs_ort(lat, r.get('alternatives'))} | {acc['original']:.4f} → {acc['adapted']:.4f} "
            f"({acc['delta_points']:+.2f}) | {len(r['replaced'])}/{r['sites_total']}: {repl} | "
            f"{r['search']['wall_s'] / 60:.1f} min, {r['search']['device_measurements']} | {verdict} |")
    notes = []
    for r in records:
        if r.get("failed"):
            notes += [f"- {r['model']}: {n}" for n in r.get("run_notes", [])]
            continue
        tc = r["latency"]["torch_compile"]
        if tc.get("na"):
            notes.append(f"- {r['model']}: torch.compile n/a: {tc['na']}")
        o = r.get("onnx", {})
        notes.append(f"- {r['model']}: ONNX export {'ok' if o.get('ok') else 'FAILED'}; onnxruntime vs torch max |diff| "
                     f"{o.get('onnxruntime_max_abs_diff', 'n/a')}; TVM from_onnx vs torch max |diff| "
                     f"{o.get('tvm_from_onnx_max_abs_diff', o.get('tvm_from_onnx_error', 'n/a'))}")
        for note in r.get("run_notes", []):  # added by hand to a raw record, e.g. an interrupted and resumed run
            notes.append(f"- {r['model']}: {note}")
        kept = [d for d in r["decisions"] if not d["choice"]]
        for d in kept:
            if d["reason"]:
                reason = d["reason"][len("kept: "):] if d["reason"].startswith("kept: ") else d["reason"]
                notes.append(f"- {r['model']}: {d['site']} kept: {reason}")
        unvisited = [d["site"] for d in kept if not d["reason"]]
        if unvisited:
            notes.append(f"- {r['model']}: not searched (max_sites={r['config']['max_sites']} reached first): "
                         + ", ".join(unvisited))
        for d in r["decisions"]:
            if d["choice"]:
                notes.append(f"- {r['model']}: {d['site']} replaced: {d['reason']}")
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += ["", "T = MetaSchedule trials per task of each whole model (original and adapted tuned into one database "
              "with the same per-task budget; records before this change: T trials per whole model); "
              "K = max sites GOS may replace (all: every site eligible). Speedup = TVM original tuned / GOS adapted tuned, both measured end to "
              "end on the local RPC device. Target: the published minimum, 2.2x over the tuned original at no more "
              "than 1 point of test accuracy lost; misses are reported as they are.", ""]
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 2.8 * len(records)), 4.2))
    width = 0.8 / len(RUNTIMES)
    for j, rt in enumerate(RUNTIMES):
        vals = [(r["latency"][rt].get("median_s") or 0) * 1e3 for r in records]
        xs = [i + (j - (len(RUNTIMES) - 1) / 2) * width for i in range(len(records))]
        bars = ax.bar(xs, vals, width, label=RUNTIME_LABELS[rt])
        for x, v, b in zip(xs, vals, bars):
            ax.text(x, v if v else 0, f"{v:.2f}" if v else "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(records)))
    ax.set_xticklabels([f"{r['model']}\n{r['speedup_vs_tuned_original']:.2f}x GOS" for r in records])
    ax.set_ylabel("batch-1 latency, median (ms)")
    ax.set_title("Latency per model and runtime (one run, shared noisy 2-core CPU)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_outputs(out: Path, machine: dict) -> dict:
    raw = out / "raw"
    records = [json.loads(p.read_text()) for p in sorted(raw.glob("*.json"))]
    order = {m: i for i, m in enumerate(MODELS)}
    records.sort(key=lambda r: (r.get("dataset", "digits") != "digits", r.get("dataset", "digits"),
                                order.get(r["model"], 99)))
    # The machine as recorded by the run that measured the first model (its CPU, cores, load at start).
    machine = next((r["machine"] for r in records if r.get("machine")), machine)
    doc = {"machine": machine, "note": NOISE_NOTE, "commands": sorted({r["command"] for r in records}),
           "target": {"speedup": TARGET_SPEEDUP, "max_accuracy_loss_points": 100 * TARGET_ACC_LOSS},
           "models": records}
    (out / "models.json").write_text(dump_json(doc))
    (out / "models.md").write_text(markdown(records, machine))
    measured = [r for r in records if not r.get("failed")]
    if measured:
        plot(measured, out / "models.png")
    return doc


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    out = Path(args.out).resolve()
    (out / "raw").mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(f"[machine] {machine}", flush=True)
    if args.report_only:  # keep the machine record of the run that produced the results
        if (out / "models.json").exists():
            machine = json.loads((out / "models.json").read_text()).get("machine", machine)
        return write_outputs(out, machine)
    failed = {}
    for name in args.models:
        try:
            rec = bench_model(name, args, work)
        except Exception as err:  # noqa: BLE001 - keep going with the next model, report the failure
            traceback.print_exc()
            failed[name] = f"{type(err).__name__}: {err}"
            rec = {"model": name, "dataset": args.dataset, "failed": failed[name], "command": shlex.join([sys.executable, *sys.argv]),
                   "machine": machine, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "traceback_tail": traceback.format_exc().strip().splitlines()[-6:]}
            (out / "raw" / f"{record_name(name, args.dataset)}.json").write_text(dump_json(rec))
            write_outputs(out, machine)
            continue
        (out / "raw" / f"{record_name(name, args.dataset)}.json").write_text(dump_json(rec))
        write_outputs(out, machine)
        print(f"[{name}] done in {rec['model_wall_s'] / 60:.1f} min: speedup {rec['speedup_vs_tuned_original']:.2f}x, "
              f"test accuracy {rec['test_accuracy']['original']:.4f} -> {rec['test_accuracy']['adapted']:.4f}; "
              f"wrote {out / 'models.md'}", flush=True)
    doc = write_outputs(out, machine)
    if failed:
        print(f"[failed] {failed}", flush=True)
    doc["failed"] = failed
    return doc


if __name__ == "__main__":
    main()
