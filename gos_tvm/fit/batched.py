"""Running a program on a whole data set of activations.

Programs have static shapes with a leading batch axis N (often 1), while a data set of
activations holds M samples.  Data arrays are laid out like the program's values with M
in place of N (M a multiple of N); they are viewed as M/N *chunks* of the program's own
shape, and the program's torch module is mapped over the chunks with `torch.func.vmap`,
so no program has to be rebuilt for another batch size.
"""
from __future__ import annotations

from typing import Mapping, Union

import numpy as np
import torch

from ..instructions import OpProgram, to_torch
from ..instructions.lowering_torch import ProgramModule

Array = Union[np.ndarray, torch.Tensor]
Inputs = Union[Array, Mapping[str, Array]]


def _as_tensor(a: Array) -> torch.Tensor:
    return a.detach().float() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a, dtype=np.float32))


def _chunk(value: Array, shape: tuple[int, ...], what: str) -> torch.Tensor:
    t = _as_tensor(value)
    n = shape[0]
    if tuple(t.shape[1:]) != tuple(shape[1:]) or t.dim() != len(shape) or t.shape[0] % n:
        raise ValueError(f"{what} must have shape (M, {', '.join(map(str, shape[1:]))}) with M a multiple of "
                         f"the program's batch {n}, got {tuple(t.shape)}")
    return t.reshape(t.shape[0] // n, *shape)


def stack_inputs(program: OpProgram, inputs: Inputs) -> list[torch.Tensor]:
    """The program's inputs as chunk tensors (M/N, *input shape), in declaration order."""
    if not isinstance(inputs, Mapping):
        if len(program.inputs) != 1:
            raise ValueError(f"program '{program.name}' has inputs {list(program.inputs)}; pass a dict")
        inputs = {next(iter(program.inputs)): inputs}
    missing = set(program.inputs) - set(inputs)
    if missing:
        raise ValueError(f"missing data for input(s) {sorted(missing)} of program '{program.name}'")
    chunks = [_chunk(inputs[k], s, f"data for input '{k}'") for k, s in program.inputs.items()]
    if len({c.shape[0] for c in chunks}) != 1:
        raise ValueError(f"inputs of program '{program.name}' have different sample counts")
    return chunks


def stack_outputs(program: OpProgram, outputs: Array, count: int) -> torch.Tensor:
    """The targets as chunk tensors (M/N, *output shape), checked against `count` chunks of inputs."""
    y = _chunk(outputs, program.output_shape, "output data")
    if y.shape[0] != count:
        raise ValueError(f"{y.shape[0] * program.output_shape[0]} output samples for "
                         f"{count * program.output_shape[0]} input samples")
    return y


def run(module: ProgramModule, chunks: list[torch.Tensor], batch: int = 256) -> torch.Tensor:
    """`module` over every chunk, `batch` chunks at a time (keeps the autograd graph)."""
    f = torch.func.vmap(module)
    count = chunks[0].shape[0]
    return torch.cat([f(*(c[i:i + batch] for c in chunks)) for i in range(0, count, batch)])


def evaluate(program: OpProgram, weights: Mapping[str, np.ndarray], inputs: Inputs,
             batch: int = 256) -> np.ndarray:
    """Outputs of `program` with `weights` on every sample of `inputs` (sample axis first)."""
    chunks = stack_inputs(program, inputs)
    with torch.no_grad():
        y = run(to_torch(program, weights), chunks, batch)
    return y.reshape(-1, *program.output_shape[1:]).numpy()


def rel_error(y_hat: Array, y: Array) -> float:
    """||y_hat - y|| / ||y||."""
    a, b = _as_tensor(y_hat).double(), _as_tensor(y).double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))
