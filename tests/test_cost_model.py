"""The program-level latency model on few measurements, where every search starts."""
from __future__ import annotations

import numpy as np

from gos_tvm.search.cost_model import LatencyModel, Sample
from gos_tvm.search.features import FEATURE_NAMES


def test_a_kernel_with_more_work_than_any_measured_ranks_slowest():
    """Trees alone predict an unseen kernel no slower than the slowest they were trained on, and
    with six samples they split on whatever feature separates them: the log-FLOPs line keeps
    a kernel with 16x the work of any measured one ranked slowest."""
    rng = np.random.default_rng(0)
    flops_col = FEATURE_NAMES.index("log_flops")
    model = LatencyModel("local")
    for i, log_flops in enumerate([14.0, 14.5, 15.0, 15.5, 16.0, 19.0]):
        features = rng.uniform(0, 10, len(FEATURE_NAMES))
        features[flops_col] = log_flops
        latency = 1e-9 * np.exp(log_flops) * rng.uniform(0.8, 1.25)  # ~1 GFLOP/s, with noise
        model.samples[f"k{i}"] = Sample(f"k{i}", "local", features.tolist(), float(latency))
    queries = rng.uniform(0, 10, (3, len(FEATURE_NAMES)))
    queries[:, flops_col] = [14.2, 21.8, 15.7]
    predicted = model.predict_features(queries)
    assert int(np.argmax(predicted)) == 1
    assert predicted[1] > 2 * max(s.latency_s for s in model.samples.values())
    assert predicted[0] < predicted[2]
