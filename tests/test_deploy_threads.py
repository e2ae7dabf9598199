"""Choosing the TVM_NUM_THREADS to ship a library with (`gos_tvm.hw.deploy_threads`): each count in
a fresh process, the library's real outputs, and clear errors for what cannot be timed here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gos_tvm.graph import compile_module, export_library, from_torch
from gos_tvm.hw.deploy_threads import json_ready, time_libraries_at_threads


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 8 * 8, 10)).eval()
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype("float32")
    mod, params = from_torch(model, torch.from_numpy(x))
    return export_library(compile_module(mod, params), tmp_path_factory.mktemp("lib") / "model.so"), x


def test_each_library_and_thread_count_is_timed_in_its_own_process_and_the_fastest_named(library):
    path, x = library
    # Two libraries at two counts: tests/test_search.py (the original's and the adapted model's).
    out = time_libraries_at_threads({"a": path}, x, threads=(2, 1), rounds=1, calls=20)
    assert set(out["libraries"]) == {"a"} and (out["threads"], out["rounds"], out["calls"]) == ([1, 2], 1, 20)
    for row in out["libraries"].values():
        assert row["path"] == str(path) and set(row["seconds"]) == {1, 2}
        assert all(0 < s < 0.1 for s in row["seconds"].values())
        assert row["best"] == min(row["seconds"], key=row["seconds"].get)
    assert json_ready(out)["libraries"]["a"]["seconds"] == {str(t): s for t, s in out["libraries"]["a"]["seconds"].items()}


def test_what_cannot_be_timed_is_named(library, tmp_path):
    path, x = library
    with pytest.raises(FileNotFoundError, match="no library at"):
        time_libraries_at_threads({"a": tmp_path / "missing.so"}, x)
    with pytest.raises(ValueError, match="thread counts >= 1"):
        time_libraries_at_threads({"a": path}, x, threads=(0, 1))
    with pytest.raises(ValueError, match="no libraries to time"):
        time_libraries_at_threads({}, x)
    with pytest.raises(RuntimeError, match="did not run with TVM_NUM_THREADS=1"):
        time_libraries_at_threads({"a": path}, np.zeros((1, 3, 8, 8), "float32"), threads=(1,), rounds=1, calls=1)
