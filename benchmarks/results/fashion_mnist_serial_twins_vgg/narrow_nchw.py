"""The adapted model of a finished NHWC bench_models.py run compiled "NHWC-narrow": its convolutions
with fewer output channels than the CPU's float32 lanes computed NCHW inside kernels that read and
write NHWC, the rest as in the run (`gos_tvm.graph.layout.narrow_conv2d_as_nchw`).  The run's search
is resumed (nothing searched again), its database copied, the original and the adapted model tuned
"NHWC-narrow" up to the run's trials per task into the copy (only the new narrow kernels are tuned;
one RPC server at two threads, as the run), compiled, exported and timed beside the run's own NHWC
libraries and onnxruntime, each library and thread count in a fresh process.

    python narrow_nchw.py OUT_DIR ROUNDS -- <the run's bench_models.py arguments>

(Its first version, commit 58a495a, compiled those convolutions NCHW between NHWC neighbours, with
transpose kernels at the borders: `narrow_nchw/transposes/`.)
"""
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
import bench_models  # noqa: E402

from gos_tvm import graph  # noqa: E402
from gos_tvm.hw import LocalDevicePool, compile_tuned, open_database, tune_tasks_per_task  # noqa: E402
from gos_tvm.hw.presets import resolve_target  # noqa: E402
from gos_tvm.hw.tuning.database import database_kernel_sum, task_table  # noqa: E402
from gos_tvm.hw.tuning.session import prepare_relax  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
args, work, split, result = bench_models.resume_run(sys.argv[sys.argv.index("--") + 1:])
tag = bench_models.record_name(args.models[0], args.dataset)
run_db = bench_models.search_dir(args, work, args.models[0]) / "database"
out.mkdir(parents=True, exist_ok=True)
target = resolve_target("local")
shutil.rmtree(out / "database", ignore_errors=True)
shutil.copytree(run_db, out / "database")
db = open_database(out / "database")
built = {which: result.build(config)
         for which, config in (("original", dataclasses.replace(result.chosen, choices={})), ("adapted", result.chosen))}
rows, libraries = {}, {}
with graph.conv_layout(args.layout):  # the run's own libraries, from its database
    for which, (vmod, vparams) in built.items():
        libraries[f"{which}_{args.layout}"] = str(out / f"{which}_{args.layout}.so")
        compile_tuned(vmod, vparams, "local", open_database(run_db)).export_library(libraries[f"{which}_{args.layout}"])
with graph.conv_layout("NHWC-narrow"), LocalDevicePool("local", n_servers=1, threads=2) as (host, port, key):
    for which, (vmod, vparams) in built.items():
        prepared = prepare_relax(vmod, vparams, target)
        tasks = ms.relax_integration.extract_tasks(prepared, target)
        t0 = time.time()
        info = tune_tasks_per_task(tasks, "local", args.trials_per_task, database=db, work_dir=str(out / f"{which}_work"),
                                   tracker=(host, port), key=key, seed=args.seed)
        rows[which] = {"tasks": len(tasks), "tuned": info["tuned"], "planned_trials": info["planned"],
                       "tuning_s": round(time.time() - t0, 1),
                       "records_sum_us": round(database_kernel_sum(prepared, target, db) * 1e6, 2),
                       "task_table": task_table(prepared, target, db)}
        print(which, json.dumps({k: v for k, v in rows[which].items() if k != "task_table"}), flush=True)
        libraries[f"{which}_NHWC-narrow"] = str(out / f"{which}_NHWC-narrow.so")
        compile_tuned(vmod, vparams, "local", db).export_library(libraries[f"{which}_NHWC-narrow"])

shape = ",".join(str(d) for d in split.x_val[:1].shape)
bench_models.time_in_fresh_processes(libraries, work / f"{tag}.onnx", shape, rounds, out / "timing")
(out / "narrow_nchw.json").write_text(json.dumps({"run": " ".join(sys.argv), "tuning": rows, "libraries": libraries},
                                                 indent=1, default=str))
