"""A controlled stock-vs-RowSplit comparison of one trained original: tune it per task (NHWC, one
RPC server at two threads, 64 trials per task) into a fresh database with the target's own
postprocessors (stock) or with RowSplit appended (`row_split_space`), then compile and export.

    python tune_original.py MODEL WEIGHTS_DIR stock|rowsplit OUT_DIR TRIALS SEED

e.g. `python tune_original.py vgg-style /work/fm18/weights rowsplit /work/exp/rs3/rowsplit_s0 64 0`
(the trained weights of runs C and fm18 are the same file)."""
import json
import sys
import time
from pathlib import Path

import torch
from tvm.s_tir import meta_schedule as ms

import gos_tvm
from gos_tvm import graph, models
from gos_tvm.hw import LocalDevicePool, compile_tuned, open_database, tune_tasks_per_task
from gos_tvm.hw.metaschedule.row_split import row_split_space
from gos_tvm.hw.presets import resolve_target
from gos_tvm.hw.tuning.database import database_kernel_sum
from gos_tvm.hw.tuning.session import prepare_relax

name, weights, mode, out, trials, seed = sys.argv[1:7]
out, trials, seed = Path(out), int(trials), int(seed)
assert mode in ("stock", "rowsplit"), mode
out.mkdir(parents=True, exist_ok=True)
model, split = models.trained_model(name, weights, dataset="fashion-mnist", epochs=6)
model.eval()
mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
target = resolve_target("local")
with graph.conv_layout("NHWC"):
    prepared = prepare_relax(mod, params, target)
    tasks = ms.relax_integration.extract_tasks(prepared, target)
    db = open_database(str(out / "db"))
    t0 = time.time()
    with LocalDevicePool("local", n_servers=1, threads=2) as pool:
        host, port, key = pool
        info = tune_tasks_per_task(tasks, "local", trials, database=db, work_dir=str(out / "work"),
                                   tracker=(host, port), key=key, seed=seed,
                                   space=row_split_space(target) if mode == "rowsplit" else "post-order-apply")
    print("tuned", round(time.time() - t0, 1), json.dumps({k: v for k, v in info.items() if k != "tuned"}), flush=True)
    print("records sum (us)", round(database_kernel_sum(prepared, target, db) * 1e6, 1), flush=True)
    compile_tuned(mod, params, "local", db).export_library(str(out / "original.so"))
    print("exported", out / "original.so")
