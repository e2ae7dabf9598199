"""A controlled stock-vs-serial-or-parallel comparison: the original and the adapted model of a
finished `gos-tvm tune` work directory (built-in model, channels-last) are each tuned per task into
a fresh database (one RPC server at two threads, TRIALS trials per task, seed SEED) with
MetaSchedule's own design space (stock) or with its serial twin added
(`gos_tvm.hw.metaschedule.serial_kernels.serial_or_parallel_space`), exported, and the four
libraries timed at 1 and 2 threads, each in a fresh process, taking turns (`hw.deploy_threads`).

    python tune_serial.py WORK_DIR MODEL DATASET OUT_DIR TRIALS SEED ROUNDS

e.g. `python tune_serial.py /work/exp/main_s/work digits-cnn digits /work/exp/serial 64 0 4`
(resuming the finished search of the README's main command returns its adapted model)."""
import json
import sys
import time
from pathlib import Path

import torch
from tvm.s_tir import meta_schedule as ms

import gos_tvm
from gos_tvm import graph, models
from gos_tvm.hw import LocalDevicePool, compile_tuned, open_database, tune_tasks_per_task
from gos_tvm.hw.deploy_threads import json_ready, time_libraries_at_threads
from gos_tvm.hw.metaschedule.serial_kernels import record_is_serial, serial_or_parallel_space
from gos_tvm.hw.presets import resolve_target
from gos_tvm.hw.tuning.database import database_kernel_sum
from gos_tvm.hw.tuning.database import best_record
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
    for variant, (vmod, vparams) in variants.items():
        prepared = prepare_relax(vmod, vparams, target)
        tasks = ms.relax_integration.extract_tasks(prepared, target)
        for space in ("stock", "serial"):
            run = out / f"{variant}_{space}"
            db = open_database(str(run / "db"))
            t0 = time.time()
            with LocalDevicePool("local", n_servers=1, threads=2) as (host, port, key):
                info = tune_tasks_per_task(tasks, "local", trials, database=db, work_dir=str(run / "work"),
                                           tracker=(host, port), key=key, seed=seed,
                                           space=serial_or_parallel_space(target) if space == "serial"
                                           else "post-order-apply")
            records = [best_record(db, t.dispatched[0])[1] for t in tasks]
            row = {"tuning_s": round(time.time() - t0, 1), "tasks": len(tasks),
                   "records_sum_us": round(database_kernel_sum(prepared, target, db) * 1e6, 1),
                   "serial_best_records": sum(record_is_serial(r) for r in records if r is not None),
                   "exhausted": info["exhausted"]}
            summary[f"{variant}_{space}"] = row
            print(variant, space, json.dumps(row), flush=True)
            libraries[f"{variant}_{space}"] = run / "model.so"
            compile_tuned(vmod, vparams, "local", db).export_library(str(run / "model.so"))
timed = json_ready(time_libraries_at_threads(libraries, split.x_val[:1], rounds=rounds))
(out / "serial_kernels.json").write_text(json.dumps({"tuning": summary, "timing": timed}, indent=1))
for lib, row in timed["libraries"].items():
    print(f"{lib:<18} " + "  ".join(f"{t}t {s * 1e6:7.1f} us" for t, s in row["seconds"].items()) + f"  best {row['best']}t")
