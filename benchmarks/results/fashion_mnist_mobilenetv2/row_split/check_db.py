import sys, collections
import tvm
from tvm.s_tir import meta_schedule as ms
from gos_tvm.hw import open_database
from gos_tvm.hw.metaschedule.row_split import splits_rows
db = open_database(sys.argv[1])
by = collections.defaultdict(list)
for r in db.get_all_tuning_records():
    by[r.workload].append(r)
ok = bad = 0
for w, recs in by.items():
    best = min(recs, key=lambda r: sum(float(x) for x in r.run_secs) if r.run_secs else 1e9)
    sch = tvm.s_tir.Schedule(w.mod)
    best.trace.apply_to_schedule(sch, remove_postproc=False)
    res = splits_rows(sch, 1, 2)
    ok += res; bad += not res
print("pass", ok, "fail", bad)
