"""End-to-end distillation (`gos_tvm.fit.distill`): recovery, agreement with the Relax module,
kill and resume, and models without a trainable form."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from gos_tvm import graph, models
from gos_tvm.fit import (DistillUnavailableError, distill, fit, substitute_distilled, trainable_model)
from gos_tvm.graph.reference import capture_torch
from gos_tvm.space import candidates

REPO = Path(__file__).resolve().parents[1]
# The replaced sites and the FLOPs share their candidates keep: aggressive enough that the
# layer-wise fitted configuration loses accuracy that distillation has to win back.
CHOSEN = {"2": 0.15, "5": 0.15, "8": 0.25}


def small_cnn() -> nn.Sequential:
    """A small CNN for 8x8 digits (nn.Sequential, so a subprocess can unpickle it)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine it trains these tiny models ~3x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapted(one_thread):
    """The trained CNN, its Relax import, and a layer-wise fitted configuration of 3 sites."""
    split = models.digits(8, seed=0)
    torch.manual_seed(0)
    model = models.train(small_cnn(), split, epochs=10, lr=1e-2)
    mod, params = graph.from_torch(model, torch.from_numpy(split.x_train[:1]))
    sites = {s.id: s for s in graph.find_sites(mod, params)}
    assert set(CHOSEN) <= set(sites), list(sites)
    calib = split.x_train  # distilled on the training images; judged on the validation images
    acts = capture_torch(model, calib, list(CHOSEN))
    replacements = {}
    for sid, share in CHOSEN.items():
        site = sites[sid]
        cand = next(c for c in candidates(site.program, max_flops_ratio=0.6) if c.flops_ratio >= share)
        res = fit(cand, *acts[sid], original_weights=site.weights, steps=30)
        replacements[sid] = (cand.program, res.weights)
    return model, split, calib, mod, params, replacements


@pytest.fixture(scope="module")
def distilled(adapted):
    model, split, calib, mod, params, replacements = adapted
    return distill(model, replacements, calib, steps=120, lr=1e-2, batch_size=32, progress=False)


def test_distillation_recovers_what_layerwise_fitting_loses(adapted, distilled):
    model, split, calib, mod, params, replacements = adapted
    res = distilled
    acc_orig = accuracy(model, split.x_val, split.y_val)
    acc_layerwise = accuracy(trainable_model(model, replacements), split.x_val, split.y_val)
    acc_distilled = accuracy(trainable_model(model, res.replacements), split.x_val, split.y_val)
    print(f"val accuracy: original {acc_orig:.3f}, layer-wise {acc_layerwise:.3f}, distilled {acc_distilled:.3f}; "
          f"held-out output error {res.error_before:.3f} -> {res.error_after:.3f} in {res.steps} steps")
    assert acc_layerwise < acc_orig - 0.03          # the configuration does lose accuracy layer-wise ...
    assert res.error_after < 0.6 * res.error_before  # ... and distillation wins most of the output error back
    assert acc_distilled >= acc_orig - 0.03           # within a 3-point budget on data it was not distilled on
    assert res.loss_after < res.loss_before
    assert 0 < res.best_step <= res.steps <= 120
    # Only the replacements were trained: every other weight of the model is untouched.
    student = trainable_model(model, res.replacements)
    for name, value in model.state_dict().items():
        if name.split(".")[0] not in CHOSEN:
            assert torch.equal(student.state_dict()[name], value)


def test_trainable_form_matches_relax_module_before_and_after(adapted, distilled):
    model, split, calib, mod, params, replacements = adapted
    x = split.x_val[:6]
    for label, repl in (("layer-wise", replacements), ("distilled", distilled.replacements)):
        if label == "distilled":
            new_mod, new_params = substitute_distilled(mod, params, distilled)
            changed = [sid for sid in repl if any(not np.array_equal(repl[sid][1][w], replacements[sid][1][w])
                                                  for w in repl[sid][1])]
            assert changed == list(CHOSEN)
        else:
            new_mod, new_params = graph.substitute(mod, params, repl)
        vm = graph.load_vm(graph.compile_module(new_mod, new_params))
        relax_out = np.concatenate([graph.run(vm, x[i:i + 1])[0] for i in range(len(x))])
        with torch.no_grad():
            torch_out = trainable_model(model, repl)(torch.from_numpy(x)).numpy()
        assert rel_err(torch_out, relax_out) < 1e-4, label
        assert rel_err(torch_out, model(torch.from_numpy(x)).detach().numpy()) > 1e-3  # replacements act


_CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time
    import torch
    from gos_tvm.fit import distill
    torch.set_num_threads(int(sys.argv[3]))
    from gos_tvm.instructions import OpProgram
    model, programs, calib, kwargs = torch.load(sys.argv[1], weights_only=False)
    replacements = {s: (OpProgram.from_json(p), w) for s, (p, w) in programs.items()}  # programs travel as JSON
    seen = {}
    def on_checkpoint(step):
        seen[step] = time.perf_counter()
        if step == 2 * kwargs["eval_every"]:  # SIGKILL ~2.5 steps after the 2nd checkpoint, mid-run
            per_step = (seen[step] - seen[kwargs["eval_every"]]) / kwargs["eval_every"]
            threading.Timer(2.5 * per_step, os.kill, (os.getpid(), signal.SIGKILL)).start()
    distill(model, replacements, calib, checkpoint_dir=sys.argv[2], on_checkpoint=on_checkpoint, **kwargs)
    print("FINISHED")
""")


def test_killed_distillation_resumes_to_the_same_weights(adapted, tmp_path):
    model, split, calib, mod, params, replacements = adapted
    kwargs = dict(steps=60, lr=1e-2, batch_size=32, eval_every=5, patience=None, seed=3, progress=False)
    calib = calib[:200]
    job = tmp_path / "job.pt"
    torch.save((model, {s: (p.to_json(), w) for s, (p, w) in replacements.items()}, calib, kwargs), job)
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(job), str(ckpt), str(torch.get_num_threads())],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "FINISHED" not in proc.stdout
    (path,) = ckpt.glob("distill-*.pt")
    state = torch.load(path, weights_only=False)
    assert not state["finished"] and 10 <= state["step"] < 60
    print(f"killed with SIGKILL after the checkpoint of step {state['step']} of 60")

    resumed = distill(model, replacements, calib, checkpoint_dir=ckpt, **kwargs)
    assert resumed.resumed_from == state["step"] and resumed.steps == 60
    straight = distill(model, replacements, calib, **kwargs)
    assert straight.resumed_from is None and straight.steps == 60
    assert resumed.best_step == straight.best_step
    assert len(resumed.history) == 60
    np.testing.assert_allclose(resumed.history, straight.history, rtol=1e-5)
    for sid in replacements:
        for w, value in straight.weights[sid].items():
            np.testing.assert_allclose(resumed.weights[sid][w], value, rtol=1e-5, atol=1e-7)
    # A finished run is returned from its checkpoint without training again.
    again = distill(model, replacements, calib, checkpoint_dir=ckpt, **kwargs)
    assert again.resumed_from == 60 and again.history == resumed.history
    for sid in replacements:
        for w, value in resumed.weights[sid].items():
            np.testing.assert_array_equal(again.weights[sid][w], value)


def test_onnx_imported_model_distils_in_its_relax_torch_form(adapted, tmp_path):
    """No torch module: the imported (mod, params) is trained as the Relax graph run with torch ops."""
    model, split, calib, mod, params, replacements = adapted
    import onnx

    path = tmp_path / "net.onnx"
    torch.onnx.export(model, (torch.from_numpy(split.x_train[:1]),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"])
    onnx_mod, onnx_params = graph.from_onnx(path)
    assert set(CHOSEN) <= {s.id for s in graph.find_sites(onnx_mod, onnx_params)}  # ids from initializer names
    res = distill((onnx_mod, onnx_params), replacements, calib, steps=40, progress=False)
    assert res.error_after < 0.6 * res.error_before
    x = split.x_val[:4]
    for repl in (replacements, res.replacements):
        new_mod, new_params = graph.substitute(onnx_mod, onnx_params, repl)
        vm = graph.load_vm(graph.compile_module(new_mod, new_params))
        relax_out = np.concatenate([graph.run(vm, x[i:i + 1])[0] for i in range(len(x))])
        with torch.no_grad():
            torch_out = trainable_model((onnx_mod, onnx_params), repl)(torch.from_numpy(x)).numpy()
        assert rel_err(torch_out, relax_out) < 1e-4
    # An ONNX file or proto itself has no trainable form: the error says what to pass instead.
    for original in (onnx.load(str(path)), str(path), onnx_mod):
        with pytest.raises(DistillUnavailableError, match=r"\(mod, params\).*layer-wise fitted weights"):
            distill(original, replacements, calib, steps=1, progress=False)


def test_relax_operator_without_torch_translation_is_named(tmp_path):
    """ONNX's Clip (from ReLU6) imports as isnan/where/call_tir: refused up front, naming the operators."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    path = tmp_path / "relu6.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"])
    mod, params = graph.from_onnx(path)
    site = graph.find_sites(mod, params)[0]
    with pytest.raises(graph.UnsupportedModelError, match="no translation for .*call_tir"):
        distill((mod, params), {site.id: (site.program, site.weights)}, np.zeros((4, 1, 8, 8), np.float32),
                steps=1, progress=False)


