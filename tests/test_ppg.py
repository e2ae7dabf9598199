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
    # the artefact is mostly a short linear filter of the filtered acceleration (lags 0-3) ...
    lagged = np.concatenate([np.pad(motion, ((0, 0), (k, 0)))[:, :D.WINDOW] for k in range(4)])
    coef, *_ = np.linalg.lstsq(lagged.T, w["artefact"], rcond=None)
    resid = w["artefact"] - lagged.T @ coef
    assert resid.std() < 0.7 * w["artefact"].std()
    assert w["artefact"].std() > 0.05
    # ... and a window at rest has (almost) none: the artefact comes from the motion
    params["p_active"] = 0.0
    rest = D.simulate_window(100.0, params, rng)
    assert rest["artefact"].std() < 0.05 * w["artefact"].std()
    # the unobserved part (finger / tendon motion) is what the accelerometer cannot explain:
    # without it, and without the quadratic term, the lagged linear fit is (nearly) exact
    params.update(p_active=1.0, unobserved=0.0, quadratic=0.0)
    w0 = D.simulate_window(100.0, params, np.random.default_rng(0))
    m0 = D._bandpass(w0["acc"], 0.4, 5.0)
    l0 = np.concatenate([np.pad(m0, ((0, 0), (k, 0)))[:, :D.WINDOW] for k in range(4)])
    c0, *_ = np.linalg.lstsq(l0.T, w0["artefact"], rcond=None)
    assert (w0["artefact"] - l0.T @ c0).std() < 0.02 * w0["artefact"].std() < resid.std()


def test_simulated_data_is_sensible():
    """Heart rates span 50-180 BPM; motion artefacts make the PPG's spectral peak wrong in a fair
    share of windows, and regressing the acceleration out of the PPG repairs most of them."""
    subs = [D.simulate_subject(s, 20, seed=0) for s in range(4)]
    x, y = np.concatenate([s["x"] for s in subs]), np.concatenate([s["y"] for s in subs])
    assert y.min() < 70 and y.max() > 160
    err_ppg = np.abs(D.spectral_hr(x[:, 0]) - y)
    err_acc = np.abs(D.spectral_hr_acc(x) - y)
    assert (err_ppg > 10).mean() > 0.1
    assert err_acc.mean() < 0.6 * err_ppg.mean()
    # acceleration channels: gravity removed, unit scale (or below the floor at rest)
    assert np.allclose(x[:, 1:].mean(-1), 0, atol=1e-4) and (x[:, 1:].std(-1) <= 1 + 1e-4).all()


def test_model_forward_and_short_training(tiny):
    import torch

    from gos_tvm.ppg.model import TCN, mae, predict_torch, train

    model = TCN()
    out = model(torch.randn(3, 4, D.WINDOW))
    assert out.shape == (3, 1)
    log = train(model, tiny.train.x, tiny.train.y, tiny.val.x, tiny.val.y, epochs=8, batch=8, seed=0)
    assert log.train_mae[-1] < log.train_mae[0]
    assert mae(predict_torch(model, tiny.val.x), tiny.val.y) == pytest.approx(min(log.val_mae), rel=1e-5)


def test_tcn_receptive_field_covers_the_window():
    """The receptive field reported by the TCN is the one of its feature maps (checked with
    gradients), and it spans most of the 8 s window (several beats even at 50 BPM)."""
    import torch

    from gos_tvm.ppg.model import TCN

    torch.manual_seed(0)
    model = TCN()
    for m in model.modules():  # positive weights: no accidental cancellation in the gradient
        if isinstance(m, torch.nn.Conv1d):
            torch.nn.init.uniform_(m.weight, 0.01, 0.1)
            torch.nn.init.constant_(m.bias, 0.1)
    x = torch.zeros(1, 4, 1024, requires_grad=True)  # longer than the field: no clipping at the edges
    feats = model.features(x)
    feats[0, :, feats.shape[-1] // 2].sum().backward()
    seen = (x.grad[0].abs().sum(0) > 0).nonzero().ravel()
    assert int(seen[-1] - seen[0] + 1) == model.receptive_field()
    assert model.receptive_field() >= 0.9 * D.WINDOW


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
    # the use case: even at this reduced size the TCN beats the spectral peak of the PPG on the
    # held-out subjects, and the TVM-compiled original computes what the torch model computes
    assert res["torch_test_mae"] < res["data"]["spectral_peak_test_mae"]
    assert res["test_mae"][0] == pytest.approx(res["torch_test_mae"], abs=0.05)
    # what was replaced is cheaper; the latency breakdown covers every site
    for r in res["replaced"]:
        assert r["flops"][1] < r["flops"][0] and r["params"][1] <= r["params"][0]
    assert res["flops_sites"][1] == res["flops_sites"][0] - sum(r["flops"][0] - r["flops"][1] for r in res["replaced"])
    det = res["latency_detail"]
    assert {k["site"] for k in det["kernels"]} == {d["site"] for d in res["decisions"]}
    assert all(k["original_kernel_s"] > 0 for k in det["kernels"] if k["kind"] == "conv1d")
    assert det["end_to_end_median_s"] == res["latency_local_s"]
    assert set(res["heartpy"]) == {"0", "1", "2"} and any(v["windows"] for v in res["heartpy"].values())
    # onnxruntime and PyTorch on the original, timed beside the tuned TVM models in the same run
    assert {"TVM original (tuned)", "onnxruntime (original)", "PyTorch eager (original)",
            "TVM adapted (tuned)"} <= set(res["alternatives"]["runtimes"])
