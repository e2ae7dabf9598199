"""Tuning convergence: how a tuned TVM model's latency falls with the per-task trial budget, beside
onnxruntime and PyTorch eager running the same model, all in one process at 2 threads.

For each model: import it (BatchNorm folded, as `gos_tvm.from_torch` does), extract its
MetaSchedule tasks, and tune them into ONE database, raising the per-task budget step by step
(``--curve 4 16 64``: each step tunes only the trials the previous steps did not); after each
step the module is compiled with the database (`gos_tvm.hw.compile_tuned`) and measured end to
end on the local RPC server.  onnxruntime (ORT_ENABLE_ALL, 2 intra-op threads) and PyTorch eager
(2 threads) time the original model at batch 1 in the same run.  The per-task table of the last
step says where TVM's time goes: trials, best latency and GFLOP/s of each task.

    python benchmarks/bench_tuning_convergence.py                       # all models, NCHW and NHWC, curve 4 16 64
    python benchmarks/bench_tuning_convergence.py --layouts NHWC        # channels-last only (opt-in in gos_tvm)
    python benchmarks/bench_tuning_convergence.py --models digits-cnn --curve 4 16

Writes ``<out>/tuning_convergence.json`` (a row per model and convolution layout, replacing that
pair's row of an earlier run and keeping the others: ``layout``, ``command``, ``model``, ``onnxruntime_ms``,
``torch_ms``, ``curve``: ``[{trials_per_task, tvm_ms, tuning_s}]``, ``tasks``: `gos_tvm.hw.tuning.database.task_table`) and prints a table.
Latencies are one run on whatever machine runs this; compare them as ratios within the run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import export_onnx, machine_info, strict, time_calls  # noqa: E402

MODELS = ("resnet18-style", "mobilenetv2-style", "vgg-style", "digits-cnn", "ppg-tcn")


def build(name: str, seed: int) -> tuple[torch.nn.Module, np.ndarray]:
    """The model (fixed random weights: latency does not depend on them) and one batch-1 input."""
    from gos_tvm import models
    from gos_tvm.ppg.model import TCN

    torch.manual_seed(seed)
    if name == "ppg-tcn":
        return TCN().eval(), np.random.default_rng(seed).standard_normal((1, 4, 256)).astype("float32")
    cls, size = models.MODELS[name]
    model = cls().eval()
    x = np.random.default_rng(seed).standard_normal((1, 1, size, size)).astype("float32")
    with torch.no_grad():
        model(torch.from_numpy(x))  # the shape check: a wrong input size fails here, not in TVM
    return model, x


def onnxruntime_ms(model: torch.nn.Module, x: np.ndarray, work: Path, repeats: int) -> float:
    import onnxruntime as ort

    path = work / "model.onnx"
    check = export_onnx(model, x, path, x)
    if not check["ok"]:
        raise RuntimeError(f"onnxruntime disagrees with torch: {check}")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return time_calls(lambda: sess.run(None, {name: x}), repeats)["median_s"] * 1e3


def torch_ms(model: torch.nn.Module, x: np.ndarray, repeats: int) -> float:
    xt = torch.from_numpy(x)
    with torch.no_grad():
        return time_calls(lambda: model(xt), repeats)["median_s"] * 1e3


def bench_model(name: str, args: argparse.Namespace, pool) -> list[dict]:
    """One row per convolution layout of ``--layouts``: the curve, onnxruntime / PyTorch of the
    same model (timed once), and the per-task table of the last step."""
    model, x = build(name, args.seed)
    work = Path(tempfile.mkdtemp(prefix=f"conv_{name}_", dir=args.work_dir))
    base = {"model": name, "input_shape": list(x.shape), "onnxruntime_ms": onnxruntime_ms(model, x, work, args.repeats),
            "torch_ms": torch_ms(model, x, args.repeats)}
    from gos_tvm.graph import conv_layout

    rows = []
    for layout in args.layouts:
        with conv_layout(layout):
            rows.append(curve(name, model, x, dict(base, layout=layout), work / f"db_{layout}", args, pool))
    return rows


def curve(name: str, model: torch.nn.Module, x: np.ndarray, row: dict, db_dir: Path, args: argparse.Namespace,
          pool) -> dict:
    from tvm.s_tir import meta_schedule as ms

    from gos_tvm import graph
    from gos_tvm.hw import (TrackerRunner, WarmBuilder, compile_tuned, measure_module, open_database, preset,
                            tune_module)
    from gos_tvm.hw.tuning import prepare_relax
    from gos_tvm.hw.tuning.database import task_table

    device = preset("local")
    row["curve"] = []
    mod, params = graph.from_torch(model, torch.from_numpy(x))
    prepared = prepare_relax(mod, params, device.target)
    n_tasks = len(ms.relax_integration.extract_tasks(prepared, device.target))
    row["tasks_n"] = n_tasks
    db = open_database(db_dir)
    builder, runner = WarmBuilder(device), TrackerRunner(pool.tracker, pool.key)
    done, tuning_s = 0, 0.0
    try:
        for per_task in sorted(set(args.curve)):
            step = per_task - done
            t0 = time.perf_counter()
            tune_module(mod, params, device, builder=builder, runner=runner, database=db, work_dir=str(db_dir),
                        trials=step * n_tasks, max_trials_per_task=step, trials_per_iter=min(16, step),
                        seed=args.seed)
            tuning_s += time.perf_counter() - t0
            done = per_task
            stats = measure_module(compile_tuned(mod, params, device, db), device, pool.tracker, pool.key, [x],
                                   repeat=args.tvm_repeat, number=10)
            point = {"trials_per_task": per_task, "tvm_ms": stats.median * 1e3, "tvm_min_ms": stats.min * 1e3,
                     "tuning_s": tuning_s, "records": len(db.get_all_tuning_records())}
            row["curve"].append(point)
            print(f"  {name} [{row['layout']}]: {per_task:>4} trials/task -> TVM {point['tvm_ms']:.3f} ms "
                  f"(onnxruntime {row['onnxruntime_ms']:.3f}, torch {row['torch_ms']:.3f}), "
                  f"tuning {tuning_s:.0f} s", flush=True)
    finally:
        runner.close()
        builder.close()
    row["tasks"] = task_table(prepared, device.target, db)  # trials, best latency_s and GFLOP/s per task
    row["tvm_over_onnxruntime"] = row["curve"][-1]["tvm_ms"] / row["onnxruntime_ms"]
    return row


def table(rows: list[dict]) -> str:
    points = sorted({p["trials_per_task"] for r in rows for p in r["curve"]})
    head = ("| model | layout | tasks | onnxruntime ms | PyTorch ms | " + " | ".join(f"TVM @{t}/task ms" for t in points)
            + " | TVM / onnxruntime |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        by = {p["trials_per_task"]: p for p in r["curve"]}
        cells = [f"{by[t]['tvm_ms']:.3f} ({by[t]['tuning_s']:.0f} s)" if t in by else "-" for t in points]
        lines.append(f"| {r['model']} | {r['layout']} | {r['tasks_n']} | {r['onnxruntime_ms']:.3f} | {r['torch_ms']:.3f} | "
                     + " | ".join(cells) + f" | {r['tvm_over_onnxruntime']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--curve", nargs="+", type=int, default=[4, 16, 64], help="per-task trial budgets, ascending")
    p.add_argument("--layouts", nargs="+", default=["NCHW", "NHWC"], choices=("NCHW", "NHWC"),
                   help="convolution layouts to tune and compile in (gos_tvm.graph.conv_layout)")
    p.add_argument("--repeats", type=int, default=200, help="timed calls for onnxruntime / PyTorch")
    p.add_argument("--tvm-repeat", type=int, default=20, help="end-to-end TVM repeats (10 calls each)")
    p.add_argument("--work-dir", default=None, help="databases and ONNX files (default: a temporary directory)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if any(c < 1 for c in args.curve):
        p.error(f"--curve budgets must be >= 1, got {args.curve}")
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
    torch.set_num_threads(2)

    from gos_tvm.hw import LocalDevicePool

    rows = []
    with LocalDevicePool("gos-convergence", n_servers=1) as pool:
        for name in args.models:
            print(f"{name} ...", flush=True)
            rows.extend(bench_model(name, args, pool))
    command = " ".join(["python", "benchmarks/bench_tuning_convergence.py", *(argv if argv is not None else sys.argv[1:])])
    for row in rows:
        row["command"] = command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tuning_convergence.json"
    # Rows of other (model, layout) pairs from earlier runs are kept, so runs can fill the table
    # piecewise; each row says which command made it.
    fresh = {(r["model"], r["layout"]) for r in rows}
    kept = [r for r in (json.loads(path.read_text())["rows"] if path.exists() else [])
            if (r["model"], r.get("layout")) not in fresh and "layout" in r]
    result = {"machine": machine_info(), "rows": kept + rows}
    path.write_text(json.dumps(strict(result), indent=1))
    print(table(result["rows"]))
    print(f"wrote {out / 'tuning_convergence.json'}")
    return result


if __name__ == "__main__":
    main()
