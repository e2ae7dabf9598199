"""Least-squares refit of a candidate's final pointwise map from activations.

Most replacements end in a linear map over channels (the pointwise part of a
depthwise-separable or shift replacement, the 'up' factor of a low-rank one, the
'expand' of a bottleneck), usually followed by the operator's bias.  With the features
``F`` that reach that map and the target outputs ``Y``, the best map and bias are an
ordinary least-squares problem, ``min ||[F 1] [P b]^T - Y||``, solved exactly here.  It
corrects in one step what weight-space initialisation cannot see: which input directions
the data actually excites.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..instructions import OpProgram, to_torch
from ..space.emit import subprogram
from ..space.match import Site, find_sites, weight_source
from . import batched


def output_linear(program: OpProgram) -> tuple[Site, str | None] | None:
    """The ungrouped linear site that produces the output, possibly plus a per-channel bias.

    Returns (site, bias weight name or None), or None when the program does not end that way.
    """
    ends = {s.end: s for s in find_sites(program) if s.kind == "linear" and s.groups == 1}
    if program.output in ends:
        return ends[program.output], None
    last = program.node(program.output) if program.output not in program.inputs else None
    if last is None or last.op != "add":
        return None
    for y, b in (last.inputs, reversed(last.inputs)):
        site = ends.get(y)
        bias = weight_source(program, b)
        if site is None or bias is None or program.shapes[bias] != (site.out_channels,):
            continue
        # The bias operand must vary along the channel axis only (numpy broadcasting, right-aligned).
        shape = program.shapes[b]
        out = site.output_shape
        aligned = (1,) * (len(out) - len(shape)) + tuple(shape)
        if len(aligned) == len(out) and all(d == (site.out_channels if i == site.channel_axis else 1)
                                            for i, d in enumerate(aligned)):
            return site, bias
    return None


def _rows(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Chunks (B, *shape) -> rows (B * positions, channels) with the channel axis last."""
    return t.movedim(axis + 1, -1).reshape(-1, t.shape[axis + 1]).double()


def refit_output_linear(program: OpProgram, weights: Mapping[str, np.ndarray], inputs: list[torch.Tensor],
                        targets: torch.Tensor, ridge: float = 1e-6, batch: int = 64) -> dict[str, np.ndarray] | None:
    """`weights` with the final pointwise map (and bias) solved by least squares, or None if not applicable.

    Args:
        program: the candidate program.
        weights: its current weights (the features entering the final map depend on them).
        inputs: input chunks from `batched.stack_inputs`.
        targets: target chunks from `batched.stack_outputs`.
        ridge: Tikhonov regularisation relative to the mean feature energy; keeps the
            solve well posed when features are rank deficient (e.g. zero-padded ranks).
        batch: chunks per step of the accumulation.
    """
    found = output_linear(program)
    if found is None:
        return None
    site, bias = found
    features = subprogram(program, site.source)
    module = to_torch(features, {k: weights[k] for k in features.weights})
    # Accumulate the normal equations batch by batch: the rows (samples x positions) of a
    # real layer do not fit in memory at once, the (C+1)^2 Gram matrix always does.
    dim = site.in_channels + (bias is not None)
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    rhs = torch.zeros(dim, site.out_channels, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, targets.shape[0], batch):
            chunk = [t[i:i + batch] for t in inputs]
            if site.source in program.inputs:
                f = chunk[list(program.inputs).index(site.source)]
            else:
                f = batched.run(module, chunk, batch)
            x = _rows(f, site.channel_axis)
            if bias is not None:
                x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
            gram += x.T @ x
            rhs += x.T @ _rows(targets[i:i + batch], site.channel_axis)
    gram += ridge * gram.diagonal().mean().clamp_min(1e-30) * torch.eye(dim, dtype=gram.dtype)
    sol = torch.linalg.solve(gram, rhs)  # (C [+1], O)
    out = dict(weights)
    out[site.weight] = site.stored_weight(sol[:site.in_channels].T.numpy(), program.weights[site.weight])
    if bias is not None:
        out[bias] = sol[site.in_channels].numpy().astype(np.float32).reshape(program.weights[bias])
    return out
