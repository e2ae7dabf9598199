"""A feature extractor for MetaSchedule's XGBoost cost model that survives candidates it cannot read.

`PerStoreFeature` fails on some schedules of the fused kernels of an adapted model ("mismatched
types. int32 vs. int64": Relax legalization gives int64 shapes, gos_tvm's TE lowering int32 ones,
and a sampled schedule can combine both in one index expression; a recorded one is in
tests/data/feature_mismatch_schedule.json).  The cost model extracts features of a whole batch
at once, so one such candidate raised out of `TaskScheduler.join_running_task` and ended the
tuning session, although the candidate itself built, ran and was recorded.  Here a batch that
fails is extracted candidate by candidate, and a candidate whose features cannot be computed
gets one row of zeros, so the search goes on and only that candidate is unknown to the cost
model.  Not an empty matrix: `XGBModel`'s prediction sums rows per candidate with
`np.bincount(ids)`, and one empty candidate in a batch made `ids` float and ended a tuning session
with "Cannot cast array data from dtype('float64') to dtype('int64')" once the booster was
trained (resnet18-style's adapted model on Fashion-MNIST).
"""
from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.feature_extractor import PerStoreFeature, PyFeatureExtractor

_log = logging.getLogger(__name__)


@derived_object
class TolerantPerStoreFeature(PyFeatureExtractor):
    """`PerStoreFeature`, with one row of zeros for a candidate it fails on."""

    def __init__(self, **per_store_feature_args) -> None:
        super().__init__()
        self.inner = PerStoreFeature(**per_store_feature_args)
        self.failed = 0  # candidates without features, over the extractor's life

    def extract_from(self, context, candidates):
        try:
            return list(self.inner.extract_from(context, candidates))
        except Exception:  # noqa: BLE001 - TVM raises RuntimeError/TVMError subclasses from C++
            pass
        out = []
        for cand in candidates:
            try:
                out.extend(self.inner.extract_from(context, [cand]))
            except Exception as err:  # noqa: BLE001 - see above
                self.failed += 1
                _log.warning("cost-model features of one candidate of %s could not be computed (%s); it is "
                             "measured but not learned from", context.task_name, str(err).splitlines()[0][:160])
                out.append(tvm.runtime.tensor(np.zeros((1, self.inner.feature_vector_length), "float32")))
        return out


__all__ = ["TolerantPerStoreFeature"]
