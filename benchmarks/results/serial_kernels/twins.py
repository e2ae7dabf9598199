"""A controlled with-vs-without serial twins comparison: the original and the adapted model of a
finished `gos-tvm tune` work directory (built-in model, channels-last) are each tuned once per task
(MetaSchedule's own space, one RPC server at two threads, TRIALS trials per task, seed SEED); the
database is copied, and each task's best schedule is re-measured in fresh measuring processes, as
the search does (`remeasure_best`): in one copy alone ("stock"), in the other beside its serial
twin (`serial_twins=True`: the same schedule without its parallel loop).  Both are compiled,
exported and timed at 1 and 2 threads, each library and count in a fresh process, taking turns
(`hw.deploy_threads`).  The two libraries of a model differ only in the kernels whose twin won.

    python twins.py WORK_DIR MODEL DATASET OUT_DIR TRIALS SEED ROUNDS

e.g. `python twins.py /work/exp/main_s/work digits-cnn digits /work/exp/twins 64 0 4`."""
import json
import sys
import time
from pathlib import Path

import torch
from tvm.s_tir import meta_schedule as ms

import gos_tvm
from gos_tvm import graph, models
from gos_tvm.hw import LocalDevicePool, TrackerRunner, WarmBuilder, compile_tuned, open_database, tune_tasks_per_task
from gos_tvm.hw.deploy_threads import json_ready, time_libraries_at_threads
from gos_tvm.hw.metaschedule.serial_kernels import record_is_serial
from gos_tvm.hw.presets import resolve_target
from gos_tvm.hw.tuning.database import best_record, copy_records, database_kernel_sum, remeasure_best
from gos_tvm.hw.tuning.session import prepare_relax

work, name, dataset, out, trials, seed, rounds = sys.argv[1:8]
out, trials, seed, rounds = Path(out), int(trials), int(seed), int(rounds)
out.mkdir(parents=True, exist_ok=True)
model, split = models.trained_model(name, Path(work) / "models", seed=0, dataset=dataset)
mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
target = resolve_target("local")
with graph.conv_layout("NHWC"):
    result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train, val_data=(split.x_val, split.y_val),
                          work_dir=work, seed=0)
    print(result.summary(), flush=True)
    variants = {"original": (mod, params), "adapted": result.build()}
    libraries, summary = {}, {}
    with LocalDevicePool("local", n_servers=1, threads=2) as (host, port, key):
        builder = WarmBuilder("local")
        for variant, (vmod, vparams) in variants.items():
            prepared = prepare_relax(vmod, vparams, target)
            tasks = ms.relax_integration.extract_tasks(prepared, target)
            tuned = open_database(str(out / variant / "tuned"))
            t0 = time.time()
            tune_tasks_per_task(tasks, "local", trials, database=tuned, work_dir=str(out / variant / "work"),
                                tracker=(host, port), key=key, seed=seed)
            tuning_s = round(time.time() - t0, 1)
            for twins in (False, True):
                run = f"{variant}_{'twins' if twins else 'stock'}"
                db = open_database(str(out / run))
                copy_records(tuned, db)
                runner = TrackerRunner((host, port), key)  # fresh measuring processes, as the search's re-timing
                try:
                    committed = remeasure_best(db, [t.dispatched[0] for t in tasks], target, builder, runner,
                                               serial_twins=twins)
                finally:
                    runner.close()
                best = [best_record(db, t.dispatched[0])[1] for t in tasks]
                row = {"tuning_s": tuning_s, "tasks": len(tasks), "committed": committed,
                       "records_sum_us": round(database_kernel_sum(prepared, target, db) * 1e6, 1),
                       "serial_best": sorted(t.task_name for t, r in zip(tasks, best)
                                             if r is not None and record_is_serial(r))}
                summary[run] = row
                print(run, json.dumps(row), flush=True)
                libraries[run] = out / f"{run}.so"
                compile_tuned(vmod, vparams, "local", db).export_library(str(libraries[run]))
        builder.close()
timed = json_ready(time_libraries_at_threads(libraries, split.x_val[:1], rounds=rounds))
(out / "twins.json").write_text(json.dumps({"records": summary, "timing": timed}, indent=1))
for lib, row in timed["libraries"].items():
    print(f"{lib:<18} " + "  ".join(f"{t}t {s * 1e6:7.1f} us" for t, s in row["seconds"].items()) + f"  best {row['best']}t")
