"""What a search is given (`SearchOptions`) and what it hands back (`Decision`, `Candidate`,
`SearchOutcome`): plain dataclasses, so the layers above (`tune`, `TuneResult`, the report) never
reach into the search object."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..instructions import OpProgram
from .pareto import Configuration

Predict = Callable[[np.ndarray], np.ndarray]
EvalFn = Callable[[Predict], float]


@dataclass
class SearchOptions:
    """Budgets of one search (see `gos_tvm.tune`)."""

    # Whole-model tuning: every task of the original and of the adapted model is tuned up to
    # `trials_per_task` measured candidates in the work directory's one database (a task the
    # database already holds that many records of is not tuned again).  `trials` is the former
    # whole-model total, kept for compatibility: given without `trials_per_task` it means
    # ceil(trials / tasks of the original model) per task.  Neither: DEFAULT_TRIALS_PER_TASK.
    trials_per_task: int | None = None
    trials: int | None = None
    time_budget: float | None = None  # wall-clock seconds bound on each whole-model tuning session
    # Tune only schedules whose parallel loop hands each thread a band of output rows
    # (`gos_tvm.hw.metaschedule.row_split.RowSplit`), so that consecutive kernels split their work
    # alike and each thread reads mostly what its own core wrote.  A warm-start database then seeds
    # the run with only the records that pass the same check.
    row_split: bool = False
    # When the best schedules of newly tuned tasks are re-timed, time each one's serial twin too
    # (the same schedule without its parallel loop; `gos_tvm.hw.metaschedule.serial_kernels`), so
    # that a short kernel may run on one thread inside a model that runs its long kernels on all.
    serial_kernels: bool = False
    # Trials for each new task a candidate brings into the model (its fused kernel) while candidates
    # are screened.  None: the model's per-task budget, so a candidate is tuned as much as the
    # original task it would replace (see `GOSearch.candidate_trials`).
    kernel_trials: int | None = None
    max_sites: int | None = None     # replace at most this many sites (None: all)
    tries_per_site: int = 6          # candidates fitted and accuracy-checked per site (bisection steps)
    # Before bisecting, up to `screen_per_site` candidates spread evenly over the latency ranking get
    # a short layer-wise fit (`screen_fit_steps` Adam steps), and the bisection runs over the Pareto
    # front of (latency rank, screening error) instead of the whole ranking (0: the ranking alone).
    screen_per_site: int = 32
    screen_fit_steps: int = 20
    measure_per_site: int = 2        # accurate candidates tuned and measured per site
    max_flops_ratio: float = 0.6     # candidates keep at most this share of the site's FLOPs
    depth: int = 2                   # rewrite chains up to this length (2: compositions)
    fit_steps: int = 150
    calib_samples: int = 256
    generations: int = 2
    # Search rounds: the chosen configuration's final distillation recovers accuracy, and a further
    # round runs the strategies again from it, on the sites still kept, within the same budget.
    rounds: int = 1
    # After each site the greedy search replaces, the accepted configuration is distilled for
    # `recover_steps` steps on the final distillation's inputs, and the next site is judged from it
    # when it scores no worse: otherwise every site is judged in a model that carries all earlier
    # sites' accuracy loss, and the first sites spend the whole budget (0: off).
    recover_steps: int = 0
    population: int = 4
    repeat: int = 10                 # end-to-end timings per round
    max_spread: float = 0.05         # rounds repeat until (p75 - p25) / median of all timings is below this
    max_rounds: int = 4              # ... or this many rounds were timed (then the report says: not stable)
    seed: int = 0
    # End-to-end distillation (`gos_tvm.fit.distill`) against the original model on the calibration
    # inputs: a candidate whose layer-wise fit misses the budget is judged after a short
    # distillation of its configuration, and the chosen configuration gets a longer one.
    distill: bool = True
    distill_steps: int = 60          # per judged configuration (0: layer-wise fitting only)
    final_distill_steps: int = 300   # for the chosen configuration
    # Distillation trains on the first `distill_samples` of the calibration inputs (layer-wise fitting
    # on the first `calib_samples`): its targets are the original's outputs, so every input the user
    # has helps, and 256 inputs (205 after the held-out part) over-fit within a few dozen steps.
    distill_samples: int = 4096
    # The chosen configuration's longer distillation trains on the first `final_distill_samples`
    # (None: all of them): a few thousand inputs over-fit within a few hundred steps where the
    # whole training set keeps improving (vgg-style on Fashion-MNIST, six sites, 1,500 steps:
    # 0.9168 validation accuracy on 16,384 inputs, 0.9056 on 4,096 at 1,000 steps).
    final_distill_samples: int | None = None
    distill_batch: int = 64
    distill_lr: float = 1e-2
    distill_temperature: float = 4.0
    distill_task: str = "auto"       # 'classification' (KL), 'regression' (MSE), 'auto': by output width

    def __post_init__(self) -> None:
        for name in ("trials_per_task", "trials", "kernel_trials"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget!r}")
        if self.max_rounds < 1 or self.repeat < 1:
            raise ValueError("repeat and max_rounds must be >= 1")

    def model_trials_per_task(self, n_tasks: int) -> int:
        """The per-task budget of whole-model tuning, for an original model of `n_tasks` tasks."""
        if self.trials_per_task is not None:
            return int(self.trials_per_task)
        if self.trials is not None:
            return max(1, math.ceil(self.trials / max(n_tasks, 1)))
        return DEFAULT_TRIALS_PER_TASK


#: Per-task budget of whole-model tuning when none is given.  From the convergence curve
#: (benchmarks/results/tuning_convergence.json, 2 cores): at 16 trials per task the tuned
#: originals ran 1.2-1.5x behind onnxruntime; at 64 they were at 0.73-1.02x of it.  Both models
#: of a speed-up get this budget, so the ratio compares converged kernels, not tuning luck.
DEFAULT_TRIALS_PER_TASK = 64


@dataclass
class Decision:
    """What the search did at one site."""

    site: str
    kind: str
    flops: int
    latency_s: float | None          # the site in the tuned original: its tasks' best records (task_delta)
    share: float | None              # its share of the original model's measured latency
    choice: str | None = None        # candidate key, or None: kept
    rule: str = "original"
    reason: str = ""
    tried: list[dict] = field(default_factory=list)

    @classmethod
    def from_state(cls, row: Mapping[str, Any]) -> "Decision":
        """A decision from its row in the search state (which may carry extra keys, e.g. 'ranking')."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class Candidate:
    """A replacement program fitted for one site: what building a configuration that uses it needs."""

    key: str                         # "<site>:<structural hash>", the key in `Configuration.choices`
    site: str
    rule: str
    program: OpProgram
    weights_path: Path               # the fitted weights (.npz in the work directory)

    def weights(self) -> dict[str, np.ndarray]:
        with np.load(self.weights_path) as data:
            return {k: data[k] for k in data.files}


