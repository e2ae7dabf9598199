"""Tune the fm17 mobilenetv2-style original (NHWC, 2 threads) per task into a fresh database,
with stock postprocs or + RowSplit; compile and export.  argv: mode(stock|rowsplit) out_dir trials [max_tasks [seed]] (seed, default 0, added after the first two runs)"""
import sys, json, time
from pathlib import Path
import numpy as np, torch
import gos_tvm
from gos_tvm import graph, models
from gos_tvm.hw import LocalDevicePool, open_database, tune_tasks_per_task, compile_tuned
from gos_tvm.hw.tuning.session import prepare_relax
from gos_tvm.hw.presets import resolve_target
from gos_tvm.hw.metaschedule.row_split import row_split_space
from tvm.s_tir import meta_schedule as ms
mode, out, trials = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
max_tasks = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != 'all' else None
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
out.mkdir(parents=True, exist_ok=True)
model, split = models.trained_model("mobilenetv2-style", "/work/fm17/weights", dataset="fashion-mnist", epochs=6)
model.eval()
mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
target = resolve_target("local")
with graph.conv_layout("NHWC"):
    prepared = prepare_relax(mod, params, target)
    tasks = ms.relax_integration.extract_tasks(prepared, target)[:max_tasks]
    space = row_split_space(target) if mode == "rowsplit" else "post-order-apply"
    db = open_database(str(out / "db"))
    t0 = time.time()
    with LocalDevicePool("local", n_servers=1, threads=2) as pool:
        host, port, key = pool
        info = tune_tasks_per_task(tasks, "local", trials, database=db, work_dir=str(out / "work"), tracker=(host, port),
                                   key=key, seed=seed, space=space)
    print("tuned", time.time() - t0, json.dumps({k: v for k, v in info.items() if k != "tuned"}), flush=True)
    if max_tasks is None:
        ex = compile_tuned(mod, params, "local", db)
        ex.export_library(str(out / "original.so"))
        print("exported", out / "original.so")
