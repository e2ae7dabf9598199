"""The PPG heart-rate use case: simulated data, the TCN, the heartpy check; `slow`: the tutorial end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("neurokit2")
pytest.importorskip("heartpy")

from gos_tvm.ppg import data as D  # noqa: E402

TINY = D.DataConfig(n_subjects=4, windows_per_subject=8, n_val_subjects=1, n_test_subjects=1, seed=3)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return D.generate(TINY, tmp_path_factory.mktemp("ppg"))


def test_shapes_and_labels(tiny):
    for split in (tiny.train, tiny.val, tiny.test):
        assert split.x.shape == (len(split.y), 4, D.WINDOW) and D.WINDOW == 256
        assert split.x.dtype == np.float32 and np.isfinite(split.x).all()
        assert (split.y >= D.HR_MIN).all() and (split.y <= D.HR_MAX).all()
        # PPG channel is z-scored per window
        assert np.allclose(split.x[:, 0].mean(-1), 0, atol=1e-4) and np.allclose(split.x[:, 0].std(-1), 1, atol=1e-3)
    assert len(tiny.train.y) + len(tiny.val.y) + len(tiny.test.y) == TINY.n_subjects * TINY.windows_per_subject


def test_subject_wise_split(tiny):
    tr, va, te = (set(s.subject.tolist()) for s in (tiny.train, tiny.val, tiny.test))
    assert tr and va and te
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(range(TINY.n_subjects))
    assert te == {TINY.n_subjects - 1} and va == {TINY.n_subjects - 2}


def test_deterministic_and_cached(tiny, tmp_path):
    again = D.generate(TINY, tmp_path)                  # fresh generation, same seed
    assert np.array_equal(again.train.x, tiny.train.x) and np.array_equal(again.test.y, tiny.test.y)
    assert (tmp_path / f"ppg_{TINY.key()}.npz").exists()
    cached = D.generate(TINY, tmp_path)                 # from the .npz
    assert np.array_equal(cached.val.x, again.val.x)
    other = D.generate(D.DataConfig(**{**TINY.__dict__, "seed": 4}), tmp_path)
    assert not np.array_equal(other.train.y, tiny.train.y)


def test_simulated_pulse_is_at_the_label():
    sub = D.simulate_subject(0, 12, seed=1)
    est = D.spectral_hr(sub["clean"])
    assert np.abs(est - sub["y"]).max() < 2.0, (est, sub["y"])


def test_artefact_follows_the_accelerometer():
    rng = np.random.default_rng(0)
    params = D._subject_params(rng)
    params["p_active"] = 1.0
    w = D.simulate_window(100.0, params, rng)
    assert w["acc"].shape == (3, D.WINDOW)
    motion = D._bandpass(w["acc"], 0.4, 5.0)
    # the artefact is (mostly) a linear projection of the filtered acceleration
    coef, *_ = np.linalg.lstsq(motion.T, w["artefact"], rcond=None)
    resid = w["artefact"] - motion.T @ coef
    assert resid.std() < 0.7 * w["artefact"].std()
    assert w["artefact"].std() > 0.05


def test_model_forward_and_short_training(tiny):
    import torch

    from gos_tvm.ppg.model import TCN, mae, predict_torch, train

    model = TCN()
    out = model(torch.randn(3, 4, D.WINDOW))
    assert out.shape == (3, 1)
    log = train(model, tiny.train.x, tiny.train.y, tiny.val.x, tiny.val.y, epochs=8, batch=8, seed=0)
    assert log.train_mae[-1] < log.train_mae[0]
    assert mae(predict_torch(model, tiny.val.x), tiny.val.y) == pytest.approx(min(log.val_mae), rel=1e-5)


def test_heartpy_compare_on_a_real_recording():
    signal, fs = D.heartpy_recording(0)
    assert fs == 100.0
    short = signal[:int(16 * fs)]
    const = lambda x: np.full(len(x), 60.0)  # noqa: E731
    r = D.heartpy_compare(short, fs, const)
    assert r["windows"] >= 3
    ref = np.asarray(r["heartpy_bpm"])
    assert 45 < ref.mean() < 80                   # heartpy's example 0 is a resting recording near 60 BPM
    assert r["mae_bpm"] == pytest.approx(np.abs(ref - 60.0).mean())
    # the model sees 8 s windows at 32 Hz with zero acceleration
    seen = []
    D.heartpy_compare(short, fs, lambda x: seen.append(x) or np.zeros(len(x)))
    assert seen[0].shape == (r["windows"], 4, D.WINDOW) and not seen[0][:, 1:].any()
    with pytest.raises(ValueError):
        D.heartpy_compare(signal[:int(5 * fs)], fs, const)


def test_heartpy_compare_on_a_simulated_recording():
    import neurokit2 as nk

    sig = nk.ppg_simulate(duration=20, sampling_rate=100, heart_rate=75, ibi_randomness=0.0, drift=0.0,
                          motion_amplitude=0.0, powerline_amplitude=0.0, frequency_modulation=0.0, random_state=0)
    r = D.heartpy_compare(sig, 100.0, lambda x: D.spectral_hr(x[:, 0]))
    assert r["windows"] >= 4
    assert np.abs(np.asarray(r["heartpy_bpm"]) - 75).max() < 3
    assert r["mae_bpm"] < 3


@pytest.mark.slow
def test_tutorial_small_end_to_end(tmp_path):
    work = tmp_path / "ppg"
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / "ppg_heart_rate.py"), "--small",
                           "--work-dir", str(work)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((work / "ppg_results.json").read_text())
    orig_val, adapted_val = res["val_mae"]
    assert adapted_val <= orig_val + res["budget"] + 1e-6
    assert Path(res["rasp3b_so"]).stat().st_size > 0 and res["rasp3b_elf_machine"] == 40
    assert Path(res["local_so"]).exists()
    assert res["latency_local_s"][0] > 0 and res["latency_local_s"][1] > 0
    assert all(np.isfinite(res["test_mae"]))
    assert "NOT run or timed" in proc.stdout
