"""XGBoost latency model over program features, trained online from device measurements.

MetaSchedule's own XGBoost model ranks *schedules* of one kernel; this one ranks
*programs* (candidate operators) before any of them is tuned, so that only the most
promising candidates spend device time.  It predicts log latency as a line in log FLOPs plus
boosted trees on the residual: a search starts with a handful of measurements, too few for trees
alone to order kernels they have not seen (leave-one-out Spearman over the 8 kernels of the test
suite's digits search: 0.12 trees alone, 0.69 line + trees), while the line keeps a kernel with
more work than any measured one ranked slowest.  Samples persist as JSON, so a later run (or
another model on the same device) warm-starts from them.
"""
from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..instructions.program import OpProgram
from .features import FEATURE_NAMES, program_features

_LOG_FLOPS = FEATURE_NAMES.index("log_flops")

#: Below this many measurements the model cannot rank; it falls back to FLOPs.
MIN_SAMPLES = 4


@dataclass
class Sample:
    key: str          # structural hash of the program
    target: str       # the device (preset name / target string): latencies are per device
    features: list[float]
    latency_s: float


class ProgramLatencyModel(ABC):
    """What the search needs from a program-level latency model, after MetaSchedule's `CostModel`
    (load / save / update / predict): it ranks a site's candidate programs before any is tuned,
    and learns from each tuned kernel's measured latency.  `LatencyModel` is the default."""

    @abstractmethod
    def load(self, path: str | os.PathLike) -> int:
        """Add samples saved earlier (a warm start); returns how many were added."""

    @abstractmethod
    def save(self) -> None:
        """Persist the samples (where the model was told to keep them)."""

    @abstractmethod
    def update(self, programs: Sequence[OpProgram], latencies_s: Sequence[float]) -> None:
        """Learn from measured (program, tuned kernel latency in seconds) pairs."""

    @abstractmethod
    def predict(self, programs: Sequence[OpProgram]) -> np.ndarray:
        """Predicted tuned latency of each program, in seconds."""

    def rank(self, programs: Sequence[OpProgram]) -> tuple[list[int], str]:
        """Indices of `programs`, most promising (fastest predicted) first, and how they were ranked."""
        order = np.argsort(self.predict(programs), kind="stable")
        return [int(i) for i in order], type(self).__name__


class LatencyModel(ProgramLatencyModel):
    """Online XGBoost regressor of tuned kernel latency on one device."""

    def __init__(self, target: str, path: str | os.PathLike | None = None, seed: int = 0):
        self.target = target
        self.path = Path(path) if path else None
        self.seed = seed
        self.samples: dict[str, Sample] = {}
        # (line, trees) once fitted: log latency = (slope, intercept) . (log FLOPs, 1) + trees(features)
        self._fitted: tuple[np.ndarray, object] | None = None
        if self.path and self.path.exists():
            self.load(self.path)

    # --- data -----------------------------------------------------------------------

    def load(self, path: str | os.PathLike) -> int:
        """Add samples for this device from a JSON file written by `save`; returns how many."""
        try:
            rows = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cost-model data {path} is unreadable ({err}); delete it or pass another "
                             "warm-start file") from None
        added = 0
        for row in rows:
            if row.get("target") == self.target and row.get("key") not in self.samples:
                if len(row["features"]) != len(FEATURE_NAMES):
                    continue  # written by another feature version: not comparable
                self.samples[row["key"]] = Sample(**row)
                added += 1
        self._fitted = None
        return added

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([vars(s) for s in self.samples.values()]))
        os.replace(tmp, self.path)  # never leave a half-written file behind

    def add(self, program: OpProgram, latency_s: float) -> None:
        if not (latency_s > 0 and math.isfinite(latency_s)):
            raise ValueError(f"latency must be a positive finite number of seconds, got {latency_s}")
        key = program.structural_hash
        self.samples[key] = Sample(key, self.target, program_features(program).tolist(), float(latency_s))
        self._fitted = None
        self.save()

    def update(self, programs: Sequence[OpProgram], latencies_s: Sequence[float]) -> None:
        for program, latency in zip(programs, latencies_s):
            self.add(program, latency)

    # --- model ----------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        return len(self.samples) >= MIN_SAMPLES

    @staticmethod
    def _flops_design(x: np.ndarray) -> np.ndarray:
        return np.c_[x[:, _LOG_FLOPS], np.ones(len(x))]

    def _fit(self) -> tuple[np.ndarray, object]:
        import xgboost as xgb

        x = np.array([s.features for s in self.samples.values()])
        y = np.log(np.array([s.latency_s for s in self.samples.values()]))
        line = np.linalg.lstsq(self._flops_design(x), y, rcond=None)[0]  # min-norm if all FLOPs are equal
        trees = xgb.XGBRegressor(n_estimators=200, max_depth=4, learning_rate=0.1, subsample=1.0,
                                 min_child_weight=1, random_state=self.seed, n_jobs=1)
        trees.fit(x, y, base_margin=self._flops_design(x) @ line)
        self._fitted = (line, trees)
        return self._fitted

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Predicted latency in seconds of programs given by their feature rows (`program_features`)."""
        if not self.trained:
            raise RuntimeError(f"the latency model has {len(self.samples)} measurements, needs {MIN_SAMPLES}")
        line, trees = self._fitted or self._fit()
        x = np.asarray(features, dtype=float)
        return np.exp(trees.predict(x, base_margin=self._flops_design(x) @ line))

    def predict(self, programs: Sequence[OpProgram]) -> np.ndarray:
        """Predicted latency in seconds; measured programs return their measurement."""
        if not programs:
            return np.zeros(0)
        pred = self.predict_features(np.array([program_features(p) for p in programs]))
        for i, p in enumerate(programs):
            if p.structural_hash in self.samples:
                pred[i] = self.samples[p.structural_hash].latency_s
        return pred

    def rank(self, programs: Sequence[OpProgram]) -> tuple[list[int], str]:
        """Indices of `programs`, most promising (fastest) first, and how they were ranked."""
        if self.trained:
            order = np.argsort(self.predict(programs), kind="stable")
            return [int(i) for i in order], f"xgboost ({len(self.samples)} measurements)"
        order = np.argsort([p.flops for p in programs], kind="stable")
        return [int(i) for i in order], f"flops (cost model has {len(self.samples)} < {MIN_SAMPLES} measurements)"


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