@dataclass
class SearchOutcome:
    """What `GOSearch.run` returns.

    `baseline` / `adapted` are the measurement-log rows of the two end-to-end measurements
    (`median_s`, `mean_s`, `std_s`, `min_s`, `max_s`, `raw_s`, `kernel_sum_s`, `tasks`, ...: the
    JSON of `gos_tvm.hw.LatencyStats` plus what the search adds), as written to the work
    directory's measurement log; `adapted` is `baseline` when the original is returned.
    """

    baseline: dict
    adapted: dict
    original_score: float
    adapted_score: float
    configurations: list[Configuration]
    front: list[Configuration]
    chosen: Configuration
    site_latency: dict[str, float]
    decisions: list[Decision]
    candidates: dict[str, Candidate]  # every candidate some configuration uses, by key
    fallback: dict | None             # set when the chosen configuration measured slower end to end
    seconds: float
    device_measurements: int          # in the work directory's log, all runs
    new_measurements: list[str]       # keys measured by this process (a resumed run re-measures none)
    distillation: dict = field(default_factory=dict)  # how candidates were distilled (see GOSearch)


__all__ = ["SearchOptions", "DEFAULT_TRIALS_PER_TASK", "Decision", "Candidate", "SearchOutcome", "Predict", "EvalFn"]
