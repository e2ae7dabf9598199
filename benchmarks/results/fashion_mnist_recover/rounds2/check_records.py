import dataclasses
import numpy as np, torch, tvm
from tvm import s_tir
import gos_tvm
from gos_tvm import models, graph
from gos_tvm.hw.tuning.session import prepare_relax, resolve_target, verified_database, import_tensor_intrin
from gos_tvm.hw.tuning.database import record_latency
import tvm.s_tir.meta_schedule as ms

model, split = models.trained_model("vgg-style", "/work/fm15/weights", epochs=6, seed=0, dataset="fashion-mnist")
model.eval()
mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
with graph.conv_layout("NHWC"):
    result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train, val_data=(split.x_val, split.y_val),
                          accuracy_budget=0.01, trials_per_task=64, seed=0, final_distill_steps=1500,
                          recover_steps=300, rounds=2,
                          warm_start_database="/work/fm13/gos_vgg-style-fashion-mnist-nhwc/database",
                          work_dir="/work/fm15/gos_vgg-style-fashion-mnist-nhwc")
    db = result.tuning_database()
    tgt = resolve_target(result.device.target)
    import_tensor_intrin()
    for name, cfg in (("original", dataclasses.replace(result.chosen, choices={})), ("adapted", result.chosen)):
        m, p = result.build(cfg)
        lowered = prepare_relax(m, p, tgt)
        tasks = ms.relax_integration.extract_tasks(lowered, tgt)
        vdb = verified_database(db, [t.dispatched[0] for t in tasks])
        tot = 0.0
        for t in tasks:
            w = t.dispatched[0]
            rec = vdb.query_tuning_record(w, tgt, t.task_name)
            lat = record_latency(rec) if rec is not None else None
            allrec = db.query_tuning_record(w, tgt, t.task_name)
            tot += (lat or 0) * t.weight
            print(name, t.task_name, t.weight, "verified", None if lat is None else round(lat * 1e6, 1),
                  "any", None if allrec is None else round(record_latency(allrec) * 1e6, 1))
        print(name, "sum us", round(tot * 1e6, 1))
