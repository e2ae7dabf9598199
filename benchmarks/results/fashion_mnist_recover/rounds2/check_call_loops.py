"""Where the end-to-end time of vgg-style (run C) goes beyond its kernels: Python call vs the VM's own loop vs kernels."""
import dataclasses, json, time
import numpy as np, torch
import tvm
from tvm import relax
from pathlib import Path

from run_c import resume_run_c

result, split = resume_run_c()
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
json.dump(out, open(Path(__file__).with_name("call_loops.json"), "w"), indent=1)
