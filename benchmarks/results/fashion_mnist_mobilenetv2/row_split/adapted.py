"""Resume the fm17 mobilenetv2 search (a copy of its work dir: nothing is tuned again) to get its
adapted model, then tune that model's tasks into the stock and the rowsplit databases (64/task,
each with its own postprocessors; tasks the original shared are already there) and export both."""
import sys, json, time, shutil, pickle
from pathlib import Path
import numpy as np, torch
import gos_tvm
from gos_tvm import graph, models
from gos_tvm.hw import LocalDevicePool, open_database, tune_module_per_task, compile_tuned
from gos_tvm.hw.metaschedule.row_split import row_split_space
from gos_tvm.hw.presets import resolve_target
root = Path("/work/exp/rs2")
work = root / "fm17copy"
if not work.exists():
    shutil.copytree("/work/fm17/gos_mobilenetv2-style-fashion-mnist-nhwc", work)
model, split = models.trained_model("mobilenetv2-style", "/work/fm17/weights", dataset="fashion-mnist", epochs=6)
model.eval()
mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
t0 = time.time()
with graph.conv_layout("NHWC"):
    result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train, val_data=(split.x_val, split.y_val),
                          accuracy_budget=0.01, trials_per_task=64, kernel_trials=None, max_sites=None, seed=0,
                          final_distill_steps=1500, work_dir=work)
    print("resumed in", time.time() - t0, result.summary(), flush=True)
    amod, aparams = result.build(result.chosen)
    for mode in ("stock", "rowsplit"):
        space = row_split_space(resolve_target("local")) if mode == "rowsplit" else "post-order-apply"
        db = open_database(str(root / mode / "db"))
        t0 = time.time()
        with LocalDevicePool("local", n_servers=1, threads=2) as pool:
            host, port, key = pool
            info = tune_module_per_task(amod, aparams, "local", 64, database=db, work_dir=str(root / mode / "work_adapted"),
                                        tracker=(host, port), key=key, seed=0, space=space)
        print(mode, "tuned", time.time() - t0, json.dumps({k: v for k, v in info.items()}), flush=True)
        ex = compile_tuned(amod, aparams, "local", db)
        ex.export_library(str(root / mode / "adapted.so"))
        print("exported", root / mode / "adapted.so", flush=True)
