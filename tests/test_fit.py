"""Fitting replacement weights: exact recovery, a conv from a model trained on real data, activations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gos_tvm.fit import capture, evaluate, fit, layer_program, output_linear, rel_error
from gos_tvm.instructions import library
from gos_tvm.space import apply, candidates
from gos_tvm.space.factor import shift_taps


def rank_r_conv(rng: np.random.Generator, o: int, c: int, k: int, r: int) -> dict[str, np.ndarray]:
    w = (rng.standard_normal((o, r)) @ rng.standard_normal((r, c * k * k))).reshape(o, c, k, k) / np.sqrt(c * k * k)
    return {"weight": w.astype(np.float32), "bias": rng.standard_normal(o).astype(np.float32)}


@pytest.fixture(scope="module")
def rank2_site():
    rng = np.random.default_rng(0)
    program = library.conv2d((1, 6, 8, 8), 12, 3, padding=1)
    w = rank_r_conv(rng, 12, 6, 3, 2)
    x = rng.standard_normal((160, 6, 8, 8)).astype(np.float32)
    return program, w, x, evaluate(program, w, x)


@pytest.mark.parametrize("rank", [2, 4])
def test_low_rank_recovers_a_rank_r_conv_from_its_weights(rank2_site, rank):
    program, w, x, y = rank2_site
    result = fit(apply(program, "low_rank", rank=rank), x, y, original_weights=w, steps=20)
    assert result.rel_error < 1e-3 and result.heldout_rel_error < 1e-3
    assert result.rel_error <= result.init_rel_error  # gradient steps never make the fit worse


def test_low_rank_learns_a_rank_r_conv_from_activations_alone(rank2_site):
    """No original weights: random init, least squares, then Adam must find the factorisation."""
    program, _, x, y = rank2_site
    result = fit(apply(program, "low_rank", rank=2), x, y, steps=400, lr=3e-2, batch_size=32)
    assert result.init_rel_error > 0.1  # far off at the start, so the steps did the work
    assert result.rel_error < 1e-3 and result.heldout_rel_error < 1e-3
    assert len(result.history) == 400 and result.history[-1] < result.history[0]


def test_low_rank_dense_from_activations():
    rng = np.random.default_rng(1)
    program = library.dense((4, 20), 16)
    w = {"weight": (rng.standard_normal((16, 3)) @ rng.standard_normal((3, 20))).astype(np.float32),
         "bias": rng.standard_normal(16).astype(np.float32)}
    x = rng.standard_normal((400, 20)).astype(np.float32)
    y = evaluate(program, w, x)
    assert fit(apply(program, "low_rank", rank=3), x, y, original_weights=w, steps=0).rel_error < 1e-5
    assert fit(apply(program, "low_rank", rank=3), x, y, steps=300, lr=3e-2).rel_error < 1e-3


def test_least_squares_solves_the_final_pointwise_map_exactly():
    """A shift-representable conv: the shift is fixed, so least squares alone must recover it from data."""
    rng = np.random.default_rng(2)
    program = library.conv1d((1, 6, 24), 8, 3, padding=2, dilation=2)
    w = np.zeros((8, 6, 3), np.float32)
    for ch, (tap,) in enumerate(shift_taps(6, (3,))):
        w[:, ch, tap] = rng.standard_normal(8)
    weights = {"weight": w, "bias": rng.standard_normal(8).astype(np.float32)}
    x = rng.standard_normal((64, 6, 24)).astype(np.float32)
    y = evaluate(program, weights, x)
    cand = apply(program, "shift_pointwise")
    site, bias = output_linear(cand.program)
    assert bias == "bias" and site.in_channels == 6
    assert fit(cand, x, y, steps=0, lstsq=False).rel_error > 0.5
    solved = fit(cand, x, y, steps=0)
    assert solved.rel_error < 1e-4
    assert np.allclose(solved.weights["bias"], weights["bias"], atol=1e-4)


def test_fit_is_deterministic_for_a_seed(rank2_site):
    program, _, x, y = rank2_site
    cand = apply(program, "depthwise_separable")
    a = fit(cand, x, y, steps=15, seed=3)
    b = fit(cand, x, y, steps=15, seed=3)
    c = fit(cand, x, y, steps=15, seed=4)
    assert a.history == b.history and all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.history != c.history


def test_fit_rejects_mismatched_data(rank2_site):
    program, w, x, y = rank2_site
    cand = apply(program, "low_rank", rank=2)
    with pytest.raises(ValueError, match="input 'x' must have shape"):
        fit(cand, x[:, :5], y)
    with pytest.raises(ValueError, match="output samples"):
        fit(cand, x, y[:10])
    with pytest.raises(ValueError, match="holdout"):
        fit(cand, x, y, holdout=1.0)


# --- a conv from a model trained on real data -------------------------------------------------------


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.head = torch.nn.Linear(16 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


@pytest.fixture(scope="module")
def digits_model():
    """A small CNN trained for a few seconds on scikit-learn's 8x8 digits."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target)
    train, test = slice(0, 1400), slice(1400, None)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(6):
        order = torch.randperm(1400)
        for i in range(0, 1400, 64):
            idx = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(images[train][idx]), labels[train][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = float((model(images[test]).argmax(1) == labels[test]).float().mean())
    return model, images, accuracy


def test_capture_and_layer_program_reproduce_the_layer(digits_model):
    model, images, accuracy = digits_model
    assert accuracy > 0.8  # the model did learn the digits
    x, y = capture(model, "conv2", images[:300], batch_size=128)
    assert x.shape == (300, 8, 8, 8) and y.shape == (300, 16, 8, 8)
    with torch.no_grad():
        assert np.allclose(model.conv2(torch.from_numpy(x)).numpy(), y, atol=1e-6)
    program, weights = layer_program(model.conv2, (1, 8, 8, 8))
    assert rel_error(evaluate(program, weights, x), y) < 1e-5


def test_fitted_candidate_beats_random_weights_tenfold_on_a_trained_conv(digits_model):
    model, images, _ = digits_model
    x, y = capture(model, model.conv2, images[:480])
    program, weights = layer_program(model.conv2, (1, 8, 8, 8))
    picked = {c.rule: c for c in candidates(program, depth=1, families=["low_rank", "spatially_separable"],
                                            ranks=[8, 6], max_flops_ratio=0.7, include_original=False)}
    assert set(picked) == {"low_rank", "spatially_separable"}
    for cand in picked.values():
        fitted = fit(cand, x, y, original_weights=weights, steps=100, seed=0)
        random = fit(cand, x, y, steps=0, lstsq=False, seed=0)
        assert fitted.heldout_rel_error is not None
        assert 10 * fitted.rel_error < random.rel_error, (cand, fitted, random)
        assert 10 * fitted.heldout_rel_error < random.heldout_rel_error, (cand, fitted, random)


# --- layer programs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer,shape", [
    (torch.nn.Conv1d(4, 6, 3, dilation=4, padding="same"), (2, 4, 30)),
    pytest.param(torch.nn.Conv1d(4, 6, 4, padding="same", bias=False), (1, 4, 11),
                 marks=pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")),
    (torch.nn.Conv2d(4, 6, (3, 2), stride=2, padding=(1, 0), groups=2), (1, 4, 9, 7)),
    (torch.nn.Linear(12, 5), (3, 12)),
])
def test_layer_program_matches_torch(layer, shape):
    program, weights = layer_program(layer, shape)
    x = torch.randn(4 * shape[0], *shape[1:])
    with torch.no_grad():
        assert rel_error(evaluate(program, weights, x.numpy()), layer(x)) < 1e-5


def test_layer_program_and_capture_errors():
    with pytest.raises(ValueError, match="no program for layer type"):
        layer_program(torch.nn.ReLU(), (1, 4))
    with pytest.raises(ValueError, match="padding_mode"):
        layer_program(torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (1, 2, 5, 5))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no submodule"):
        capture(model, "fc", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not a submodule"):
        capture(model, torch.nn.Linear(3, 3), torch.zeros(2, 3))
