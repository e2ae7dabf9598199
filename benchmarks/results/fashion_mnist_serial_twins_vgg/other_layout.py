"""The same two models of a finished NHWC bench_models.py run compiled in the other layout: the
run's search is resumed in its layout (nothing searched again), then the original and the adapted
model are tuned in LAYOUT, TRIALS trials per task, into one fresh database (one RPC server at two
threads, as the run), compiled, exported and timed beside the run's own NHWC libraries (compiled
from its database) and onnxruntime, each library and thread count in a fresh process.

    python other_layout.py OUT_DIR LAYOUT TRIALS ROUNDS -- <the run's bench_models.py arguments>
"""
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
import bench_models  # noqa: E402

import gos_tvm  # noqa: E402
from gos_tvm import graph, models  # noqa: E402
from gos_tvm.hw import LocalDevicePool, compile_tuned, open_database, tune_tasks_per_task  # noqa: E402
from gos_tvm.hw.presets import resolve_target  # noqa: E402
from gos_tvm.hw.tuning.database import database_kernel_sum  # noqa: E402
from gos_tvm.hw.tuning.session import prepare_relax  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

out, layout, trials, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
args = bench_models.parse_args(sys.argv[sys.argv.index("--") + 1:])
(name,) = args.models
work = Path(args.work_dir).resolve()
tag = bench_models.record_name(name, args.dataset)
search_dir = work / (f"gos_{tag}" + ("" if args.layout == "NCHW" else f"-{args.layout.lower()}"))
out.mkdir(parents=True, exist_ok=True)

model, split = models.trained_model(name, work / "weights", epochs=args.epochs, seed=args.seed, dataset=args.dataset,
                                    train_samples=args.train_samples)
mod, params = gos_tvm.from_torch(model.eval(), torch.from_numpy(split.x_train[:1]))
target = resolve_target("local")
with graph.conv_layout(args.layout):
    result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train, val_data=(split.x_val, split.y_val),
                          accuracy_budget=args.budget, trials_per_task=args.trials_per_task,
                          kernel_trials=args.kernel_trials, max_sites=args.max_sites, seed=args.seed,
                          **bench_models.search_options(args), work_dir=search_dir)
    print(result.summary(), flush=True)
    db = open_database(out / "database")
    rows, libraries = {}, {}
    configs = (("original", dataclasses.replace(result.chosen, choices={})), ("adapted", result.chosen))
    for which, config in configs:  # the run's own libraries, in its layout, from its database
        vmod, vparams = result.build(config)
        libraries[f"{which}_{args.layout}"] = str(out / f"{which}_{args.layout}.so")
        compile_tuned(vmod, vparams, "local", open_database(search_dir / "database")).export_library(
            libraries[f"{which}_{args.layout}"])
with graph.conv_layout(layout), LocalDevicePool("local", n_servers=1, threads=2) as (host, port, key):
    for which, config in configs:
        vmod, vparams = result.build(config)
        prepared = prepare_relax(vmod, vparams, target)
        tasks = ms.relax_integration.extract_tasks(prepared, target)
        t0 = time.time()
        info = tune_tasks_per_task(tasks, "local", trials, database=db, work_dir=str(out / f"{which}_work"),
                                   tracker=(host, port), key=key, seed=args.seed)
        rows[which] = {"tasks": len(tasks), "planned_trials": info["planned"], "tuning_s": round(time.time() - t0, 1),
                       "records_sum_us": round(database_kernel_sum(prepared, target, db) * 1e6, 2)}
        print(which, json.dumps(rows[which]), flush=True)
        libraries[f"{which}_{layout}"] = str(out / f"{which}_{layout}.so")
        compile_tuned(vmod, vparams, "local", db).export_library(libraries[f"{which}_{layout}"])

onnx_path = work / f"{tag}.onnx"
shape = ",".join(str(d) for d in split.x_val[:1].shape)
cmd = [sys.executable, str(Path(bench_models.__file__).with_name("bench_runtime_threads.py")), "--rounds", str(rounds),
       "--out", str(out / "timing"), "--onnx", str(onnx_path), shape]
for lib in libraries.values():
    cmd += ["--library", lib, shape]
subprocess.run(cmd, check=True)
(out / "other_layout.json").write_text(json.dumps({"layout": layout, "trials_per_task": trials, "run": " ".join(sys.argv),
                                                   "tuning": rows, "libraries": libraries}, indent=1))
print(json.dumps(rows, indent=1))
