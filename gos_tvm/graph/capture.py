"""Calibration activations: each site's input and output on given model inputs.

`capture` works from the Relax module (so for ONNX models too): it compiles a variant
of ``main`` that returns the sites' inputs and outputs (`capture_module`) and runs it
once per sample.  For torch models, `gos_tvm.graph.reference.capture_torch` gets the
same arrays from forward hooks without compiling.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tvm

from .compile import compile_module, load_vm
from .importer import model_inputs
from .rewrite import capture_module


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def split_samples(mod: tvm.IRModule, inputs: Any) -> list[list[np.ndarray]]:
    """Model-input samples from ``inputs``, each a list with one array per model input.

    ``inputs`` may be: one array (or torch tensor) whose leading axis is a multiple of the
    model's fixed batch size (split into batches); a list of such arrays (one model
    input); or, for models with several inputs, one sequence of arrays per input with the
    same leading multiple, or a list of such per-sample sequences.
    """
    specs = model_inputs(mod)
    n = len(specs)

    def split(arrays: Sequence[Any]) -> list[list[np.ndarray]]:
        arrays = [_array(a) for a in arrays]
        counts = []
        for a, (name, shape, _) in zip(arrays, specs):
            if a.shape == shape:
                counts.append(1)
                continue
            if a.ndim != len(shape) or a.shape[1:] != shape[1:] or shape[0] < 1 or a.shape[0] % shape[0]:
                raise ValueError(f"input '{name}' has shape {a.shape}; the model takes {shape} "
                                 f"(a leading axis that is a multiple of {shape[0] if shape else '?'} is split)")
            counts.append(a.shape[0] // shape[0])
        if len(set(counts)) != 1:
            raise ValueError(f"inputs give different numbers of samples: {counts}")
        out = []
        for i in range(counts[0]):
            out.append([np.ascontiguousarray(a if c == 1 else a[i * s[1][0]:(i + 1) * s[1][0]])
                        for a, c, s in zip(arrays, counts, specs)])
        return out

    if n == 1:
        if hasattr(inputs, "shape"):
            return split([inputs])
        samples = []
        for item in inputs:
            if hasattr(item, "shape"):
                samples += split([item])
            else:
                samples += split(list(item))
        return samples
    items = list(inputs)
    if len(items) == n and all(hasattr(a, "shape") for a in items):
        return split(items)
    samples = []
    for item in items:
        samples += split(list(item))
    return samples


def capture(mod: tvm.IRModule, params: Mapping[str, np.ndarray], inputs: Any,
            site_ids: Sequence[str] | None = None, target: Any = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each site's (input, output) on ``inputs``, from the Relax module.

    ``inputs`` is split into samples of the model's fixed input shapes (see
    `split_samples`); the arrays of all samples are concatenated along axis 0, so a
    batch-1 model run on an ``(N, C, H, W)`` array gives ``(N, ...)`` site inputs and
    outputs.  ``site_ids`` defaults to all sites.  Compiles a capture module for the host
    (or ``target``) once per call.
    """
    cmod, cparams, ids = capture_module(mod, params, site_ids)
    samples = split_samples(mod, inputs)
    if not samples:
        raise ValueError("capture needs at least one input sample")
    vm = load_vm(compile_module(cmod, cparams, target))
    dev = tvm.cpu()
    collected: list[list[np.ndarray]] = [[] for _ in range(2 * len(ids))]
    for sample in samples:
        outs = vm["main"](*[tvm.runtime.tensor(a, dev) for a in sample])
        for k in range(2 * len(ids)):
            collected[k].append(outs[k].numpy())
    return {site_id: (np.concatenate(collected[2 * i]), np.concatenate(collected[2 * i + 1]))
            for i, site_id in enumerate(ids)}


__all__ = ["capture", "split_samples"]
