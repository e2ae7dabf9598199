"""Per edge of an exported model where kernel k-1 writes the tensor kernel k reads: the pair back to
back (k reading k-1's buffer) minus each alone (`gos_tvm.hw.vm_calls.time_handoffs`, best of 5 x 400
calls), at this process's TVM_NUM_THREADS.  handoff_{1,2}.json and handoff_adapted_{1,2}.json were
written on 2 Dec 2026, 03:27 UTC, by this script's first version (the same loops inline, commit
485e42b), as
    TVM_NUM_THREADS=1 python handoff_pairs.py /work/fm17/mobilenetv2-style-fashion-mnist_original.so 1,1,32,32 handoff_1.json
    TVM_NUM_THREADS=2 python handoff_pairs.py ... handoff_2.json"""
import json
import sys

import numpy as np

from gos_tvm.hw.vm_calls import time_handoffs

path, shape = sys.argv[1], tuple(int(v) for v in sys.argv[2].split(","))
x = np.random.default_rng(0).standard_normal(shape).astype("float32")
edges = time_handoffs(path, x)
for e in edges:
    print(f"{e['reader'][:48]:<48} {e['bytes'] / 1024:7.1f} KiB  hand-off {e['handoff_s'] * 1e6:6.2f} us")
total = sum(e["handoff_s"] for e in edges) * 1e6
print(f"edges {len(edges)}; sum {total:.1f} us")
json.dump({"library": path, "edges": [{"reader": e["reader"], "bytes": e["bytes"], "handoff_us": e["handoff_s"] * 1e6}
                                      for e in edges], "sum_us": total}, open(sys.argv[3], "w"), indent=1)
