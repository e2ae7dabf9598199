"""The real PPG-DaLiA excerpt (subject S6, stairs) from the kid-ppg wheel: loading, shapes, ranges, the
clean time split, the baselines on it, and the error when it is absent."""
from __future__ import annotations

import numpy as np
import pytest

from gos_tvm.ppg import dalia
from gos_tvm.ppg import data as D

try:
    dalia.excerpt_path()
    MISSING = None
except dalia.ExcerptNotFound as err:
    MISSING = str(err)
needs_excerpt = pytest.mark.skipif(MISSING is not None, reason=f"PPG-DaLiA excerpt absent: {MISSING}")


@pytest.fixture(scope="module")
def excerpt():
    return dalia.load_excerpt()


@needs_excerpt
def test_excerpt_shapes_and_ranges(excerpt):
    assert len(excerpt) == 215 and excerpt.x.shape == (215, 4, D.WINDOW) and excerpt.raw.shape == (215, 4, 256)
    assert excerpt.x.dtype == np.float32 and np.isfinite(excerpt.x).all()
    assert excerpt.subject == "S6" and excerpt.activity == "stairs"
    # ECG heart rate of S6 on the stairs: 117.7-169.8 BPM, inside the TCN's output range
    assert 117 < excerpt.y.min() < 118.5 and 169 < excerpt.y.max() < 170.5
    assert D.HR_MIN <= excerpt.y.min() and excerpt.y.max() <= D.HR_MAX
    # acceleration in g: the gravity vector has length ~1 on average, the motion of climbing is a fraction of g
    gravity = np.linalg.norm(excerpt.raw[:, 1:].mean(-1), axis=-1)
    assert 0.8 < np.median(gravity) < 1.2
    assert 0.05 < excerpt.raw[:, 1:].std(-1).mean() < 1.0
    # the network input is standardised as the simulated windows are
    assert np.allclose(excerpt.x[:, 0].mean(-1), 0, atol=1e-4) and np.allclose(excerpt.x[:, 0].std(-1), 1, atol=1e-3)
    assert np.array_equal(excerpt.x[7], D.window_input(excerpt.raw[7, 0], excerpt.raw[7, 1:]))
    # windows of 8 s every 2 s: the last 6 s of one window are the first 6 s of the next
    assert np.array_equal(excerpt.raw[:-1, :, 64:], excerpt.raw[1:, :, :192])
    assert excerpt.start_s[-1] == 214 * 2.0


@needs_excerpt
def test_time_split_shares_no_sample(excerpt):
    early, late = dalia.time_split(len(excerpt), 0.5)
    assert len(early) == 108 and late[0] == 111 and late[-1] == 214
    assert not dalia.samples_of(early) & dalia.samples_of(late)
    # one window less of gap and they would overlap
    assert dalia.samples_of(early) & dalia.samples_of(late - 1)
    with pytest.raises(ValueError):
        dalia.time_split(10, 0.95)
    sub = excerpt.take(late)
    assert len(sub) == len(late) and np.array_equal(sub.y, excerpt.y[late])


@needs_excerpt
def test_spectral_baselines_on_the_real_recording(excerpt):
    """On real stairs climbing the PPG's spectral peak is mostly the step cadence, and regressing the
    acceleration out repairs much of it (the numbers the PPG table reports beside the TCN)."""
    err_ppg = np.abs(D.spectral_hr(excerpt.x[:, 0]) - excerpt.y)
    err_acc = np.abs(D.spectral_hr_acc(excerpt.x) - excerpt.y)
    assert err_ppg.mean() > 30
    assert err_acc.mean() < 0.5 * err_ppg.mean()


def test_absent_excerpt_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(dalia.ENV, str(tmp_path / "nope.pkl"))
    with pytest.raises(dalia.ExcerptNotFound, match="pip install --no-deps --ignore-requires-python kid-ppg==0.0.4"):
        dalia.load_excerpt()
    with pytest.raises(dalia.ExcerptNotFound, match="kid-ppg==0.0.4"):
        dalia.load_excerpt(tmp_path / "also-not-there.pkl")


def test_malformed_excerpt(tmp_path):
    import pickle

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"X": np.zeros((3, 4, 100)), "y": np.zeros((3, 1))}))
    with pytest.raises(ValueError, match=r"expected \(N, 4, 256\)"):
        dalia.load_excerpt(bad)


@needs_excerpt
def test_fine_tune_on_early_windows_keeps_the_best_validation_weights(excerpt):
    import torch

    from gos_tvm.ppg.model import TCN, fine_tune, mae, predict_torch

    torch.manual_seed(0)
    model = TCN()
    fit, val = dalia.time_split(40, 0.75)
    rng = np.random.default_rng(0)
    x_sim = rng.normal(size=(16, 4, D.WINDOW)).astype("float32")      # stands in for simulated windows
    log = fine_tune(model, excerpt.x[fit], excerpt.y[fit], excerpt.x[val], excerpt.y[val], x_sim=x_sim,
                    y_sim=np.full(16, 100.0, "float32"), repeat=2, epochs=3, lr=3e-3)
    assert len(log.val_mae) == 3
    assert mae(predict_torch(model, excerpt.x[val]), excerpt.y[val]) == pytest.approx(min(log.val_mae), rel=1e-5)
    # an untrained TCN predicts about the middle of its range (115 BPM); a few epochs move it towards the labels
    assert min(log.val_mae) < mae(np.full(len(val), 115.0), excerpt.y[val])
