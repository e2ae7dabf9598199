"""Run C's exported libraries (vgg-style, Fashion-MNIST; exported by export_two_thread_run.py into /work/fm16/libs) at 1 and 2 threads under TVM's thread-pool settings (TVM_THREAD_POOL_SPIN_COUNT, TVM_BIND_THREADS), all interleaved, each in a fresh process: does the adapted model's 2-thread penalty come from the pool's wake-ups?  (No: see pool_settings.json, 1 Dec 2026, 20:13 UTC.)"""
import json, os, sys, tempfile
from pathlib import Path
import numpy as np

from gos_tvm.hw.deploy_threads import time_in_fresh_process
libs = {"orig": "/work/fm16/libs/vgg2t_original.so", "adapt": "/work/fm16/libs/vgg2t_adapted.so"}
settings = {"1thr": {"TVM_NUM_THREADS": "1"},
            "2thr": {"TVM_NUM_THREADS": "2"},
            "2thr_spin0": {"TVM_NUM_THREADS": "2", "TVM_THREAD_POOL_SPIN_COUNT": "0"},
            "2thr_spin30M": {"TVM_NUM_THREADS": "2", "TVM_THREAD_POOL_SPIN_COUNT": "30000000"},
            "2thr_nobind": {"TVM_NUM_THREADS": "2", "TVM_BIND_THREADS": "0"}}
x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype("float32")
base = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
res = {f"{l}/{s}": [] for l in libs for s in settings}
with tempfile.TemporaryDirectory() as tmp:
    ex = Path(tmp) / "x.npy"; np.save(ex, x)
    for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for l, path in libs.items():
            for s, env in settings.items():
                res[f"{l}/{s}"].append(time_in_fresh_process(Path(path), ex, 300, int(env["TVM_NUM_THREADS"]), {**base, **env}))
for k, v in res.items():
    print(f"{k:<22} best {min(v)*1e6:7.1f} us  rounds {[round(t*1e6,1) for t in v]}")
json.dump(res, open(str(Path(__file__).with_name("pool_settings.json")), "w"), indent=1)
