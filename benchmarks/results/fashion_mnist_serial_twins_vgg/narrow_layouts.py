"""The replacements' narrow convolutions (features.2's rank-4 channel bottleneck: 3x3 4->4 and 1x1
16->4 at 32x32) tuned alone in NHWC and in NCHW, 64 then 192 trials (one MemoryDatabase per layout,
MetaSchedule's LocalRunner, this host).  Run with TVM_NUM_THREADS=2:

    TVM_NUM_THREADS=2 python narrow_layouts.py
"""
import time

from tvm import te, topi
from tvm.s_tir import meta_schedule as ms

from gos_tvm.hw.metaschedule._fastimport import import_tensor_intrin
from gos_tvm.hw.tuning.session import tune_primfunc

import_tensor_intrin()


def conv(layout: str, ci: int, co: int, k: int, hw: int):
    """A stride-1, same-padded k x k convolution ci -> co on an hw x hw image, as a PrimFunc."""
    if layout == "NCHW":
        x, w = te.placeholder((1, ci, hw, hw), name="x"), te.placeholder((co, ci, k, k), name="w")
        y = topi.nn.conv2d_nchw(x, w, 1, k // 2, 1)
    else:
        x, w = te.placeholder((1, hw, hw, ci), name="x"), te.placeholder((k, k, ci, co), name="w")
        y = topi.nn.conv2d_nhwc(x, w, 1, k // 2, 1)
    return te.create_prim_func([x, w, y])


for ci, co, k in ((4, 4, 3), (16, 4, 1)):
    for layout in ("NHWC", "NCHW"):
        mem, t0, out = ms.database.MemoryDatabase(), time.time(), []
        for budget in (64, 192):  # the second session continues from the first one's records
            best, _ = tune_primfunc(conv(layout, ci, co, k, 32), "local", trials=budget, runner="local",
                                    database=mem, seed=0)
            out.append("%d: %.2f us" % (budget, best * 1e6))
        print(f"{ci}->{co} k{k} 32x32 {layout}: " + ", ".join(out), f"({time.time() - t0:.0f} s)", flush=True)
