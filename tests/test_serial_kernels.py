"""The serial-or-parallel design space (gos_tvm.hw.metaschedule.serial_kernels): MetaSchedule's own
CPU space united with a twin whose kernels have no parallel loop, so the tuner measures both."""
from __future__ import annotations

import numpy as np

import tvm
from tvm import te, topi
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.schedule_rule import AddRFactor, ParallelizeVectorizeUnroll

from gos_tvm.hw.metaschedule.serial_kernels import (record_is_serial, serial_or_parallel_space,
                                                     serial_schedule_rules, target_schedule_rules)
from gos_tvm.hw.presets import resolve_target


def _conv() -> tvm.IRModule:
    x = te.placeholder((1, 8, 10, 10), name="x")
    w = te.placeholder((8, 8, 3, 3), name="w")
    return tvm.IRModule({"main": te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 1, 1)])})


def test_serial_rules_switch_off_only_parallelism():
    rules = target_schedule_rules(resolve_target("local"))
    serial = serial_schedule_rules(rules)
    (stock_pvu,) = [r for r in rules if isinstance(r, ParallelizeVectorizeUnroll)]
    (serial_pvu,) = [r for r in serial if isinstance(r, ParallelizeVectorizeUnroll)]
    assert int(stock_pvu.max_jobs_per_core) > 0 and int(serial_pvu.max_jobs_per_core) == -1
    assert int(serial_pvu.max_vectorize_extent) == int(stock_pvu.max_vectorize_extent)
    assert list(serial_pvu.unroll_max_steps) == list(stock_pvu.unroll_max_steps)
    assert any(isinstance(r, AddRFactor) for r in rules) and not any(isinstance(r, AddRFactor) for r in serial)
    # Everything else is the very same rule object, in the same order.
    others = lambda rs: [r for r in rs if not isinstance(r, (ParallelizeVectorizeUnroll, AddRFactor))]  # noqa: E731
    assert all(a.same_as(b) for a, b in zip(others(rules), others(serial), strict=True))


def test_space_holds_serial_and_parallel_schedules_that_compute_the_same():
    target = resolve_target("local")
    mod = _conv()
    space = serial_or_parallel_space(target)
    context = ms.TuneContext(mod=mod, target=target, space_generator=space, task_name="conv")
    schedules = space.generate_design_space(mod)
    x = np.random.default_rng(0).standard_normal((1, 8, 10, 10)).astype("float32")
    w = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype("float32")
    expected = None
    kinds = []
    for sch in schedules:
        for postproc in context.space_generator.postprocs:  # as the search does to every candidate
            assert postproc.apply(sch)
        record = ms.database.TuningRecord(sch.trace, ms.database.Workload(mod))
        kinds.append(record_is_serial(record))
        out = tvm.runtime.tensor(np.zeros((1, 8, 10, 10), "float32"))
        tvm.compile(sch.mod, target=target)(tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
        expected = out.numpy() if expected is None else expected
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)
    # The union lists the stock space's schedules, then its serial twin's: every one of the twin's
    # is serial; the stock space parallelizes (though not always: a schedule whose outer loops cannot
    # be fused into a parallel loop stays serial there too).
    stock, twin = kinds[:len(kinds) // 2], kinds[len(kinds) // 2:]
    assert len(stock) == len(twin) > 0 and all(twin) and not all(stock)


def test_search_tunes_in_both_halves_with_row_split_on_the_parallel_one(tmp_path):
    """`serial_kernels=True` (with `row_split=True`) through the `TunedMeasurer` every search tunes
    through: the database holds schedules of the serial twin (no parallel-annotation in their trace,
    no parallel loop) and of the stock half (each passing RowSplit), and the compiled model computes
    what PyTorch does."""
    import torch

    from gos_tvm import graph
    from gos_tvm.hw import LocalDevicePool, compile_tuned, resolve_preset
    from gos_tvm.hw.metaschedule.row_split import ROW_AXIS, record_splits_rows
    from gos_tvm.search.measurer import TunedMeasurer
    from gos_tvm.search.results import SearchOptions

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    mod, params = graph.from_torch(net, x)
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
        twin = [r for r in records if "meta_schedule.parallel" not in str(r.trace)]
        stock = [r for r in records if "meta_schedule.parallel" in str(r.trace)]
        assert twin and stock, (len(twin), len(stock))
        assert all(record_is_serial(r) for r in twin)
        assert all(record_splits_rows(r, ROW_AXIS["NHWC"], threads) for r in stock)
        executable = compile_tuned(mod, params, "local", measurer.database())
    (got,) = graph.run(executable, x.numpy())
    want = net(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(row["outputs_head"], want.ravel()[:16], rtol=1e-4, atol=1e-4)
