"""Serial twins (gos_tvm.hw.metaschedule.serial_kernels): a tuned kernel's schedule without its
parallel loop, timed beside it so that the faster of the two is what a model compiles."""
from __future__ import annotations

import numpy as np

import tvm
from tvm import te, topi
from tvm.s_tir import meta_schedule as ms

from gos_tvm.hw.metaschedule.serial_kernels import is_serial_twin, record_is_serial, serial_twin, target_postprocs
from gos_tvm.hw.presets import resolve_target
from gos_tvm.hw.tuning.verify import schedule_is_correct


def _conv() -> tvm.IRModule:
    x = te.placeholder((1, 8, 10, 10), name="x")
    w = te.placeholder((8, 8, 3, 3), name="w")
    return tvm.IRModule({"main": te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 1, 1)])})


def test_serial_twin_drops_only_the_parallel_loop():
    """For each of MetaSchedule's design spaces of a convolution, postprocessed as a search does:
    the twin has no parallel loop, differs from the schedule only by the parallel mark, computes the
    same, and has no twin of its own."""
    target = resolve_target("local")
    mod = _conv()
    postprocs = target_postprocs(target, mod)
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply", task_name="conv")
    parallel = 0
    for sch in context.generate_design_space():
        sch.enter_postproc()
        assert all(p.apply(sch) for p in postprocs)
        record = ms.database.TuningRecord(sch.trace, ms.database.Workload(mod))
        twin = serial_twin(record, postprocs)
        if record_is_serial(record):
            assert twin is None
            continue
        parallel += 1
        assert twin is not None
        twin_record = ms.database.TuningRecord(twin.trace, ms.database.Workload(mod))
        assert record_is_serial(twin_record) and serial_twin(twin_record, postprocs) is None
        assert is_serial_twin(twin_record) and not is_serial_twin(record)
        before = lambda trace: [str(i.kind.name) for i in trace.insts][:[i.kind.name for i in trace.insts]  # noqa: E731
                                                                       .index("EnterPostproc")]
        assert len(before(twin.trace)) == len(before(sch.trace)) - 1
        assert schedule_is_correct(mod, twin.trace)
        x = np.random.default_rng(0).standard_normal((1, 8, 10, 10)).astype("float32")
        w = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype("float32")
        outs = []
        for s in (sch, twin):
            out = tvm.runtime.tensor(np.zeros((1, 8, 10, 10), "float32"))
            tvm.compile(s.mod, target=target)(tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
            outs.append(out.numpy())
        np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert parallel > 0, "MetaSchedule's space parallelizes some schedules of this convolution"


def test_search_keeps_serial_twins_with_row_split_on_the_parallel_schedules(tmp_path, two_convs):
    """`serial_kernels=True` (with `row_split=True`) through the `TunedMeasurer` every search tunes
    through: the database holds serial twins (`is_serial_twin`; their schedule has no parallel
    loop) beside the searched schedules (each passing RowSplit), and the compiled model
    computes what PyTorch does."""
    from gos_tvm import graph
    from gos_tvm.hw import LocalDevicePool, compile_tuned, resolve_preset
    from gos_tvm.hw.metaschedule.row_split import ROW_AXIS, record_splits_rows
    from gos_tvm.search.measurer import TunedMeasurer
    from gos_tvm.search.results import SearchOptions

    net, x, mod, params = two_convs
    device = resolve_preset("local")
    threads = int(device.target.attrs["num-cores"])
    with graph.conv_layout("NHWC"), LocalDevicePool("gos-serial", n_servers=1) as pool:
        measurer = TunedMeasurer(device, pool.tracker, pool.key, tmp_path / "db",
                                 SearchOptions(serial_kernels=True, row_split=True, trials_per_task=8, seed=0,
                                               repeat=3, max_rounds=1))
        try:
            row = measurer.model("original", mod, params, x.numpy(), trials_per_task=8)
        finally:
            measurer.close()
        records = measurer.database().get_all_tuning_records()
        executable = compile_tuned(mod, params, "local", measurer.database())
    # The search's own records carry the parallel mark (the stock space puts it on every kernel:
    # test above), so the unmarked ones are the twins the re-timing added.
    twin = [r for r in records if is_serial_twin(r)]
    searched = [r for r in records if not is_serial_twin(r)]
    assert twin and searched and all(record_is_serial(r) for r in twin)
    assert all(record_splits_rows(r, ROW_AXIS["NHWC"], threads) for r in searched)
    (got,) = graph.run(executable, x.numpy())
    want = net(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(row["outputs_head"], want.ravel()[:16], rtol=1e-4, atol=1e-4)
