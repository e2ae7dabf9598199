"""WarmBuilder: real worker processes that survive batches, recycle, and report failures per candidate."""
from __future__ import annotations

import os
import shutil

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
    random = _strategy_for(None, model, 64, 16)
    assert random.genetic_num_iters == 0
    assert random.population_size == 32 and random.init_min_unmeasured >= 16      # a full batch to pick
    assert _strategy_for(None, model, 64, 32).population_size == 64
    evolving = _strategy_for(None, model, 160, 16)
    assert (evolving.population_size, evolving.genetic_num_iters) == (128, 2)  # sized for 2 cores (bench_search_cost)
    model.data_size = 90                                 # samples carried over from an earlier session
    assert _strategy_for(None, model, 16, 16).genetic_num_iters == 2
    assert _strategy_for("evolutionary", model, 16, 16) == "evolutionary"   # an explicit choice is kept
    assert _strategy_for(None, "xgb", 16, 16).genetic_num_iters == 2       # a named model: assumed to predict


def _tensorized_int8_dense(intrin: str, lanes: int):
    """C[m, n] = sum_k X[m, k] * W[n, k] (8-bit in, int32 out), its inner n x 4 product
    tensorized with `intrin` (W packed as [n / lanes, k / 4, lanes, 4])."""
    from gos_tvm.hw.metaschedule._fastimport import import_tensor_intrin

    import_tensor_intrin()  # scheduling looks the intrinsic up: this (the tuning) process needs it
    m, n, k = 8, 2 * lanes, 64
    x = te.placeholder((m, k), "uint8" if lanes == 16 else "int8", name="X")
    w = te.placeholder((n // lanes, k // 4, lanes, 4), "int8", name="W")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((m, n), lambda i, j: te.sum(
        x[i, r].astype("int32") * w[j // lanes, r // 4, j % lanes, r % 4].astype("int32"), axis=r), name="C")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, w, c]))
    block = sch.get_sblock("C")
    i, j, r = sch.get_loops(block)
    jo, ji = sch.split(j, [None, lanes])
    ro, ri = sch.split(r, [None, 4])
    sch.reorder(i, jo, ro, ji, ri)
    sch.decompose_reduction(block, ro)
    sch.tensorize(ji, intrin)
    return sch.mod, (m, n, k)


def _worker_imported_intrinsics(builder) -> bool:
    import sys

    return builder._get_pool().submit(lambda: "tvm.s_tir.tensor_intrin" in sys.modules).result()


def test_tensorized_schedules_build_in_workers_without_the_intrinsics(tmp_path):
    """The warm workers skip TVM's tensor intrinsics (1.7 s each): a tensorized schedule carries the
    intrinsic's implementation, so building one must not need them registered."""
    from gos_tvm.graph import elf_machine

    device = preset("rasp3b-aarch64")
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not installed (apt-get install g++-aarch64-linux-gnu)")
    mod, _ = _tensorized_int8_dense("dot_4x4_i8i8s32_neon", 4)
    assert "llvm.aarch64.neon" in mod.script()
    builder = WarmBuilder(device, max_workers=1)
    try:
        result, = builder.build([BuilderInput(mod, device.target)])
        assert result.error_msg is None, result.error_msg
        assert elf_machine(result.artifact_path) == 183              # an aarch64 library
        assert not _worker_imported_intrinsics(builder)
    finally:
        builder.close()


@pytest.mark.skipif("avx512bw" not in open("/proc/cpuinfo").read(), reason="the host has no AVX-512 BW")
def test_a_tensorized_schedule_built_by_a_worker_computes_the_product(target):
    mod, (m, n, k) = _tensorized_int8_dense("dot_16x4_avx512", 16)
    builder = WarmBuilder("local", max_workers=1)
    try:
        result, = builder.build([BuilderInput(mod, target)])
        assert result.error_msg is None, result.error_msg
        assert not _worker_imported_intrinsics(builder)
        rng = np.random.default_rng(0)
        # small values: the AVX-512 sequence sums pairs in saturating int16
        x = rng.integers(0, 64, (m, k)).astype("uint8")
        w = rng.integers(-64, 64, (n // 16, k // 4, 16, 4)).astype("int8")
        out = tvm.runtime.tensor(np.zeros((m, n), "int32"))
        tvm.runtime.load_module(result.artifact_path)["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
        dense = w.transpose(0, 2, 1, 3).reshape(n, k).astype(np.int32)
        np.testing.assert_array_equal(out.numpy(), x.astype(np.int32) @ dense.T)
    finally:
        builder.close()


def test_cost_model_survives_a_candidate_whose_features_fail():
    """A recorded schedule of a fused adapted-model kernel on which TVM's PerStoreFeature fails
    ('int32 vs. int64'): it once ended a whole tuning session from inside the cost model's update.
    The default cost model's extractor gives that candidate a row of zeros and keeps the others'
    features, and the trained cost model predicts a batch that holds it."""
    import json
    from pathlib import Path

    import tvm
    from tvm.s_tir import Schedule, Trace
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.runner import RunnerResult
    from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate

    from gos_tvm.hw.tuning import default_cost_model

    data = json.loads((Path(__file__).parent / "data" / "feature_mismatch_schedule.json").read_text())
    mod = tvm.ir.load_json(data["workload"])
    bad = Schedule(mod)
    Trace.apply_json_to_schedule(tvm.ir.load_json(data["trace"]), bad)
    good = Schedule(mod)                       # the unscheduled kernel: its features are readable
    args = ArgInfo.from_prim_func(mod["main"])
    ctx = ms.TuneContext(mod=mod, target=tvm.target.Target(data["target"]), task_name="fused_gos_kernel")
    stock = ms.feature_extractor.PerStoreFeature()
    with pytest.raises(Exception, match="int32 vs. int64"):
        stock.extract_from(ctx, [MeasureCandidate(bad, args)])

    model = default_cost_model(1, num_warmup_samples=2)
    cands = [MeasureCandidate(good, args), MeasureCandidate(bad, args)]
    feats = model.extractor.extract_from(ctx, cands)
    assert feats[0].numpy().shape[0] > 0
    assert feats[1].numpy().shape == (1, stock.feature_vector_length) and not feats[1].numpy().any()
    model.update(ctx, cands, [RunnerResult([1e-4], None), RunnerResult([2e-4], None)])
    assert model.data_size == 2 and model.extractor.failed == 2  # failed in both extractions (above, update)
    # Past the warm-up the booster predicts (stock: random scores before it); one row-less
    # candidate in the batch used to crash it here (np.bincount of float ids).
    model.update(ctx, cands, [RunnerResult([1e-4], None), RunnerResult([2e-4], None)])
    scores = model.predict(ctx, [cands[1], cands[0], cands[1]])
    assert scores.shape == (3,) and np.isfinite(scores).all()
