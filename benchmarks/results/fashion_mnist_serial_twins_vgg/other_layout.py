"""The same two models of a finished NHWC bench_models.py run compiled in the other layout: the
run's search is resumed in its layout (nothing searched again), then the original and the adapted
model are tuned in LAYOUT, TRIALS trials per task, into one fresh database (one RPC server at two
threads, as the run), compiled, exported and timed beside the run's own NHWC libraries (compiled
from its database) and onnxruntime, each library and thread count in a fresh process.

    python other_layout.py OUT_DIR LAYOUT TRIALS ROUNDS -- <the run's bench_models.py arguments>
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
import bench_models  # noqa: E402

from gos_tvm import graph  # noqa: E402
from gos_tvm.hw import LocalDevicePool, compile_tuned, open_database, tune_tasks_per_task  # noqa: E402
from gos_tvm.hw.presets import resolve_target  # noqa: E402
from gos_tvm.hw.tuning.database import database_kernel_sum  # noqa: E402
from gos_tvm.hw.tuning.session import prepare_relax  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

out, layout, trials, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
args, work, split, result = bench_models.resume_run(sys.argv[sys.argv.index("--") + 1:])
tag = bench_models.record_name(args.models[0], args.dataset)
search_dir = bench_models.search_dir(args, work, args.models[0])
out.mkdir(parents=True, exist_ok=True)
target = resolve_target("local")
with graph.conv_layout(args.layout):
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
bench_models.time_in_fresh_processes(libraries, onnx_path, shape, rounds, out / "timing")
(out / "other_layout.json").write_text(json.dumps({"layout": layout, "trials_per_task": trials, "run": " ".join(sys.argv),
                                                   "tuning": rows, "libraries": libraries}, indent=1))
print(json.dumps(rows, indent=1))
