"""Simulated wrist PPG + 3-axis acceleration windows with known heart rate, and heartpy's recordings.

Windows are 8 s at 32 Hz (256 samples) with four channels: PPG and acceleration x, y, z,
the input format of the TCNs used on PPG-DaLiA (TEMPONet, TimePPG).  The clean pulse
wave comes from `neurokit2.ppg_simulate`; motion artefacts are made from the simulated
acceleration (periodic arm motion at a cadence, with harmonics), band-pass filtered and
projected into the PPG channel with subject-specific weights plus a quadratic term, through a
short subject-specific causal filter (tissue and sensor-coupling dynamics), so the artefact
is correlated with the accelerometer (as on a real wristband) and the network can use the
acceleration to tell the pulse from the motion.  A smaller narrow-band part of the artefact
(10-40 % of its amplitude) has no trace in the accelerometer (finger and tendon movement).
The artefact is 1-3x the pulse amplitude per unit of motion: during activity it often
dominates the pulse, as on a wrist, so the spectral peak of the PPG alone is often wrong.

Subjects differ in physiology (heart-rate variability, pulse-shape modulation, baseline
drift) and noise (sensor noise, artefact gain and projection, cadence range).  The split
is subject-wise: the subjects of the test set are never seen in training.

This is simulated data, not PPG-DaLiA: errors measured on it are not comparable with
published PPG-DaLiA results.

neurokit2 and heartpy are optional dependencies (``pip install neurokit2 heartpy``);
they are imported only when data are generated or the heartpy check runs.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

FS = 32                  # Hz
WINDOW_S = 8             # seconds
WINDOW = FS * WINDOW_S   # samples
HR_MIN, HR_MAX = 50.0, 180.0
CHANNELS = ("ppg", "acc_x", "acc_y", "acc_z")
DATA_VERSION = 4         # bump when the simulation or `window_input` changes (part of the cache key)
ACC_FLOOR = 0.05         # g: floor of the per-window acceleration scale (rest windows are not blown up to unit noise)


@dataclass(frozen=True)
class DataConfig:
    """Size and seed of a simulated data set.  ``small()`` is the reduced size used by tests."""

    n_subjects: int = 20
    windows_per_subject: int = 300
    n_val_subjects: int = 3
    n_test_subjects: int = 3
    seed: int = 0

    @classmethod
    def small(cls, seed: int = 0) -> "DataConfig":
        return cls(n_subjects=12, windows_per_subject=150, n_val_subjects=2, n_test_subjects=2, seed=seed)

    def key(self) -> str:
        # DATA_VERSION changes whenever the simulation or the input format changes (stale caches)
        return hashlib.sha1(json.dumps(asdict(self) | {"version": DATA_VERSION}, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Split:
    """Windows ``x`` (N, 4, 256) float32, heart rate ``y`` (N,) float32 in BPM, ``subject`` (N,)."""

    x: np.ndarray
    y: np.ndarray
    subject: np.ndarray


@dataclass
class PPGData:
    train: Split
    val: Split
    test: Split
    config: DataConfig


def _subject_params(rng: np.random.Generator) -> dict:
    """Physiology and noise of one simulated subject."""
    return {
        "ibi_randomness": rng.uniform(0.02, 0.12),
        "pulse_cutoff_hz": rng.uniform(3.0, 8.0),         # pulse-shape smoothing (vessel/tissue low-pass)
        "drift": rng.uniform(0.0, 0.5),
        "noise": rng.uniform(0.02, 0.08),                 # sensor noise (x pulse amplitude)
        "artefact_gain": rng.uniform(1.0, 3.0),           # how strongly motion reaches the PPG
        "projection": rng.normal(0.0, 1.0, 3),            # which acceleration axes leak into the PPG
        "quadratic": rng.uniform(0.0, 0.5),               # non-linear part of the artefact
        "cadence_hz": np.sort(rng.uniform(0.8, 2.8, 2)),  # this subject's range of arm-motion cadences
        "p_active": rng.uniform(0.6, 0.95),               # share of windows with arm motion
        # tissue / sensor-coupling dynamics: the PPG sees the motion through a short causal filter
        "response": np.r_[1.0, rng.uniform(-0.6, 0.8, 3)] * np.exp(-np.arange(4) / rng.uniform(0.7, 2.5)),
        "unobserved": rng.uniform(0.1, 0.4),              # motion the wrist accelerometer does not see
    }


def _bandpass(x: np.ndarray, lo: float, hi: float, fs: float = FS) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(2, [lo, hi], btype="band", fs=fs, output="sos")
    return sosfiltfilt(sos, x, axis=-1)


def simulate_window(hr: float, params: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One 8 s window at heart rate `hr` (BPM): clean PPG, acceleration (3, 256), artefact and observed PPG."""
    import neurokit2 as nk
    from scipy.signal import butter, sosfiltfilt

    # neurokit2 simulates from t=0; simulating 2 s more and cropping avoids the onset transient.
    # Its `frequency_modulation` lowers the mean rate of an 8 s window by up to ~8 BPM (measured
    # against the spectral peak), so it is off: the label would not be the window's heart rate.
    # Beat-to-beat variability comes from `ibi_randomness` (unbiased).
    extra = 2 * FS
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = nk.ppg_simulate(duration=WINDOW_S + 2, sampling_rate=FS, heart_rate=float(hr),
                                frequency_modulation=0.0, ibi_randomness=params["ibi_randomness"],
                                drift=params["drift"], motion_amplitude=0.0, powerline_amplitude=0.0,
                                burst_number=0, random_state=int(rng.integers(2**31 - 1)))
    clean = sosfiltfilt(butter(2, params["pulse_cutoff_hz"], fs=FS, output="sos"), clean)[extra:extra + WINDOW]
    clean = (clean - clean.mean()) / (clean.std() + 1e-8)
    t = np.arange(WINDOW) / FS
    acc = rng.normal(0.0, 0.01, (3, WINDOW))               # accelerometer noise (g)
    acc += rng.normal(0.0, 1.0, (3, 1)) * np.array([[0.3], [0.3], [1.0]])  # gravity direction
    if rng.random() < params["p_active"]:
        f0 = rng.uniform(*params["cadence_hz"]) * rng.uniform(0.95, 1.05)
        amp = rng.uniform(0.1, 1.0)
        for k, rel in enumerate((1.0, rng.uniform(0.2, 0.6), rng.uniform(0.0, 0.3)), start=1):
            phase = rng.uniform(0, 2 * np.pi, (3, 1))
            axes = rng.normal(0.0, 1.0, (3, 1))
            acc += amp * rel * axes * np.sin(2 * np.pi * k * f0 * t + phase)
    motion = _bandpass(acc, 0.4, 5.0)                      # the dynamic part of the acceleration
    lin = np.tensordot(params["projection"], motion, axes=1)
    resp = np.asarray(params.get("response", [1.0]), dtype="float64")
    lin = np.convolve(lin, resp / np.abs(resp).sum(), mode="full")[:WINDOW]
    artefact = params["artefact_gain"] * (lin + params["quadratic"] * (lin ** 2 - (lin ** 2).mean()))
    if params.get("unobserved", 0.0) > 0 and lin.std() > 0:
        # finger / tendon movement: narrow-band motion in the PPG with no trace in the accelerometer
        hidden = _bandpass(rng.normal(0.0, 1.0, WINDOW + 64), 0.6, 3.0)[32:32 + WINDOW]
        artefact = artefact + params["unobserved"] * artefact.std() / (hidden.std() + 1e-8) * hidden
    ppg = clean + artefact + rng.normal(0.0, params["noise"], WINDOW)
    return {"clean": clean.astype("float32"), "acc": acc.astype("float32"),
            "artefact": artefact.astype("float32"), "ppg": ppg.astype("float32")}