@pytest.mark.parametrize("name", ["resnet18-style", "tcn"])
def test_relax_torch_form_computes_the_imported_model(name, tmp_path):
    """BatchNorm, mean, residual adds (resnet18-style); conv1d, average pooling, squeeze (the PPG TCN)."""
    from gos_tvm.graph.torch_form import RelaxTorch
    from gos_tvm.ppg.model import TCN

    torch.manual_seed(0)
    net, x = (models.ResNet18Style(), torch.randn(2, 1, 32, 32)) if name != "tcn" else (TCN(), torch.randn(2, 4, 256))
    net.eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x[:1],), str(path), dynamo=False, input_names=["x"])
    with torch.no_grad():
        ref = net(x).numpy()
        for mod, params in (graph.from_torch(net, x[:1]), graph.from_onnx(path)):
            assert rel_err(RelaxTorch(mod, params)(x).numpy(), ref) < 1e-5


def test_bad_arguments_are_named(adapted):
    model, split, calib, mod, params, replacements = adapted
    program, weights = replacements["2"]
    with pytest.raises(KeyError, match="not a submodule"):
        distill(model, {"conv9": (program, weights)}, calib, steps=1, progress=False)
    with pytest.raises(KeyError, match="called several times"):
        distill(model, {"2#2": (program, weights)}, calib, steps=1, progress=False)
    with pytest.raises(ValueError, match="task must be one of"):
        distill(model, replacements, calib, steps=1, task="ranking", progress=False)
    with pytest.raises(ValueError, match="calib_x must be a batch"):
        distill(model, replacements, calib[:1], steps=1, progress=False)


def test_regression_task_uses_mse(adapted):
    """A regression model (the classifier's logits read as 10 regression outputs) distils with MSE."""
    model, split, calib, mod, params, replacements = adapted
    res = distill(model, replacements, calib[:200], steps=30, lr=1e-2, task="regression", eval_every=10,
                  progress=False)
    assert res.error_after < 0.9 * res.error_before
    with torch.no_grad():  # the regression error is the relative error of the raw outputs
        out = trainable_model(model, res.replacements)(torch.from_numpy(calib[:200])).numpy()
        ref = model(torch.from_numpy(calib[:200])).numpy()
    held = np.sort(np.random.default_rng(0).permutation(200)[:40])
    assert rel_err(out[held], ref[held]) == pytest.approx(res.error_after, rel=1e-4)


def test_a_step_too_large_for_the_starting_weights_is_halved_from_them(adapted):
    """Backtracking: until an evaluation is better than the starting weights, each one that is not halves
    the step size and sends training back to the starting weights; after that, training runs as set."""
    model, split, calib, mod, params, replacements = adapted
    res = distill(model, replacements, calib[:400], steps=40, lr=0.5, eval_every=5, patience=None, progress=False)
    start, expected = res.evaluations[0][1], []
    for step, loss, _ in res.evaluations[1:]:
        if loss < start:
            break
        expected.append(step)
    assert expected, "lr=0.5 never made an evaluation worse than the start: the test shows nothing"
    assert res.restarts == expected
    assert res.loss_after == min(loss for _, loss, _ in res.evaluations) <= res.loss_before
    # Sent back: the weights right after a restart are the starting ones, so a run that stops there
    # (patience 1) hands back exactly the weights it started from.
    stopped = distill(model, replacements, calib[:400], steps=40, lr=0.5, eval_every=5, patience=1, progress=False)
    assert stopped.restarts == expected[:1] and stopped.best_step == 0 and stopped.stopped_early
    for sid, (_, w0) in replacements.items():
        for name, value in w0.items():
            np.testing.assert_array_equal(stopped.weights[sid][name], np.asarray(value, dtype=np.float32))


def test_the_originals_outputs_are_computed_once_for_distillations_on_the_same_inputs(adapted, monkeypatch):
    """The search distils configuration after configuration on the same inputs: the frozen original
    runs over them once, and what it returned is what a fresh computation gives."""
    distill_module = sys.modules["gos_tvm.fit.distill"]  # the module: gos_tvm.fit.distill is also the function

    model, split, calib, mod, params, replacements = adapted
    x = calib[:300]
    teacher_runs = []
    forward = distill_module._forward
    monkeypatch.setattr(distill_module, "_forward",
                        lambda m, xs, *a: (teacher_runs.append(m) if len(xs) == len(x) else None) or forward(m, xs, *a))
    distill_module._TEACHER_OUTPUTS.clear()
    one = {"2": replacements["2"]}
    first = distill(model, one, x, steps=10, eval_every=5, progress=False)
    second = distill(model, replacements, x, steps=10, eval_every=5, progress=False)
    assert len(teacher_runs) == 1  # the second distillation reused the original's outputs
    distill_module._TEACHER_OUTPUTS.clear()
    again = distill(model, replacements, x, steps=10, eval_every=5, progress=False)
    assert len(teacher_runs) == 2 and again.evaluations == second.evaluations
    other = distill(model, one, calib[:301], steps=10, eval_every=5, progress=False)  # other inputs: run again
    assert other.loss_before != first.loss_before and len(distill_module._TEACHER_OUTPUTS) == 1
