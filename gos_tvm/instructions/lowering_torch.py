"""Lowering of an `OpProgram` to a trainable `torch.nn.Module`.

The module's parameters are the program's weights (same names, same shapes), so
fitting a replacement is ordinary PyTorch training and its state dict is the weight
set that the TVM lowering takes.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .program import Node, OpProgram, Shape


def _pad(x: torch.Tensor, pads, value: float = 0.0) -> torch.Tensor:
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]  # F.pad lists the last axis first
    return F.pad(x, flat, value=value) if any(flat) else x


def _window(x: torch.Tensor, axes, kernel, stride, dilation) -> torch.Tensor:
    # Tensor.unfold appends one trailing axis per windowed axis, in order; a dilated
    # window is the undilated span with every d-th element kept.
    ndim = x.dim()
    for a, k, s, d in zip(axes, kernel, stride, dilation):
        x = x.unfold(a % ndim, d * (k - 1) + 1, s)
        if d > 1:
            x = x[..., ::d]
    return x


def _shift(x: torch.Tensor, channel_axis: int, axes, offsets) -> torch.Tensor:
    # Channels that share an offset move together: one slice of the zero-padded input
    # per distinct offset, then the channels are put back in their original order.
    ch = channel_axis % x.dim()
    axes = [a % x.dim() for a in axes]
    reach = [max(abs(off[i]) for off in offsets) for i in range(len(axes))]
    pads = [(0, 0)] * x.dim()
    for a, r in zip(axes, reach):
        pads[a] = (r, r)
    padded = _pad(x, pads)
    groups: dict[tuple, list[int]] = {}
    for c, off in enumerate(offsets):
        groups.setdefault(tuple(off), []).append(c)
    parts, order = [], []
    for off, chans in groups.items():
        index = [slice(None)] * x.dim()
        for a, r, o in zip(axes, reach, off):
            index[a] = slice(r + o, r + o + x.shape[a])
        idx = torch.tensor(chans, device=x.device)
        parts.append(padded.index_select(ch, idx)[tuple(index)])
        order.extend(chans)
    inverse = torch.empty(len(order), dtype=torch.long, device=x.device)
    inverse[torch.tensor(order, device=x.device)] = torch.arange(len(order), device=x.device)
    return torch.cat(parts, dim=ch).index_select(ch, inverse)


def _slice(x: torch.Tensor, axis: int, begin: int, end: int, stride: int = 1) -> torch.Tensor:
    index = [slice(None)] * x.dim()
    index[axis % x.dim()] = slice(begin, end, stride)
    return x[tuple(index)]


TORCH_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "pad": _pad,
    "window": _window,
    "shift": _shift,
    "contract": lambda a, b, spec: torch.einsum(spec, a, b),
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "maximum": torch.maximum,
    "abs": torch.abs,
    "neg": torch.neg,
    "reduce_sum": lambda x, axes, keepdims=False: torch.sum(x, dim=tuple(axes), keepdim=keepdims),
    "reduce_max": lambda x, axes, keepdims=False: torch.amax(x, dim=tuple(axes), keepdim=keepdims),
    "reshape": lambda x, shape: x.reshape(shape),
    "transpose": lambda x, perm: x.permute(*perm),
    "concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "slice": _slice,
}


def init_weight(shape: Shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """PyTorch's default conv/linear initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


class ProgramModule(torch.nn.Module):
    """Runs an `OpProgram` with PyTorch; `weights` is a ParameterDict keyed by weight name."""

    def __init__(self, program: OpProgram, weights: Mapping[str, np.ndarray | torch.Tensor] | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.program = program
        given = dict(weights or {})
        unknown = set(given) - set(program.weights)
        if unknown:
            raise ValueError(f"program '{program.name}' has no weight(s) {sorted(unknown)}; "
                             f"its weights are {list(program.weights)}")
        params = {}
        for name, shape in program.weights.items():
            value = given.get(name)
            value = init_weight(shape, generator) if value is None else torch.as_tensor(np.asarray(value)).float()
            if tuple(value.shape) != shape:
                raise ValueError(f"weight '{name}' of program '{program.name}' must have shape {shape}, "
                                 f"got {tuple(value.shape)}")
            params[name] = torch.nn.Parameter(value.clone())
        self.weights = torch.nn.ParameterDict(params)

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        names = list(self.program.inputs)
        if len(args) > len(names):
            raise TypeError(f"program '{self.program.name}' takes {len(names)} input(s), got {len(args)}")
        env: dict[str, torch.Tensor] = dict(zip(names, args))
        env.update(kwargs)
        for name, shape in self.program.inputs.items():
            if name not in env:
                raise TypeError(f"missing input '{name}'")
            if tuple(env[name].shape) != shape:
                raise ValueError(f"input '{name}' must have shape {shape}, got {tuple(env[name].shape)}")
        env.update(self.weights)
        for node in self.program.nodes:
            env[node.name] = _run(node, [env[i] for i in node.inputs])
        return env[self.program.output]

    def weight_arrays(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.weights.items()}


def _run(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return TORCH_OPS[node.op](*args, **node.attr)


def to_torch(program: OpProgram, weights: Mapping[str, np.ndarray | torch.Tensor] | None = None,
             generator: torch.Generator | None = None) -> ProgramModule:
    """A trainable torch module computing `program`; missing weights get PyTorch's default init."""
    return ProgramModule(program, weights, generator)
