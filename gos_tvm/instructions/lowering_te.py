"""Lowering of an `OpProgram` to a TVM tensor expression and a TensorIR `PrimFunc`.

Each instruction becomes one `te.compute` (or the TOPI operator that already is
one).  Index instructions (pad, window, shift, reshape, ...) are injective, so
MetaSchedule's auto-inline folds them into the contraction that reads them: the
window is never materialised in a tuned kernel.

The PrimFunc takes `(inputs..., weights..., output)` in the program's declaration
order, the calling convention of Relax's `call_tir`.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import tvm
from tvm import te, tirx

from ..targets import LLVM_CL_OPT, cpu_target  # noqa: F401 - LLVM_CL_OPT re-exported
from .program import Node, OpProgram, parse_einsum


# Every instruction is written as an index function over its inputs' index functions:
# `Value = (shape, read)` with `read(*idx) -> PrimExpr`.  Index instructions compose their
# functions without creating a block; arithmetic instructions (contraction, element-wise,
# reduction) are materialised as `te.compute` blocks.
#
# Why not one block per instruction: MetaSchedule's multi-level tiling fuses a consumer of a
# contraction into the contraction's loop nest (reverse-compute-at), and for a *pad* block
# that consumer covers only the interior of its output, leaving the border unwritten -- seen
# here as NaNs and 30% errors from tuned records of a channel-bottleneck candidate (pad
# between two contractions in one PrimFunc).  Folding index instructions into the block that
# reads them leaves no such consumer.  Index instructions applied directly to the program's
# inputs or weights are still materialised (a pad of the input is the classic conv prologue
# that MetaSchedule computes at its consumer, correctly and fast).


# The integer type of every loop, reduction axis and buffer shape of the function being lowered.
# One type throughout: a PrimFunc whose int64 buffers (Relax's) are read by int32 loops builds
# untuned, but some of the schedules MetaSchedule samples for it then fail to build in TVM 0.27
# ("mismatched types. int32 vs. int64" in the simplifier) -- on NHWC vgg-style every sampled
# schedule of one candidate's task failed, so the candidate could not be priced.
_INDEX_DTYPE: ContextVar[str] = ContextVar("gos_tvm_index_dtype", default="int32")


@contextmanager
def _index_dtype(dtype: str) -> Iterator[None]:
    token = _INDEX_DTYPE.set(dtype)
    try:
        yield
    finally:
        _INDEX_DTYPE.reset(token)


def _dim(d: int) -> int | tirx.IntImm:
    """An extent in the index type being lowered (a Python int is TE's int32)."""
    return tirx.IntImm("int64", int(d)) if _INDEX_DTYPE.get() == "int64" else int(d)


def _reduce_axis(extent: int, name: str) -> tvm.tirx.IterVar:
    return te.reduce_axis((_dim(0), _dim(extent)), name=name)


class Value:
    """A tensor as an index function: `read(*idx)` is its element at `idx`."""

    def __init__(self, shape: Sequence[int], read: Callable[..., tirx.PrimExpr], dtype: str = "float32",
                 tensor: te.Tensor | None = None, external: bool = False):
        self.shape = tuple(int(d) for d in shape)
        self.read, self.dtype, self.tensor, self.external = read, dtype, tensor, external

    @staticmethod
    def of(tensor: te.Tensor, external: bool) -> "Value":
        return Value(tensor.shape, lambda *i: tensor[tuple(i)], tensor.dtype, tensor, external)


def _clamp(i: tirx.PrimExpr, size: int) -> tirx.PrimExpr:
    return tirx.max(tirx.min(i, size - 1), 0)


def _guard(x: Value, src: list, inside: list, fill: float) -> tirx.PrimExpr:
    """x[src] where all of `inside` hold, else `fill`.  A select of a clamped, always in-bounds
    read rather than if_then_else, which MetaSchedule's AutoInline refuses to inline on CPU."""
    if not inside:
        return x.read(*src)
    return tirx.Select(tirx.all(*inside), x.read(*src), tirx.const(fill, x.dtype))


def _pad(x: Value, pads, value: float = 0.0) -> Value:
    shape = [d + lo + hi for d, (lo, hi) in zip(x.shape, pads)]

    def read(*idx):
        src, inside = [], []
        for i, d, (lo, hi) in zip(idx, x.shape, pads):
            if lo or hi:
                inside += [i >= lo, i < d + lo]
                src.append(_clamp(i - lo, d))
            else:
                src.append(i)
        return _guard(x, src, inside, value)

    return Value(shape, read)


def _window(x: Value, axes, kernel, stride, dilation) -> Value:
    ndim = len(x.shape)
    axes = [a % ndim for a in axes]
    shape = list(x.shape)
    for a, k, s, d in zip(axes, kernel, stride, dilation):
        shape[a] = (x.shape[a] - d * (k - 1) - 1) // s + 1

    def read(*idx):
        src = list(idx[:ndim])
        for j, (a, s, d) in enumerate(zip(axes, stride, dilation)):
            src[a] = idx[a] * s + idx[ndim + j] * d
        return x.read(*src)

    return Value(shape + list(kernel), read)


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
    dtype = _INDEX_DTYPE.get()
    expr = tirx.const(runs[-1][2], dtype)
    for start, end, v in reversed(runs[:-1]):
        expr = tirx.Select(c < end, tirx.const(v, dtype), expr)
    return expr


def _shift(x: Value, channel_axis: int, axes, offsets) -> Value:
    ndim = len(x.shape)
    ch = channel_axis % ndim
    axes = [a % ndim for a in axes]

    def read(*idx):
        src, inside = list(idx), []
        for j, a in enumerate(axes):
            pos = idx[a] + _per_channel(idx[ch], [off[j] for off in offsets])
            inside += [pos >= 0, pos < x.shape[a]]
            src[a] = _clamp(pos, x.shape[a])
        return _guard(x, src, inside, 0.0)

    return Value(x.shape, read)


def _reshape(x: Value, shape) -> Value:
    shape = [int(d) for d in shape]
    if [d for d in x.shape if d != 1] == [d for d in shape if d != 1]:
        # Inserting or dropping unit axes is a renaming of indices, no div/mod.
        src_pos = [i for i, d in enumerate(x.shape) if d != 1]
        dst_pos = [i for i, d in enumerate(shape) if d != 1]

        def read(*idx):
            src = [0] * len(x.shape)
            for i, j in zip(src_pos, dst_pos):
                src[i] = idx[j]
            return x.read(*src)

        return Value(shape, read)

    def read_flat(*idx):
        flat = 0
        for i, d in zip(idx, shape):
            flat = flat * d + i
        src = []
        for d in reversed(x.shape):
            src.append(tirx.floormod(flat, d))
            flat = tirx.floordiv(flat, d)
        return x.read(*reversed(src))

    return Value(shape, read_flat)


def _transpose(x: Value, perm) -> Value:
    def read(*idx):
        src = [0] * len(perm)
        for out_axis, in_axis in enumerate(perm):
            src[in_axis] = idx[out_axis]
        return x.read(*src)

    return Value([x.shape[p] for p in perm], read)


def _slice(x: Value, axis: int, begin: int, end: int, stride: int = 1) -> Value:
    a = axis % len(x.shape)
    shape = list(x.shape)
    shape[a] = len(range(begin, end, stride))

    def read(*idx):
        src = list(idx)
        src[a] = begin + idx[a] * stride
        return x.read(*src)

    return Value(shape, read)


def _concat(*xs: Value, axis: int) -> Value:
    a = axis % len(xs[0].shape)
    shape = list(xs[0].shape)
    shape[a] = sum(x.shape[a] for x in xs)
    starts = [sum(x.shape[a] for x in xs[:k]) for k in range(len(xs))]

    def read(*idx):
        def piece(k):
            src = list(idx)
            src[a] = _clamp(idx[a] - starts[k], xs[k].shape[a])
            return xs[k].read(*src)

        expr = piece(len(xs) - 1)
        for k in reversed(range(len(xs) - 1)):
            expr = tirx.Select(idx[a] < starts[k + 1], piece(k), expr)
        return expr

    return Value(shape, read)


def _contract(a: Value, b: Value, spec: str) -> Value:
    (la, lb), out = parse_einsum(spec)
    sizes = {**dict(zip(la, a.shape)), **dict(zip(lb, b.shape))}
    reduced = [ax for ax in dict.fromkeys(la + lb) if ax not in out]
    raxes = {ax: _reduce_axis(sizes[ax], f"r{ax}") for ax in reduced}

    def body(*idx):
        env = dict(zip(out, idx))
        env.update(raxes)
        prod = a.read(*[env[ax] for ax in la]) * b.read(*[env[ax] for ax in lb])
        return te.sum(prod, axis=list(raxes.values())) if raxes else prod

    return _materialise([sizes[ax] for ax in out], body, "contract")


def _broadcast_read(x: Value, out_shape: Sequence[int]) -> Callable[..., tirx.PrimExpr]:
    lead = len(out_shape) - len(x.shape)
    return lambda *idx: x.read(*[0 if d == 1 else idx[lead + i] for i, d in enumerate(x.shape)])


def _binary(fn: Callable[[tirx.PrimExpr, tirx.PrimExpr], tirx.PrimExpr], name: str) -> Callable[..., Value]:
    def op(a: Value, b: Value) -> Value:
        shape = [max(da, db) for da, db in zip((1,) * (max(len(a.shape), len(b.shape)) - len(a.shape)) + a.shape,
                                                (1,) * (max(len(a.shape), len(b.shape)) - len(b.shape)) + b.shape)]
        ra, rb = _broadcast_read(a, shape), _broadcast_read(b, shape)
        return _materialise(shape, lambda *i: fn(ra(*i), rb(*i)), name)

    return op


def _unary(fn: Callable[[tirx.PrimExpr], tirx.PrimExpr], name: str) -> Callable[..., Value]:
    return lambda x: _materialise(x.shape, lambda *i: fn(x.read(*i)), name)


def _reduce(combine: Callable, name: str) -> Callable[..., Value]:
    def op(x: Value, axes, keepdims: bool = False) -> Value:
        axes = sorted({a % len(x.shape) for a in axes})
        raxes = {a: _reduce_axis(x.shape[a], f"r{a}") for a in axes}
        kept = [i for i in range(len(x.shape)) if i not in raxes]
        shape = [1 if i in raxes else d for i, d in enumerate(x.shape)] if keepdims else [x.shape[i] for i in kept]

        def body(*idx):
            src = list(idx) if keepdims else [None] * len(x.shape)
            if not keepdims:
                for i, v in zip(kept, idx):
                    src[i] = v
            for a, r in raxes.items():
                src[a] = r
            return combine(x.read(*src), axis=list(raxes.values()))

        return _materialise(shape, body, name)

    return op


def _materialise(shape: Sequence[int], body: Callable[..., tirx.PrimExpr], name: str) -> Value:
    return Value.of(te.compute([_dim(d) for d in shape], body, name=name), external=False)


TE_OPS: dict[str, Callable[..., Value]] = {
    "pad": _pad,
    "window": _window,
    "shift": _shift,
    "contract": _contract,
    "add": _binary(lambda a, b: a + b, "add"),
    "sub": _binary(lambda a, b: a - b, "sub"),
    "mul": _binary(lambda a, b: a * b, "mul"),
    "maximum": _binary(tirx.max, "maximum"),
    "abs": _unary(tirx.abs, "abs"),
    "neg": _unary(lambda a: -a, "neg"),
    "reduce_sum": _reduce(te.sum, "reduce_sum"),
    "reduce_max": _reduce(te.max, "reduce_max"),
    "reshape": _reshape,
    "transpose": _transpose,
    "concat": _concat,
    "slice": _slice,
}

#: Instructions that only move data: folded into their consumer unless they read only
#: the program's inputs and weights.
INDEX_OPS = frozenset({"pad", "window", "shift", "reshape", "transpose", "concat", "slice"})


def to_te_tensors(program: OpProgram, index_dtype: str = "int32") -> tuple[list[te.Tensor], te.Tensor]:
    """Placeholders (inputs then weights) and the output tensor of `program`.

    `index_dtype` is the type of the buffer shapes ('int64' inside Relax modules, whose
    legalized PrimFuncs use int64 shapes, so that FuseTIR can fuse across them).
    """
    with _index_dtype(index_dtype):
        env: dict[str, Value] = {}
        for name, shape in {**program.inputs, **program.weights}.items():
            env[name] = Value.of(te.placeholder([_dim(d) for d in shape], "float32", name=name), external=True)
        args = [v.tensor for v in env.values()]
        for node in program.nodes:
            ins = [env[i] for i in node.inputs]
            value = TE_OPS[node.op](*ins, **node.attr)
            if node.op in INDEX_OPS:
                value.external = all(v.external for v in ins)
                if value.external:  # e.g. the input's padding: a block MetaSchedule handles well
                    value = Value.of(te.compute([_dim(d) for d in value.shape], value.read, name=node.op), True)
            env[node.name] = value
        out = env[program.output]
        wrong_index_type = any(str(d.ty) != index_dtype for d in out.tensor.shape) if out.tensor is not None else True
        if out.tensor is None or out.tensor.op in [t.op for t in args] or wrong_index_type:
            read = out.read
            out = Value.of(te.compute([_dim(d) for d in out.shape], read, name="output"), False)
        return args, out.tensor


def to_te(program: OpProgram) -> tirx.PrimFunc:
    """The TensorIR PrimFunc of `program`, taking (inputs..., weights..., output)."""
    args, out = to_te_tensors(program)
    return te.create_prim_func(args + [out]).with_attr("global_symbol", "main")


def default_target() -> tvm.target.Target:
    """The host CPU, as MetaSchedule wants it (an llvm target with num-cores; `gos_tvm.targets`)."""
    return cpu_target()


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
