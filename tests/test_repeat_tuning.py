"""Tuning again in the same process: MetaSchedule's logging set-up must not trip over handlers it
did not create (pytest 9.2 attaches an unnamed capture handler to every non-propagating logger
during each test; a user's logging configuration can attach named ones)."""
from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch

import gos_tvm
from gos_tvm import models
from gos_tvm.hw import LocalDevicePool, TrackerRunner, WarmBuilder, tune_primfunc
from gos_tvm.hw.metaschedule.ms_logging import METASCHEDULE_LOGGER, foreign_handlers
from gos_tvm.instructions import library, to_te


@pytest.fixture
def foreign():
    """An unnamed handler (as pytest 9.2 attaches) and a named one (as a user's dictConfig
    would) on MetaSchedule's logger for the duration of the test."""
    logger = logging.getLogger(METASCHEDULE_LOGGER)
    unnamed = logging.StreamHandler(io.StringIO())
    named = logging.StreamHandler(io.StringIO())
    named.set_name("users-own-handler")
    logger.addHandler(unnamed)
    logger.addHandler(named)
    try:
        yield unnamed, named
    finally:
        logger.removeHandler(unnamed)
        logger.removeHandler(named)


def test_kernel_tuning_twice_with_foreign_handlers_attached(foreign, tmp_path):
    func = to_te(library.conv2d((1, 4, 8, 8), 8, 3, padding=1))
    builder = WarmBuilder("local")
    with LocalDevicePool("gos-repeat", n_servers=1) as pool:
        runner = TrackerRunner(pool.tracker, pool.key)
        try:
            results = [tune_primfunc(func, "local", runner=runner, builder=builder, trials=2, trials_per_iter=2,
                                     work_dir=str(tmp_path / f"run{i}"), cost_model="random", seed=i)
                       for i in range(2)]
        finally:
            runner.close()
            builder.close()
    for res in results:
        assert res.trials == 2 and math.isfinite(res.latency_s), res
    # Both runs wrote MetaSchedule's own logs, and the foreign handlers are back where they were.
    assert all((tmp_path / f"run{i}" / "logs").is_dir() for i in range(2))
    assert set(foreign) <= set(foreign_handlers())


class TinyNet(torch.nn.Module):
    """8x8 digits: small enough that two whole searches stay in the default tier."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


@pytest.mark.slow  # two whole searches (98 s in CI); test_kernel_tuning_twice_... keeps the handler check in the default tier
def test_gos_tune_twice_in_one_process_with_different_work_dirs(foreign, tmp_path):
    split = models.digits(size=8)
    torch.manual_seed(0)
    net = models.train(TinyNet(), split, epochs=4)
    budgets = dict(trials=4, kernel_trials=2, max_sites=1, tries_per_site=2, measure_per_site=1,
                   generations=1, population=2, repeat=3, calib_samples=64)
    results = [gos_tvm.tune(net, "local", calib_data=split.x_train[:64], val_data=(split.x_val, split.y_val),
                            accuracy_budget=0.05, work_dir=tmp_path / f"gos{i}", seed=0, **budgets)
               for i in range(2)]
    for i, res in enumerate(results):
        assert res.work_dir == tmp_path / f"gos{i}" and res.report_path.exists()
        assert math.isfinite(res.original_latency["median_s"]) and math.isfinite(res.adapted_latency["median_s"])
        assert res.device_measurements > 0
        # Issue 14: a per-task budget (the compat total 4 spread over the tasks), a measurement
        # repeated until stable or said not to be, and a per-task table in the report.
        lat = res.original_latency
        assert lat["trials_per_task"] >= 1 and lat["rounds"] >= 1 and isinstance(lat["stable"], bool)
        assert lat["min_s"] <= lat["median_s"] and len(lat["per_task"]) == lat["tasks"]
        assert all(1 <= row["trials"] <= lat["trials_per_task"] for row in lat["per_task"]), lat["per_task"]
        assert any(row["gflops"] for row in lat["per_task"]) and "GFLOP/s" in res.summary()
    # The same model, seed and data: the two independent runs agree on the original's accuracy.
    assert results[0].original_score == results[1].original_score
    assert np.isfinite(results[1].speedup)
    assert set(foreign) <= set(foreign_handlers())
