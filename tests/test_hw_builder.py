"""WarmBuilder: real worker processes that survive batches, recycle, and report failures per candidate."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tvm
from tvm import te, tirx
from tvm.s_tir.meta_schedule.builder import BuilderInput

from gos_tvm.hw import WarmBuilder, preset
from gos_tvm.instructions import library, to_te


@pytest.fixture(scope="module")
def target():
    return preset("local").target


def _inputs(target, n=1):
    f = to_te(library.conv2d((1, 4, 8, 8), 8, 3, padding=1))
    return [BuilderInput(tvm.IRModule({"main": f}), target) for _ in range(n)]


def _bad_build_input(target):
    a = te.placeholder((64,), name="a")
    # A warp shuffle has no CPU lowering: LLVM code generation fails.
    b = te.compute((64,), lambda i: tirx.call_intrin("float32", "tirx.tvm_warp_shuffle", tirx.const(0, "uint32"),
                                                     a[i], 0, 32, 32), name="b")
    return BuilderInput(tvm.IRModule({"main": te.create_prim_func([a, b])}), target)


def test_workers_stay_warm_across_batches_and_recycle(target):
    builder = WarmBuilder("local", max_workers=1, maximum_process_uses=3, max_worker_rss_mb=None, warm=False)
    try:
        first = builder.build(_inputs(target, 2))
        assert all(r.error_msg is None for r in first), [r.error_msg for r in first]
        pids1 = builder.worker_pids()
        second = builder.build(_inputs(target, 1))          # third use: same process
        assert second[0].error_msg is None
        assert builder.worker_pids() == pids1 and len(pids1) == 1
        third = builder.build(_inputs(target, 1))           # fourth use: recycled first
        assert third[0].error_msg is None
        assert builder.worker_pids() and builder.worker_pids() != pids1
        # the artifacts are loadable shared libraries that compute the convolution
        lib = tvm.runtime.load_module(third[0].artifact_path)
        x, w, b = (np.random.rand(*s).astype("float32") for s in [(1, 4, 8, 8), (8, 4, 3, 3), (8,)])
        out = tvm.runtime.tensor(np.zeros((1, 8, 8, 8), "float32"))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), tvm.runtime.tensor(b), out)
        import torch

        ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1)
        np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
        for r in first + second + third:
            assert r.artifact_path.endswith(".so") and os.path.exists(r.artifact_path)
        # memory recycling: a worker above the limit is stopped after the batch, restarted on demand
        builder.max_worker_rss_mb = 1.0
        assert builder.build(_inputs(target, 1))[0].error_msg is None
        assert builder.recycled_for_memory == 1 and builder.worker_pids() == []
        builder.max_worker_rss_mb = None
        assert builder.build(_inputs(target, 1))[0].error_msg is None and len(builder.worker_pids()) == 1
    finally:
        builder.close()


def test_a_failing_build_is_reported_and_the_rest_of_the_batch_builds(target):
    builder = WarmBuilder("local", max_workers=1)
    try:
        builder.warm_up(wait=True)                      # started before the first batch...
        warm_pids = builder.worker_pids()
        good, = _inputs(target, 1)
        results = builder.build([_bad_build_input(target), good])
        assert results[0].artifact_path is None and "build failed" in results[0].error_msg
        assert results[1].error_msg is None and os.path.exists(results[1].artifact_path)
        assert builder.worker_pids() == warm_pids        # ...and it is that worker that built them
    finally:
        builder.close()


def test_default_search_evolves_only_when_the_cost_model_can_predict():
    """MetaSchedule's XGBoost model scores candidates at random below its warm-up size, so the
    default search only runs genetic iterations in a session where the model gets trained."""
    from gos_tvm.hw.tuning import _strategy_for, default_cost_model

    model = default_cost_model(1)
    assert model.num_warmup_samples == 100 and model.data_size == 0
    assert _strategy_for(None, model, 64).genetic_num_iters == 0
    assert _strategy_for(None, model, 160).genetic_num_iters == 3
    model.data_size = 90                                 # samples carried over from an earlier session
    assert _strategy_for(None, model, 16).genetic_num_iters == 3
    assert _strategy_for("evolutionary", model, 16) == "evolutionary"   # an explicit choice is kept
    assert _strategy_for(None, "xgb", 16).genetic_num_iters == 3       # a named model: stock behaviour
