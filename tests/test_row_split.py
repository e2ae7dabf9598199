"""`RowSplit`: the MetaSchedule postprocessor that keeps only schedules whose parallel loop hands
each thread a band of output rows (gos_tvm.hw.metaschedule.row_split).

The check is run on hand-made schedules whose split is known, then inside a real tuning session
(WarmBuilder, an RPC server, a JSON database) on a small NHWC model: every schedule measured passes
it, and the compiled model computes what PyTorch does."""
from __future__ import annotations

import numpy as np
import pytest

import tvm
from tvm import te

from gos_tvm import graph
from gos_tvm.hw import LocalDevicePool, TrackerRunner, WarmBuilder, open_database
from gos_tvm.hw.metaschedule.row_split import ROW_AXIS, RowSplit, record_splits_rows, splits_rows


def _scheduled(layout: str, order: str, fused: int) -> tvm.s_tir.Schedule:
    """An elementwise kernel on a (1, 8, 8, 16) NHWC or (1, 16, 8, 8) NCHW tensor, its loops reordered
    to `order` (letters of the layout) and the outermost `fused` of them fused into one parallel loop."""
    shape = {"NHWC": (1, 8, 8, 16), "NCHW": (1, 16, 8, 8)}[layout]
    a = te.placeholder(shape, name="A")
    b = te.compute(shape, lambda *i: a(*i) * 2.0, name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    block = sch.get_sblock("B")
    loops = dict(zip(layout, sch.get_loops(block)))
    sch.reorder(*[loops[axis] for axis in order])
    if fused:
        sch.parallel(sch.fuse(*sch.get_loops(block)[:fused]))
    return sch


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_splits_rows_reads_which_axis_the_threads_split(layout):
    rows = ROW_AXIS[layout]
    n, h, w, c = "N", "H", "W", "C"
    rest = lambda *first: "".join(first) + "".join(a for a in layout if a not in first)  # noqa: E731
    # Rows outermost (alone or fused with what follows): thread k gets the k-th band of rows.
    assert splits_rows(_scheduled(layout, rest(n, h), 2), rows, 2)
    assert splits_rows(_scheduled(layout, rest(n, h, w), 3), rows, 2)
    assert splits_rows(_scheduled(layout, rest(n, h), 2), rows, 4)
    # Columns or channels outermost: each thread gets a band of columns / channels over all rows.
    assert not splits_rows(_scheduled(layout, rest(n, w, h), 3), rows, 2)
    assert not splits_rows(_scheduled(layout, rest(n, c, h), 3), rows, 2)
    # Nothing to split: no parallel loop, or one of a single iteration (the batch).
    assert splits_rows(_scheduled(layout, layout, 0), rows, 2)
    assert splits_rows(_scheduled(layout, layout, 1), rows, 2)


def test_row_split_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match="unknown layout 'NCW'"):
        RowSplit("NCW")


def test_tuning_with_row_split_measures_only_row_split_schedules(tmp_path, two_convs):
    """A small NHWC model tuned without `RowSplit` (stock MetaSchedule), then by a run with
    `row_split=True` (the `TunedMeasurer` every search tunes through) warm-started from the stock
    database: without it some schedules split columns or channels; the RowSplit run's database holds
    only schedules that split rows between the two threads (the warm start let in only those, its
    own tuning measured only those) and its compiled model computes what PyTorch does."""
    from tvm.s_tir import meta_schedule as ms

    from gos_tvm.hw import compile_tuned, resolve_preset
    from gos_tvm.hw.tuning import copy_records, prepare_relax, tune_module_per_task
    from gos_tvm.search.measurer import TunedMeasurer
    from gos_tvm.search.results import SearchOptions

    net, x, mod, params = two_convs
    device = resolve_preset("local")
    threads = int(device.target.attrs["num-cores"])
    assert threads >= 2, "the check needs a target of two or more cores"
    stock = open_database(tmp_path / "stock")
    with graph.conv_layout("NHWC"), LocalDevicePool("gos-rowsplit", n_servers=1) as pool:
        builder, runner = WarmBuilder("local"), TrackerRunner(pool.tracker, pool.key)
        try:
            tune_module_per_task(mod, params, "local", 4, database=stock, work_dir=str(tmp_path / "logs"),
                                 builder=builder, runner=runner, seed=0, trials_per_iter=4)
        finally:
            runner.close()
            builder.close()
        measurer = TunedMeasurer(device, pool.tracker, pool.key, tmp_path / "rowsplit",
                                 SearchOptions(row_split=True, trials_per_task=8, seed=0, repeat=3, max_rounds=1),
                                 warm_start_database=tmp_path / "stock")
        try:
            row = measurer.model("original", mod, params, x.numpy(), trials_per_task=8)
        finally:
            measurer.close()
        tasks = ms.relax_integration.extract_tasks(prepare_relax(mod, params, device.target), device.target)
        assert len([t for t in tasks if "conv2d" in t.task_name]) == 2
        split = {name: [record_splits_rows(r, ROW_AXIS["NHWC"], threads) for r in db.get_all_tuning_records()]
                 for name, db in (("stock", stock), ("rowsplit", measurer.database()))}
        assert not all(split["stock"]), "without RowSplit some schedules split columns or channels"
        assert len(split["rowsplit"]) > sum(split["stock"]) and all(split["rowsplit"]), split
        warm = open_database(tmp_path / "warm")
        assert copy_records(stock, warm, keep=RowSplit("NHWC", threads).accepts) == sum(split["stock"])
        assert all(record_splits_rows(r, ROW_AXIS["NHWC"], threads) for r in warm.get_all_tuning_records())
        executable = compile_tuned(mod, params, "local", measurer.database())
    (got,) = graph.run(executable, x.numpy())
    want = net(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(row["outputs_head"], want.ravel()[:16], rtol=1e-4, atol=1e-4)
