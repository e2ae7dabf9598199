"""Fitting a candidate's weights to an original operator's input/output activations.

Layer-wise distillation in three stages:

1. closed form from the original weights (`Candidate.init`: truncated SVDs, Tucker-2,
   block projections), or PyTorch's default random init when they are not given;
2. least squares for the final pointwise map and bias on the training activations
   (`lstsq.refit_output_linear`);
3. Adam on the mean squared error, normalised by the targets' mean square so that one
   learning rate suits every layer, with a cosine-decayed step size.

The result keeps whichever of stage 2 and stage 3 fits the training data better, so
gradient steps never make a closed-form solution worse.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from ..instructions import OpProgram, to_torch
from ..space import Candidate
from . import batched
from .lstsq import refit_output_linear


@dataclass
class FitResult:
    """Fitted weights and how well they reproduce the targets.

    Attributes:
        weights: the candidate program's weights (numpy float32, by name).
        rel_error: ||y_hat - y|| / ||y|| on the training part of the data.
        heldout_rel_error: the same on the held-out part (None without a held-out part).
        init_rel_error: training error after the closed-form and least-squares stages.
        history: normalised training loss (MSE / mean square of y) of every Adam step.
        steps: Adam steps taken.
        seconds: wall time of the fit.
    """

    weights: dict[str, np.ndarray]
    rel_error: float
    heldout_rel_error: float | None
    init_rel_error: float
    history: list[float] = field(repr=False)
    steps: int
    seconds: float


def fit(candidate: Candidate | OpProgram, inputs: batched.Inputs, outputs: batched.Array, *,
        original_weights: Mapping[str, np.ndarray] | None = None, steps: int = 300, lr: float = 1e-2,
        seed: int = 0, batch_size: int = 64, holdout: float = 0.2, lstsq: bool = True,
        progress: bool = False) -> FitResult:
    """Fit `candidate`'s weights so that it maps `inputs` to `outputs`.

    Args:
        candidate: the replacement (a `Candidate`, or a bare program to fit from random init).
        inputs: input activations, sample axis first: an array of shape (M, *input shape[1:])
            with M a multiple of the program's batch, or a dict by input name.
        outputs: the original operator's outputs on those inputs, (M, *output shape[1:]).
        original_weights: the original operator's weights; enables the closed-form init.
        steps: Adam steps (0: initialisation only).
        lr: Adam's initial step size (decays along a cosine to 1% of it).
        seed: seeds the random init, the held-out split and the mini-batch order.
        batch_size: samples per Adam step.
        holdout: fraction of the samples held out to measure generalisation (0: none).
        lstsq: solve the final pointwise map by least squares before Adam.
        progress: show a tqdm bar over the Adam steps.

    Returns:
        A `FitResult`; deterministic for a given seed.
    """
    start = time.perf_counter()
    cand = candidate if isinstance(candidate, Candidate) else Candidate.original(candidate)
    program = cand.program
    if steps < 0 or batch_size < 1 or not 0 <= holdout < 1 or lr <= 0:
        raise ValueError(f"need steps >= 0, batch_size >= 1, 0 <= holdout < 1 and lr > 0; got steps={steps}, "
                         f"batch_size={batch_size}, holdout={holdout}, lr={lr}")
    x = batched.stack_inputs(program, inputs)
    y = batched.stack_outputs(program, outputs, x[0].shape[0])
    train, held = _split(x[0].shape[0], holdout, seed)
    x_tr, y_tr = [t[train] for t in x], y[train]

    if original_weights is not None:
        weights = cand.init(cand.origin, original_weights)
    else:
        generator = torch.Generator().manual_seed(seed)
        weights = to_torch(program, generator=generator).weight_arrays()
    if lstsq:
        weights = refit_output_linear(program, weights, x_tr, y_tr) or weights

    module = to_torch(program, weights)
    init_error = _error(module, x_tr, y_tr)
    history: list[float] = []
    best, best_error = module.weight_arrays(), init_error
    if steps and module.weights:
        history = _adam(module, x_tr, y_tr, steps, lr, seed, max(1, batch_size // program.output_shape[0]), progress)
        error = _error(module, x_tr, y_tr)
        if error < best_error:
            best, best_error = module.weight_arrays(), error
    heldout_error = _error(to_torch(program, best), [t[held] for t in x], y[held]) if len(held) else None
    return FitResult(best, best_error, heldout_error, init_error, history, len(history),
                     time.perf_counter() - start)


def _split(count: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk indices for training and held-out data (the held-out part only when both keep data)."""
    order = np.random.default_rng(seed).permutation(count)
    n_held = int(math.floor(holdout * count))
    if n_held == 0 or n_held == count:
        return np.arange(count), np.arange(0)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def _error(module: torch.nn.Module, x: list[torch.Tensor], y: torch.Tensor) -> float:
    with torch.no_grad():
        return batched.rel_error(batched.run(module, x), y)


def _adam(module: torch.nn.Module, x: list[torch.Tensor], y: torch.Tensor, steps: int, lr: float, seed: int,
          chunks_per_batch: int, progress: bool) -> list[float]:
    scale = y.pow(2).mean().clamp_min(1e-30)  # the loss is relative, so lr does not depend on the layer's scale
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 1e-2)
    rng = np.random.default_rng(seed + 1)
    count = y.shape[0]
    order, pos = rng.permutation(count), 0
    history = []
    f = torch.func.vmap(module)
    loop = range(steps)
    if progress:
        from tqdm import tqdm

        loop = tqdm(loop, desc="fit", unit="step")
    for _ in loop:
        if pos + chunks_per_batch > count:
            order, pos = rng.permutation(count), 0
        idx = torch.from_numpy(order[pos:pos + chunks_per_batch])
        pos += chunks_per_batch
        loss = (f(*(t[idx] for t in x)) - y[idx]).pow(2).mean() / scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
    return history
