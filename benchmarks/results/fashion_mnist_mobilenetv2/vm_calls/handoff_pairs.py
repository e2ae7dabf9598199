"""Per edge of an exported model where kernel k-1 writes the tensor kernel k reads: the pair back to
back (k reading k-1's buffer) minus each alone, in the same Python loop (best of 5 x 400), at this
process's TVM_NUM_THREADS.  Run (2 Dec 2026, 03:27 UTC; the adapted library too, handoff_adapted_{1,2}.json) as
    TVM_NUM_THREADS=1 python handoff_pairs.py /work/fm17/mobilenetv2-style-fashion-mnist_original.so 1,1,32,32 handoff_1.json
    TVM_NUM_THREADS=2 python handoff_pairs.py ... handoff_2.json"""
import sys, time, json
import numpy as np, tvm
from gos_tvm.hw.vm_calls import record_calls, kernel_library
path, shape = sys.argv[1], tuple(int(v) for v in sys.argv[2].split(","))
x = np.random.default_rng(0).standard_normal(shape).astype("float32")
calls, _ = record_calls(path, x)
lib = kernel_library(path)
dev = tvm.cpu()
def tensors(arrs): return [tvm.runtime.tensor(a, dev) if isinstance(a, np.ndarray) else a for a in arrs]
def loop(fns, n=400):
    for _ in range(50):
        for f, a in fns: f(*a)
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            for f, a in fns: f(*a)
        best = min(best, (time.perf_counter() - t) / n)
    return best
rows = []
for k in range(1, len(calls)):
    prev, cur = calls[k - 1], calls[k]
    out_prev = prev.args_after[-1]
    idx = [i for i, a in enumerate(cur.args_before[:-1]) if isinstance(a, np.ndarray) and a.shape == out_prev.shape and np.array_equal(a, out_prev)]
    if not idx:
        continue
    pa, ca = tensors(prev.args_before), tensors(cur.args_before)
    ca[idx[0]] = pa[-1]  # k reads the buffer k-1 writes
    fp, fc = lib[prev.symbol], lib[cur.symbol]
    alone_p = loop([(fp, pa)]); alone_c = loop([(fc, tensors(cur.args_before))])
    pair = loop([(fp, pa), (fc, ca)])
    rows.append((cur.symbol, out_prev.nbytes, (pair - alone_p - alone_c) * 1e6))
for s, b, e in rows:
    print(f"{s[:48]:<48} {b/1024:7.1f} KiB  hand-off {e:6.2f} us")
print(f"edges {len(rows)} of {len(calls)-1}; sum {sum(e for *_, e in rows):.1f} us")
json.dump({"library": path, "edges": [{"reader": s, "bytes": b, "handoff_us": e} for s, b, e in rows],
           "sum_us": sum(e for *_, e in rows)}, open(sys.argv[3], "w"), indent=1)
