import dataclasses
import numpy as np, torch, tvm
from tvm import s_tir
from gos_tvm import graph
from gos_tvm.hw.tuning.session import prepare_relax, resolve_target, verified_database, import_tensor_intrin
from gos_tvm.hw.tuning.database import record_latency
import tvm.s_tir.meta_schedule as ms

from run_c import resume_run_c

result, split = resume_run_c()
with graph.conv_layout(result.conv_layout):
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
