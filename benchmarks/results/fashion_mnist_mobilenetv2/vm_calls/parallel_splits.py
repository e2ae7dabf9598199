"""Which output axis each tuned kernel's parallel loop splits in halves (what thread 0 and thread 1
compute on two threads), for the best record of every workload in a MetaSchedule database.
Consecutive kernels that split different axes hand data across cores (README, "Why: a kernel
reading what the other core wrote").  Run (2 Dec 2026, 03:55 UTC) as
    python parallel_splits.py /work/fm17/gos_mobilenetv2-style-fashion-mnist-nhwc/database > parallel_splits.txt
The halves are evaluated from the first block's bindings with every inner loop at 0 (tile starts)."""
import collections
import re
import sys

from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms

folder = sys.argv[1]
db = ms.database.JSONDatabase(path_workload=f"{folder}/database_workload.json",
                              path_tuning_record=f"{folder}/database_tuning_record.json")
best = {}
for r in db.get_all_tuning_records():
    if r.run_secs:
        key, t = r.workload.mod.script(), sum(float(x) for x in r.run_secs) / len(r.run_secs)
        if key not in best or t < best[key][0]:
            best[key] = (t, r)
counts = collections.Counter()
for t, r in sorted(best.values(), key=lambda v: -v[0]):
    sch = Schedule(r.workload.mod)
    r.trace.apply_to_schedule(sch, remove_postproc=False)
    text = sch.mod.script()
    m = re.search(r"for (\S+) in T.parallel\(T.int64\((\d+)\)", text)
    if not m or int(m.group(2)) < 2:
        counts["no parallel loop"] += 1
        continue
    var, extent = m.group(1), int(m.group(2))
    split = []
    for name, size, expr in re.findall(r"v_(\w+) = T.axis.spatial\(T.int64\((\d+)\), ([^\n]*)\)\n", text[m.end():][:4000])[:6]:
        if var not in expr:
            continue
        e = re.sub(r"T.int64\((\d+)\)", r"\1", expr)
        e = re.sub(r"\b(?!%s\b)[A-Za-z_]\w*\b" % re.escape(var), "0", e)
        at = eval(f"lambda {var}: {e}")
        first, second = {at(i) for i in range(extent // 2)}, {at(i) for i in range(extent // 2, extent)}
        if max(first) < min(second):
            split.append(f"{name}({size})")
    kind = f"halves by {split[0]}" if split else "no axis in halves"
    counts[re.sub(r"\(\d+\)", "", kind)] += 1
    print(f"{t * 1e6:7.1f} us  parallel {extent:5d}  {kind}")
print(dict(counts))
