"""Where the end-to-end time of vgg-style (run C) goes beyond its kernels: Python call vs the VM's own loop vs kernels."""
import dataclasses, json, time
import numpy as np, torch
import tvm
from tvm import relax
import gos_tvm
from gos_tvm import models, graph

model, split = models.trained_model("vgg-style", "/work/fm15/weights", epochs=6, seed=0, dataset="fashion-mnist")
model.eval()
mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
with graph.conv_layout("NHWC"):
    result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train, val_data=(split.x_val, split.y_val),
                          accuracy_budget=0.01, trials_per_task=64, seed=0, final_distill_steps=1500,
                          recover_steps=300, rounds=2,
                          warm_start_database="/work/fm13/gos_vgg-style-fashion-mnist-nhwc/database",
                          work_dir="/work/fm15/gos_vgg-style-fashion-mnist-nhwc")
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
import os; json.dump({n: v for n, v in res.items()}, open(f"/work/exp/alternating_{os.environ.get('TVM_NUM_THREADS', 'default')}.json", "w"))
