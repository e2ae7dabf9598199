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
out = {}
for name, ex in exes.items():
    vm = relax.VirtualMachine(ex, dev)
    f = vm["main"]
    for _ in range(300):
        f(x)
    py = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(200):
            f(x)
        py.append((time.perf_counter() - t) / 200)
    te = vm.time_evaluator("main", dev, number=200, repeat=5)(x)
    out[name] = {"python_loop_us": [round(v * 1e6, 1) for v in py], "time_evaluator_us": [round(v * 1e6, 1) for v in te.results]}
    print(name, out[name])
json.dump(out, open("/work/exp/overhead.json", "w"), indent=1)
