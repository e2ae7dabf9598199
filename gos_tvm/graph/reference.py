"""The torch side of a substitution: reference models and activation capture with hooks.

For a model imported with `from_torch`, a site id is the qualified name of the torch
module that owns the site's weight (``"layer1.0.conv1"``, ``"fc"``): the site is that
module's call (convolution or linear, bias included).  So the torch model in which
sites are replaced by their replacements' torch lowerings is the model with those
submodules swapped for `gos_tvm.instructions.to_torch` modules (`torch_reference`), and
a site's calibration activations are the submodule's input and output (`capture_torch`).
Ids of the form ``"name#2"`` (a module called twice) and ``"kind@var"`` (constant
weights) have no submodule.

Both fold BatchNorm into the layer before it, as `from_torch` does by default
(`gos_tvm.graph.fold_batchnorm`), so that a site's submodule computes what the site computes;
pass ``fold_batchnorm=False`` for a model imported with ``from_torch(..., fold_batchnorm=False)``.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..instructions import to_torch
from .fold import fold_batchnorm as _fold
from .rewrite import Replacement


def _submodule(model: torch.nn.Module, site_id: str) -> torch.nn.Module:
    try:
        return model.get_submodule(site_id)
    except AttributeError as err:
        raise KeyError(f"site '{site_id}' is not a submodule of {type(model).__name__} "
                       "(site ids of torch models are qualified module names)") from err


class Chunked(torch.nn.Module):
    """Runs a program module (fixed batch ``b``) on any multiple of ``b`` samples, chunk by chunk."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        (self.shape,) = module.program.inputs.values()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.shape[0]
        if tuple(x.shape) == tuple(self.shape) or x.shape[0] % b or tuple(x.shape[1:]) != tuple(self.shape[1:]):
            return self.module(x)  # exact shape, or let the module report the mismatch
        return torch.cat([self.module(c) for c in torch.split(x, b)])


def torch_reference(model: torch.nn.Module, replacements: Mapping[str, Replacement], *,
                    fold_batchnorm: bool = True) -> torch.nn.Module:
    """A deep copy of ``model`` (in eval mode, BatchNorm folded as in `from_torch`) with the
    submodule of each site id replaced by ``to_torch(program, weights)``: the torch counterpart
    of `substitute`.

    The programs have the static batch size of the imported model; the replaced
    submodules (`Chunked`) run larger batches that are multiples of it chunk by chunk."""
    ref = (_fold(model)[0] if fold_batchnorm else copy.deepcopy(model)).eval()
    if ref is model:  # nothing was folded: still never change the caller's model
        ref = copy.deepcopy(model).eval()
    for site_id, (program, weights) in replacements.items():
        _submodule(ref, site_id)
        parent_name, _, child = site_id.rpartition(".")
        parent = ref.get_submodule(parent_name) if parent_name else ref
        setattr(parent, child, Chunked(to_torch(program, dict(weights))).eval())
    return ref


def capture_torch(model: torch.nn.Module, inputs: Any, site_ids: Sequence[str], *,
                  fold_batchnorm: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The input and output of the submodule of each site id on ``inputs`` (one tensor or
    array with a batch axis, a tuple of them for several model inputs, or a list of
    samples that are concatenated along axis 0), with the model in eval mode and its
    BatchNorm folded as in `from_torch`."""
    if fold_batchnorm:
        model, _ = _fold(model)
    def tensor(x: Any) -> torch.Tensor:
        return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))

    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        args = (tensor(inputs),)
    elif isinstance(inputs, tuple):
        args = tuple(tensor(x) for x in inputs)
    else:
        args = (torch.cat([tensor(x) for x in inputs]),)
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    handles = []

    def hook(name: str):
        def record(module: torch.nn.Module, ins: tuple, out: torch.Tensor) -> None:
            seen[name] = (ins[0].detach().cpu().numpy().copy(), out.detach().cpu().numpy().copy())
        return record

    was_training = model.training
    model.eval()
    try:
        for site_id in site_ids:
            handles.append(_submodule(model, site_id).register_forward_hook(hook(site_id)))
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [s for s in site_ids if s not in seen]
    if missing:
        raise RuntimeError(f"submodules {missing} were not called by the model's forward")
    return {s: seen[s] for s in site_ids}


__all__ = ["torch_reference", "capture_torch", "Chunked"]
