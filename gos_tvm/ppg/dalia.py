"""A real PPG-DaLiA recording: subject S6 climbing stairs (215 windows of wrist PPG + acceleration).

The data file is ``kid_ppg/demo/demo_data/PPGDalia_S6_stairs.pkl`` from the pip package
``kid-ppg`` 0.0.4 (install it with ``pip install --no-deps --ignore-requires-python
kid-ppg==0.0.4``: the wheel pins an old Python and TensorFlow that this project does not
need).  Only that pickle is read; none of the package's (GPL-3.0) code is imported or run —
the file is found with `importlib.util.find_spec`, which does not execute the package.

The pickle holds a dict: ``X`` (215, 4, 256) float64 — the Empatica E4 wrist BVP (PPG,
arbitrary units) and the wrist accelerometer x, y, z (g), in 8 s windows at 32 Hz every 2 s
(consecutive windows share 6 s) — ``y`` (215, 1), the heart rate from the chest ECG (BPM,
117.7-169.8 here), ``activity`` (all 2, stairs) and ``groups`` (all 6, the subject).  The
windows cover one continuous stretch of 7 min 16 s.

`load_excerpt` gives the windows in the network's input format (`data.window_input`: the
same standardisation as the simulated windows), the labels and the window start times;
`time_split` cuts them into an earlier part (for adaptation) and a later part (for the test)
with a gap so that no sample is in both.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import FS, WINDOW, window_input

INSTALL = "pip install --no-deps --ignore-requires-python kid-ppg==0.0.4"
ENV = "GOS_TVM_DALIA_EXCERPT"        # optional: path of the pickle, overriding the installed package
RELATIVE_PATH = ("demo", "demo_data", "PPGDalia_S6_stairs.pkl")
STEP_S = 2.0                         # seconds between the starts of consecutive windows
OVERLAP_WINDOWS = 3                  # a window shares samples with the 3 windows after it (8 s / 2 s - 1)


class ExcerptNotFound(FileNotFoundError):
    """The PPG-DaLiA excerpt is not on this machine; the message gives the install command."""


@dataclass
class Excerpt:
    """Windows of one real recording.

    ``x`` (N, 4, 256) float32: the network input (PPG and acceleration standardised per window
    as in `data.window_input`); ``raw`` (N, 4, 256) float64: PPG (a.u.) and acceleration (g) as
    recorded; ``y`` (N,) float32: ECG heart rate (BPM); ``start_s`` (N,): window start (s).
    """

    x: np.ndarray
    raw: np.ndarray
    y: np.ndarray
    start_s: np.ndarray
    subject: str
    activity: str
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> "Excerpt":
        return Excerpt(self.x[index], self.raw[index], self.y[index], self.start_s[index], self.subject,
                       self.activity, self.source)


def excerpt_path(path: str | os.PathLike | None = None) -> Path:
    """Where the pickle is: `path`, ``$GOS_TVM_DALIA_EXCERPT``, or inside the installed kid-ppg package."""
    if path is None and os.environ.get(ENV):
        path = os.environ[ENV]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ExcerptNotFound(f"PPG-DaLiA excerpt {p} does not exist (install it with `{INSTALL}`, or point "
                                  f"{ENV} at PPGDalia_S6_stairs.pkl)")
        return p
    spec = importlib.util.find_spec("kid_ppg")     # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ExcerptNotFound(f"the PPG-DaLiA excerpt comes with the pip package kid-ppg, which is not installed: "
                              f"install it with `{INSTALL}` (only its data file is used)")
    for root in spec.submodule_search_locations:
        p = Path(root).joinpath(*RELATIVE_PATH)
        if p.is_file():
            return p
    raise ExcerptNotFound(f"kid-ppg is installed but has no {'/'.join(RELATIVE_PATH)}: reinstall it with "
                          f"`{INSTALL}` (version 0.0.4 ships the excerpt)")


def load_excerpt(path: str | os.PathLike | None = None) -> Excerpt:
    """The PPG-DaLiA S6 stairs excerpt (see the module docstring); `path` overrides where the pickle is."""
    p = excerpt_path(path)
    with open(p, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # pickled with numpy 1.x (numpy.core paths)
        d = pickle.load(f)
    if not isinstance(d, dict) or not {"X", "y"} <= set(d):
        raise ValueError(f"{p}: expected a dict with 'X' and 'y', got {type(d).__name__} "
                         f"{sorted(d) if isinstance(d, dict) else ''}")
    raw = np.asarray(d["X"], dtype="float64")
    y = np.asarray(d["y"], dtype="float64").reshape(-1)
    if raw.ndim != 3 or raw.shape[1:] != (4, WINDOW) or len(y) != len(raw):
        raise ValueError(f"{p}: X has shape {raw.shape} and y {y.shape}; expected (N, 4, {WINDOW}) and (N,)")
    if not (np.isfinite(raw).all() and np.isfinite(y).all()):
        raise ValueError(f"{p}: non-finite values in X or y")
    x = np.stack([window_input(w[0], w[1:]) for w in raw])
    subjects = sorted({int(g) for g in np.ravel(d.get("groups", [-1]))})
    activities = sorted({int(a) for a in np.ravel(d.get("activity", [-1]))})
    # PPG-DaLiA's activity codes: 1 sitting, 2 stairs, 3 table soccer, 4 cycling, 5 driving, 6 lunch, 7 walking, 8 working
    names = {0: "transient", 1: "sitting", 2: "stairs", 3: "table soccer", 4: "cycling", 5: "driving", 6: "lunch",
             7: "walking", 8: "working"}
    return Excerpt(x=x, raw=raw, y=y.astype("float32"), start_s=np.arange(len(y)) * STEP_S,
                   subject=",".join(f"S{s}" for s in subjects),
                   activity=",".join(names.get(a, str(a)) for a in activities), source=str(p))


def time_split(n: int, first: float, gap: int = OVERLAP_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
    """Indices (earlier, later) of `n` consecutive windows: the first ``round(first * n)`` windows, then,
    after dropping `gap` windows, the rest.  With the default gap the two parts share no sample
    (windows are 8 s long and start every 2 s)."""
    if not 0.0 < first < 1.0:
        raise ValueError(f"first must be a fraction in (0, 1), got {first}")
    cut = int(round(first * n))
    if cut < 1 or cut + gap >= n:
        raise ValueError(f"cannot split {n} windows at {first} with a gap of {gap}")
    return np.arange(cut), np.arange(cut + gap, n)


def samples_of(index: np.ndarray) -> set[int]:
    """The recording's sample numbers (at 32 Hz) covered by the windows `index`."""
    step = int(STEP_S * FS)
    return {int(i) * step + k for i in np.ravel(index) for k in range(WINDOW)}
