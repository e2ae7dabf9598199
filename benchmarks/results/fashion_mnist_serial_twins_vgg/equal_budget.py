"""Both models of a finished bench_models.py run, tuned further to one larger, equal per-task budget:
does the speed-up (and the margin over onnxruntime) hold when every task is tuned closer to
convergence?

The run's search is resumed with the run's own command line (nothing is searched or measured
again), its database is copied, and the original then the adapted model are tuned up to TRIALS
trials per task into the copy (`tune_tasks_per_task`: a task's records count toward its budget, so
the adapted model's unchanged tasks are not tuned twice; one RPC server at two threads, as the
run).  Both are compiled from the copy, exported, and timed with onnxruntime on the original at 1
and 2 threads, each library and count in a fresh process, taking turns (`bench_runtime_threads`'s
measurement).

    python equal_budget.py OUT_DIR TRIALS ROUNDS -- <the run's bench_models.py arguments>

e.g. `python equal_budget.py /work/fm19/equal192 192 4 -- --dataset fashion-mnist --layout NHWC
--models vgg-style --trials-per-task 64 --final-distill-steps 1500 --recover-steps 300 --rounds 2
--serial-kernels --work-dir /work/fm19 --out /work/fm19/out_r2`."""
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
from gos_tvm.hw.tuning.database import database_kernel_sum  # noqa: E402
from gos_tvm.hw.tuning.session import prepare_relax  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

out, trials, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
args, work, split, result = bench_models.resume_run(sys.argv[sys.argv.index("--") + 1:])
tag = bench_models.record_name(args.models[0], args.dataset)
search_dir = bench_models.search_dir(args, work, args.models[0])
out.mkdir(parents=True, exist_ok=True)
target = resolve_target("local")
with graph.conv_layout(args.layout):
    db_dir = out / "database"
    shutil.rmtree(db_dir, ignore_errors=True)
    shutil.copytree(search_dir / "database", db_dir)
    db = open_database(db_dir)
    rows, libraries = {}, {}
    with LocalDevicePool("local", n_servers=1, threads=2) as (host, port, key):
        for which, config in (("original", dataclasses.replace(result.chosen, choices={})), ("adapted", result.chosen)):
            vmod, vparams = result.build(config)
            prepared = prepare_relax(vmod, vparams, target)
            tasks = ms.relax_integration.extract_tasks(prepared, target)
            before = database_kernel_sum(prepared, target, db)
            t0 = time.time()
            info = tune_tasks_per_task(tasks, "local", trials, database=db, work_dir=str(out / f"{which}_work"),
                                       tracker=(host, port), key=key, seed=args.seed)
            rows[which] = {"tasks": len(tasks), "tuned": len(info["tuned"]), "planned_trials": info["planned"],
                           "tuning_s": round(time.time() - t0, 1),
                           "records_sum_us_before": round(before * 1e6, 2),
                           "records_sum_us_after": round(database_kernel_sum(prepared, target, db) * 1e6, 2)}
            print(which, json.dumps(rows[which]), flush=True)
            libraries[which] = str(out / f"{which}_{trials}pt.so")
            compile_tuned(vmod, vparams, "local", db).export_library(libraries[which])
            ran = f"{which}_{args.trials_per_task}pt"  # as the run compiled it, from its own database
            libraries[ran] = str(out / f"{ran}.so")
            compile_tuned(vmod, vparams, "local", open_database(search_dir / "database")).export_library(libraries[ran])

onnx_path = work / f"{tag}.onnx"
shape = ",".join(str(d) for d in split.x_val[:1].shape)
bench_models.time_in_fresh_processes(libraries, onnx_path, shape, rounds, out / "timing")
(out / "equal_budget.json").write_text(json.dumps({"trials_per_task": trials, "run": " ".join(sys.argv),
                                                   "tuning": rows, "libraries": libraries}, indent=1))
print(json.dumps(rows, indent=1))
