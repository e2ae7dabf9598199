"""Export run C's (two threads, benchmarks/results/fashion_mnist_recover/rounds2) tuned original and
adapted vgg-style as libraries, by resuming its work directory /work/fm15 (so it runs only on the
machine that has it).  Run with TVM_NUM_THREADS=2: the run was tuned for two cores.

    TVM_NUM_THREADS=2 python benchmarks/results/fashion_mnist_threads/export_two_thread_run.py OUT_DIR
"""
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fashion_mnist_recover" / "rounds2"))
from run_c import resume_run_c  # noqa: E402

assert os.environ.get("TVM_NUM_THREADS") == "2", "run C was tuned for two threads: TVM_NUM_THREADS=2"
out = sys.argv[1]
result, _ = resume_run_c()
for which, config in (("original", dataclasses.replace(result.chosen, choices={})), ("adapted", result.chosen)):
    print(result.export_library(f"{out}/vgg2t_{which}.so", config))
