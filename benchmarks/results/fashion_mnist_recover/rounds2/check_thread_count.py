"""Run C's tuned original and adapted vgg-style beside onnxruntime (2 threads), timed call by call in turns
(10 rounds of 300 calls), under the TVM_NUM_THREADS this process was started with."""
import dataclasses, json, time
import numpy as np, torch
import tvm
from tvm import relax
import os
from pathlib import Path

from run_c import resume_run_c

result, split = resume_run_c()
exes = {"original": result.compile(dataclasses.replace(result.chosen, choices={})), "adapted": result.compile()}
dev = tvm.cpu()
x = tvm.runtime.tensor(np.ascontiguousarray(split.x_test[:1]), dev)
vms = {n: relax.VirtualMachine(ex, dev)["main"] for n, ex in exes.items()}
fs = {n: (lambda f=f: f(x)) for n, f in vms.items()}
from gos_tvm.hw.alternatives import onnxruntime_call
fs["onnxruntime_2threads"] = onnxruntime_call("/work/fm15/vgg-style-fashion-mnist.onnx", np.ascontiguousarray(split.x_test[:1]), 2)
for f in fs.values():
    for _ in range(500): f()
res = {n: [] for n in fs}
for r in range(10):
    for n, f in fs.items():
        ts = []
        for _ in range(300):
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        res[n].append((np.median(ts) * 1e6, np.min(ts) * 1e6))
for n, v in res.items():
    med = [round(a, 1) for a, _ in v]; mn = [round(b, 1) for _, b in v]
    print(n, "round medians", med, "median of medians", round(float(np.median(med)), 1), "min", round(min(mn), 1))
json.dump(res, open(Path(__file__).with_name(f"alternating_tvm_threads_{os.environ.get('TVM_NUM_THREADS', 'default')}.json"), "w"))
