"""Export run C's (two threads, benchmarks/results/fashion_mnist_recover/rounds2) tuned original and
adapted vgg-style as libraries, by resuming its work directory /work/fm15 (so it runs only on the
machine that has it).  Run with TVM_NUM_THREADS=2: the run was tuned for two cores."""
import dataclasses
import os
import sys

import torch

import gos_tvm
from gos_tvm import graph, models

assert os.environ.get("TVM_NUM_THREADS") == "2", "run C was tuned for two threads: TVM_NUM_THREADS=2"
out = sys.argv[1]
model, split = models.trained_model("vgg-style", "/work/fm15/weights", epochs=6, seed=0, dataset="fashion-mnist")
model.eval()
mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
with graph.conv_layout("NHWC"):
    result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train, val_data=(split.x_val, split.y_val),
                          accuracy_budget=0.01, trials_per_task=64, seed=0, final_distill_steps=1500,
                          recover_steps=300, rounds=2,
                          warm_start_database="/work/fm13/gos_vgg-style-fashion-mnist-nhwc/database",
                          work_dir="/work/fm15/gos_vgg-style-fashion-mnist-nhwc")
for which, config in (("original", dataclasses.replace(result.chosen, choices={})), ("adapted", result.chosen)):
    print(result.export_library(f"{out}/vgg2t_{which}.so", config))
