"""Run C (this folder's models.json has its command) resumed from its work directory /work/fm15: the
search is finished there, so nothing is searched or tuned again.  Shared by the check scripts beside
it and ../../fashion_mnist_threads/export_two_thread_run.py; they run only on the machine that has
/work/fm15, and record how their numbers were made.  Run C was tuned for two threads: run them with
TVM_NUM_THREADS=2 or unset on a 2-core host (the local device's cores follow it)."""
import torch

import gos_tvm
from gos_tvm import graph, models

WORK = "/work/fm15"


def resume_run_c():
    """(result, split): run C's `TuneResult` and the Fashion-MNIST split it was searched on."""
    model, split = models.trained_model("vgg-style", f"{WORK}/weights", epochs=6, seed=0, dataset="fashion-mnist")
    model.eval()
    mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))
    with graph.conv_layout("NHWC"):
        result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train,
                              val_data=(split.x_val, split.y_val), accuracy_budget=0.01, trials_per_task=64, seed=0,
                              final_distill_steps=1500, recover_steps=300, rounds=2,
                              warm_start_database="/work/fm13/gos_vgg-style-fashion-mnist-nhwc/database",
                              work_dir=f"{WORK}/gos_vgg-style-fashion-mnist-nhwc")
    return result, split