def window_input(ppg: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """The network input (4, 256) of one window, standardised per channel.

    PPG: z-scored (its amplitude depends on the sensor and skin).  Acceleration: each axis
    minus its mean (gravity) divided by its standard deviation, floored at ``ACC_FLOOR`` g
    so that the sensor noise of a window at rest stays small instead of being scaled to unit
    variance.
    """
    ppg = np.asarray(ppg, dtype="float64")
    ppg = (ppg - ppg.mean()) / (ppg.std() + 1e-8)
    acc = np.asarray(acc, dtype="float64")
    acc = acc - acc.mean(-1, keepdims=True)
    acc = acc / np.maximum(acc.std(-1, keepdims=True), ACC_FLOOR)
    return np.concatenate([ppg[None], acc]).astype("float32")


def simulate_subject(subject: int, n_windows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """All windows of one subject: x (n, 4, 256), y (n,), clean PPG (n, 256)."""
    rng = np.random.default_rng([seed, subject])
    params = _subject_params(rng)
    hrs = rng.uniform(HR_MIN, HR_MAX, n_windows)
    xs, cleans = [], []
    for hr in hrs:
        w = simulate_window(hr, params, rng)
        xs.append(window_input(w["ppg"], w["acc"]))
        cleans.append(w["clean"])
    return {"x": np.stack(xs), "y": hrs.astype("float32"), "clean": np.stack(cleans)}


def _simulate_subject_args(args: tuple[int, int, int]) -> dict[str, np.ndarray]:
    return simulate_subject(*args)


def generate(config: DataConfig = DataConfig(), cache_dir: str | Path | None = None,
             workers: int = 1) -> PPGData:
    """The subject-wise split of a simulated data set; cached as ``ppg_<key>.npz`` under `cache_dir`.

    The last ``n_test_subjects`` subjects are the test set, the ``n_val_subjects`` before
    them the validation set, the rest the training set.  `workers` > 1 simulates subjects in
    that many processes (the result does not depend on it: each subject has its own seed).
    """
    if config.n_val_subjects + config.n_test_subjects >= config.n_subjects:
        raise ValueError("need at least one training subject")
    path = Path(cache_dir) / f"ppg_{config.key()}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        z = np.load(path)
        x, y, subject = z["x"], z["y"], z["subject"]
    else:
        jobs = [(s, config.windows_per_subject, config.seed) for s in range(config.n_subjects)]
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                parts = pool.map(_simulate_subject_args, jobs)
        else:
            parts = [simulate_subject(*j) for j in jobs]
        x = np.concatenate([p["x"] for p in parts])
        y = np.concatenate([p["y"] for p in parts])
        subject = np.repeat(np.arange(config.n_subjects), config.windows_per_subject)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, x=x, y=y, subject=subject)
            tmp.replace(path)
    n_test, n_val = config.n_test_subjects, config.n_val_subjects
    test_ids = np.arange(config.n_subjects - n_test, config.n_subjects)
    val_ids = np.arange(config.n_subjects - n_test - n_val, config.n_subjects - n_test)

    def take(mask: np.ndarray) -> Split:
        return Split(x[mask], y[mask], subject[mask])

    in_test, in_val = np.isin(subject, test_ids), np.isin(subject, val_ids)
    return PPGData(take(~in_test & ~in_val), take(in_val), take(in_test), config)


def spectral_hr_acc(x: np.ndarray, lags: int = 4, **kw) -> np.ndarray:
    """A classic motion-compensated baseline: the spectral peak of the PPG after removing what the
    acceleration explains.

    For each window (4, 256) of `x` (N, 4, 256), the PPG is regressed by least squares on the
    band-passed acceleration axes delayed by 0..`lags`-1 samples (a short adaptive filter), their
    squares and pairwise products (the artefact model is linear plus quadratic), and
    `spectral_hr` runs on the residual.
    """
    x = np.asarray(x, dtype="float64")
    out = np.empty(len(x))
    for i, w in enumerate(x):
        m0 = _bandpass(w[1:], 0.4, 5.0)
        m = np.concatenate([np.pad(m0, ((0, 0), (k, 0)))[:, :WINDOW] for k in range(lags)])
        feats = [m, m0 ** 2, m0[[0, 0, 1]] * m0[[1, 2, 2]]]
        a = np.concatenate(feats).T
        a = np.concatenate([a - a.mean(0), np.ones((a.shape[0], 1))], axis=1)
        coef, *_ = np.linalg.lstsq(a, w[0], rcond=None)
        out[i] = spectral_hr(w[0] - a @ coef, **kw)[0]
    return out


def spectral_hr(signal: np.ndarray, fs: float = FS, lo_bpm: float = 40.0, hi_bpm: float = 200.0,
                nfft: int = 4096) -> np.ndarray:
    """Heart rate (BPM) at the largest spectral peak within [lo_bpm, hi_bpm] of each row of `signal`."""
    s = np.atleast_2d(np.asarray(signal, dtype="float64"))
    s = (s - s.mean(-1, keepdims=True)) * np.hanning(s.shape[-1])
    spec = np.abs(np.fft.rfft(s, n=nfft, axis=-1))
    bpm = np.fft.rfftfreq(nfft, 1.0 / fs) * 60.0
    band = (bpm >= lo_bpm) & (bpm <= hi_bpm)
    return bpm[band][spec[:, band].argmax(-1)]


# ---------------------------------------------------------------------------------- heartpy check

def heartpy_recording(example: int) -> tuple[np.ndarray, float]:
    """(signal, sampling rate) of `heartpy.load_exampledata(example)` (0, 1 or 2)."""
    import heartpy as hp

    data, timer = hp.load_exampledata(example)
    if example == 0:
        fs = 100.0
    elif example == 1:
        fs = hp.get_samplerate_mstimer(timer)
    else:
        fs = hp.get_samplerate_datetime(timer, timeformat="%Y-%m-%d %H:%M:%S.%f")
    return np.asarray(data, dtype="float64"), float(fs)


def resample(signal: np.ndarray, fs: float, fs_out: float = FS) -> np.ndarray:
    """`signal` at `fs` resampled to `fs_out` (anti-aliased polyphase resampling)."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    frac = Fraction(fs_out / fs).limit_denominator(1000)
    return resample_poly(np.asarray(signal, dtype="float64"), frac.numerator, frac.denominator)


def heartpy_compare(signal: np.ndarray, fs: float, predict: Callable[[np.ndarray], np.ndarray],
                    stride_s: float = 2.0) -> dict:
    """Compare the model's heart rate with heartpy's peak-based estimate on a PPG recording.

    The recording is cut into 8 s windows (every `stride_s`); on each, heartpy runs on the
    band-passed signal at its own sampling rate and the model on the signal resampled to
    32 Hz with zero acceleration (heartpy's recordings have no accelerometer).  Windows
    where heartpy fails or rejects the signal are skipped.  Returns the per-window
    estimates and the mean absolute difference (BPM).
    """
    import heartpy as hp

    signal = np.asarray(signal, dtype="float64")
    filtered = hp.filter_signal(signal, cutoff=[0.7, 3.5], sample_rate=fs, order=3, filtertype="bandpass")
    x32 = resample(signal, fs)
    n_win = int((len(signal) / fs - WINDOW_S) // stride_s) + 1
    if n_win < 1:
        raise ValueError(f"recording of {len(signal) / fs:.1f} s is shorter than one {WINDOW_S} s window")
    starts, ref, inputs = [], [], []
    for i in range(n_win):
        t0 = i * stride_s
        a, b = int(round(t0 * fs)), int(round((t0 + WINDOW_S) * fs))
        seg32 = x32[int(round(t0 * FS)):int(round(t0 * FS)) + WINDOW]
        if len(seg32) < WINDOW or b > len(signal):
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, m = hp.process(filtered[a:b], sample_rate=fs)
            bpm = float(m["bpm"])
        except Exception:  # heartpy raises on windows it cannot analyse
            continue
        if not np.isfinite(bpm) or not (30.0 <= bpm <= 220.0):
            continue
        starts.append(t0)
        ref.append(bpm)
        inputs.append(window_input(seg32, np.zeros((3, WINDOW))))
    if not inputs:
        return {"windows": 0, "start_s": [], "heartpy_bpm": [], "model_bpm": [], "mae_bpm": float("nan")}
    model = np.ravel(predict(np.stack(inputs)))
    ref_a = np.asarray(ref)
    return {"windows": len(ref), "start_s": starts, "heartpy_bpm": ref_a.tolist(), "model_bpm": model.tolist(),
            "spectral_bpm": spectral_hr(np.stack([w[0] for w in inputs])).tolist(),
            "mae_bpm": float(np.abs(model - ref_a).mean())}
