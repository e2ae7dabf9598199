"""A configuration as a model: building it from its candidates, running it, fingerprinting it."""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np

from .results import Candidate, Predict


def build_adapted(mod, params: Mapping[str, np.ndarray], candidates: Sequence[Candidate]):
    """(mod, params) with each candidate's site replaced by its program and fitted weights."""
    from .. import graph

    if not candidates:
        return mod, params
    return graph.substitute(mod, params, {c.site: (c.program, c.weights()) for c in candidates})


def fingerprint(mod, params: Mapping[str, np.ndarray]) -> str:
    """A short hash of a model's script and parameters (the work directory's identity)."""
    h = hashlib.sha256(mod.script(show_meta=False).encode())
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k]).tobytes())
    return h.hexdigest()[:16]


def predictor(vm) -> Predict:
    """Runs a batch-1 Relax VM over a batch of inputs."""
    import tvm

    def predict(x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(len(x)):
            out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[i: i + 1], dtype="float32")))
            if not hasattr(out, "numpy"):  # a tuple of outputs: the model's prediction is the first
                out = out[0]
            outs.append(out.numpy())
        return np.concatenate(outs)

    return predict


def torch_predictor(model, batch: int = 256) -> Predict:
    """Runs a torch module (e.g. a configuration's trainable form) over a batch of inputs, in chunks."""
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype="float32"))
            return torch.cat([model(xt[i: i + batch]) for i in range(0, len(xt), batch)]).numpy()

    return predict


__all__ = ["build_adapted", "fingerprint", "predictor", "torch_predictor"]
