"""Lowering of an `OpProgram` to a TVM tensor expression and a TensorIR `PrimFunc`.

Each instruction becomes one `te.compute` (or the TOPI operator that already is
one).  Index instructions (pad, window, shift, reshape, ...) are injective, so
MetaSchedule's auto-inline folds them into the contraction that reads them: the
window is never materialised in a tuned kernel.

The PrimFunc takes `(inputs..., weights..., output)` in the program's declaration
order, the calling convention of Relax's `call_tir`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import tvm
from tvm import te, tirx, topi

from .program import Node, OpProgram, parse_einsum


def _pad(x: te.Tensor, pads, value: float = 0.0) -> te.Tensor:
    if not any(lo or hi for lo, hi in pads):
        return x
    return topi.nn.pad(x, [lo for lo, _ in pads], [hi for _, hi in pads], pad_value=value, name="pad")


def _window(x: te.Tensor, axes, kernel, stride, dilation) -> te.Tensor:
    ndim = len(x.shape)
    axes = [a % ndim for a in axes]
    out_shape = list(x.shape)
    for a, k, s, d in zip(axes, kernel, stride, dilation):
        out_shape[a] = (int(x.shape[a]) - d * (k - 1) - 1) // s + 1
    out_shape += list(kernel)

    def index(*idx):
        src = list(idx[:ndim])
        for j, (a, s, d) in enumerate(zip(axes, stride, dilation)):
            src[a] = idx[a] * s + idx[ndim + j] * d
        return x[tuple(src)]

    return te.compute(out_shape, index, name="window")


def _runs(values: Sequence[int]) -> list[tuple[int, int, int]]:
    """[(start, end, value)] for maximal runs of equal consecutive values."""
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((start, i, int(values[start])))
            start = i
    return runs


def _per_channel(c: tirx.PrimExpr, values: Sequence[int]) -> tirx.PrimExpr:
    """A piecewise-constant function of the channel index, as a chain of selects over runs
    (the shift rule assigns offsets in contiguous channel groups, so the chain is short)."""
    runs = _runs(values)
    expr = tirx.const(runs[-1][2], "int32")
    for start, end, v in reversed(runs[:-1]):
        expr = tirx.Select(c < end, tirx.const(v, "int32"), expr)
    return expr


def _shift(x: te.Tensor, channel_axis: int, axes, offsets) -> te.Tensor:
    ndim = len(x.shape)
    ch = channel_axis % ndim
    axes = [a % ndim for a in axes]

    def index(*idx):
        src, inside = list(idx), []
        for j, a in enumerate(axes):
            src[a] = idx[a] + _per_channel(idx[ch], [off[j] for off in offsets])
            inside += [src[a] >= 0, src[a] < x.shape[a]]
        # Clamp the address so that the load stays in bounds even where it is masked.
        safe = list(src)
        for a in axes:
            safe[a] = tirx.max(tirx.min(src[a], x.shape[a] - 1), 0)
        return tirx.if_then_else(tirx.all(*inside), x[tuple(safe)], tirx.const(0.0, x.dtype))

    return te.compute(x.shape, index, name="shift")


def _contract(a: te.Tensor, b: te.Tensor, spec: str) -> te.Tensor:
    (la, lb), out = parse_einsum(spec)
    sizes = {**dict(zip(la, (int(d) for d in a.shape))), **dict(zip(lb, (int(d) for d in b.shape)))}
    reduced = [ax for ax in dict.fromkeys(la + lb) if ax not in out]
    raxes = {ax: te.reduce_axis((0, sizes[ax]), name=f"r{ax}") for ax in reduced}

    def body(*idx):
        env = dict(zip(out, idx))
        env.update(raxes)
        prod = a[tuple(env[ax] for ax in la)] * b[tuple(env[ax] for ax in lb)]
        return te.sum(prod, axis=list(raxes.values())) if raxes else prod

    return te.compute([sizes[ax] for ax in out], body, name="contract")


def _reshape(x: te.Tensor, shape) -> te.Tensor:
    # Inserting or dropping unit axes is an index renaming; topi.reshape would go through a
    # flat index with div/mod (e.g. bias[(i + j + k) % O]), which is slower and has tripped
    # LLVM's SLP vectorizer ("Instruction does not dominate all uses") on some shapes.
    src = [int(d) for d in x.shape]
    if [d for d in src if d != 1] == [d for d in shape if d != 1]:
        src_pos = [i for i, d in enumerate(src) if d != 1]
        dst_pos = [i for i, d in enumerate(shape) if d != 1]

        def index(*idx):
            out = [0] * len(src)
            for i, j in zip(src_pos, dst_pos):
                out[i] = idx[j]
            return x[tuple(out)]

        return te.compute(list(shape), index, name="reshape")
    return topi.reshape(x, list(shape))


def _slice(x: te.Tensor, axis: int, begin: int, end: int, stride: int = 1) -> te.Tensor:
    return topi.strided_slice(x, [begin], [end], [stride], axes=[axis % len(x.shape)])


def _reduce(fn: Callable) -> Callable:
    return lambda x, axes, keepdims=False: fn(x, axis=[a % len(x.shape) for a in axes], keepdims=keepdims)


TE_OPS: dict[str, Callable[..., te.Tensor]] = {
    "pad": _pad,
    "window": _window,
    "shift": _shift,
    "contract": _contract,
    "add": topi.add,
    "sub": topi.subtract,
    "mul": topi.multiply,
    "maximum": topi.maximum,
    "abs": topi.abs,
    "neg": topi.negative,
    "reduce_sum": _reduce(topi.sum),
    "reduce_max": _reduce(topi.max),
    "reshape": _reshape,
    "transpose": lambda x, perm: topi.transpose(x, list(perm)),
    "concat": lambda *xs, axis: topi.concatenate(list(xs), axis=axis),
    "slice": _slice,
}


def to_te_tensors(program: OpProgram) -> tuple[list[te.Tensor], te.Tensor]:
    """Placeholders (inputs then weights) and the output tensor of `program`."""
    env: dict[str, te.Tensor] = {}
    for name, shape in {**program.inputs, **program.weights}.items():
        env[name] = te.placeholder(shape, "float32", name=name)
    args = list(env.values())
    for node in program.nodes:
        env[node.name] = _emit(node, [env[i] for i in node.inputs])
    out = env[program.output]
    if out.op in [t.op for t in args]:  # an identity program: a PrimFunc must still write its output
        out = te.compute(out.shape, lambda *i: out(*i), name="copy")
    return args, out


def _emit(node: Node, args: list[te.Tensor]) -> te.Tensor:
    return TE_OPS[node.op](*args, **node.attr)


def to_te(program: OpProgram) -> tirx.PrimFunc:
    """The TensorIR PrimFunc of `program`, taking (inputs..., weights..., output)."""
    args, out = to_te_tensors(program)
    return te.create_prim_func(args + [out]).with_attr("global_symbol", "main")


#: LLVM flags for every CPU target we build: TVM's bundled LLVM miscompiles some small
#: loop nests in its SLP vectorizer ("Instruction does not dominate all uses", e.g. a 1x1
#: conv with bias on a 2x5 image).  TVM vectorises explicitly through the schedule, so
#: LLVM's own straight-line vectorizer is not what makes tuned code fast.
LLVM_CL_OPT = ("-vectorize-slp=false",)


def default_target() -> tvm.target.Target:
    """The host CPU, as MetaSchedule wants it (an llvm target with num-cores)."""
    import os

    return tvm.target.Target({"kind": "llvm", "num-cores": os.cpu_count() or 1, "cl-opt": list(LLVM_CL_OPT)})


class CompiledProgram:
    """`program` compiled with `tvm.compile` for the host; call it with numpy arrays."""

    def __init__(self, program: OpProgram, target: tvm.target.Target | None = None,
                 func: tirx.PrimFunc | None = None):
        self.program = program
        self.target = target or default_target()
        self.lib = tvm.compile(tvm.IRModule({"main": func or to_te(program)}), target=self.target)

    def __call__(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                 weights: Mapping[str, np.ndarray]) -> np.ndarray:
        p = self.program
        if not isinstance(inputs, Mapping):
            inputs = dict(zip(p.inputs, inputs))
        missing = [n for n in list(p.inputs) + list(p.weights) if n not in {**inputs, **weights}]
        if missing:
            raise ValueError(f"program '{p.name}' needs values for {missing}")
        dev = tvm.cpu()
        args = [tvm.runtime.tensor(np.ascontiguousarray(v, dtype="float32"), dev)
                for v in [inputs[n] for n in p.inputs] + [weights[n] for n in p.weights]]
        out = tvm.runtime.tensor(np.zeros(p.output_shape, "float32"), dev)
        self.lib["main"](*args, out)
        return out.numpy()


def compile_program(program: OpProgram, target: tvm.target.Target | None = None) -> CompiledProgram:
    """Compile `program`'s TensorIR (untuned) so it can be run from numpy."""
    return CompiledProgram(program, target)
