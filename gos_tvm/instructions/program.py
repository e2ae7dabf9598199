"""The primitive-instruction IR: instructions, their shape rules, and `OpProgram`.

An `OpProgram` is a straight-line DAG of primitive instructions over float32 tensors
with named inputs, named weight tensors and one output.  Every instruction is pure
index arithmetic (pad, window, shift, reshape, transpose, concat, slice), point-wise
arithmetic, a reduction, or a contraction (an einsum over named axes), so the same
program can be lowered both to a trainable torch module and to a TVM tensor
expression (see `lowering_torch` and `lowering_te`).

Shapes are static.  All shape rules live here, in one table, so both lowerings see the
same shapes and every inconsistency is reported as a `ValueError` that names the node,
its instruction and the problem.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

Shape = tuple[int, ...]

#: Point-wise binary instructions (numpy broadcasting) and unary instructions.
BINARY_OPS = ("add", "sub", "mul", "maximum")
UNARY_OPS = ("abs", "neg")
REDUCE_OPS = ("reduce_sum", "reduce_max")


def _freeze(value: Any) -> Any:
    """Attributes are stored as nested tuples so nodes hash and compare by value."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int) or hasattr(value, "__index__"):
        return int(value)
    raise TypeError(f"unsupported attribute value {value!r} of type {type(value).__name__}")


@dataclass(frozen=True)
class Node:
    """One instruction: `name = op(inputs..., **attrs)`."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def make(name: str, op: str, inputs: Sequence[str], **attrs: Any) -> "Node":
        return Node(name, op, tuple(inputs), tuple(sorted((k, _freeze(v)) for k, v in attrs.items())))

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)


class _Checker:
    """Raises ValueErrors that name the instruction and the node."""

    def __init__(self, node: Node):
        self.node = node

    def fail(self, problem: str) -> None:
        raise ValueError(f"instruction '{self.node.op}' (node '{self.node.name}'): {problem}")

    def require(self, condition: bool, problem: str) -> None:
        if not condition:
            self.fail(problem)


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def _norm_axis(c: _Checker, axis: int, ndim: int, what: str = "axis") -> int:
    c.require(-ndim <= axis < ndim, f"{what} {axis} out of range for a {ndim}-d tensor")
    return axis % ndim


# --- shape rules: (checker, input shapes, attrs) -> output shape --------------------------


def _shape_pad(c: _Checker, shapes: list[Shape], pads: Sequence[Sequence[int]], value: float = 0.0) -> Shape:
    (x,) = shapes
    c.require(len(pads) == len(x), f"pads has {len(pads)} (lo, hi) pairs for a {len(x)}-d input {x}")
    for axis, pair in enumerate(pads):
        c.require(len(pair) == 2, f"pads[{axis}] must be a (lo, hi) pair, got {pair}")
        c.require(pair[0] >= 0 and pair[1] >= 0, f"negative padding {tuple(pair)} on axis {axis}")
    return tuple(d + lo + hi for d, (lo, hi) in zip(x, pads))


def window_out_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Number of windows along one axis (no padding; pad first)."""
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def _shape_window(c: _Checker, shapes: list[Shape], axes: Sequence[int], kernel: Sequence[int],
                  stride: Sequence[int], dilation: Sequence[int]) -> Shape:
    (x,) = shapes
    c.require(len(axes) == len(kernel) == len(stride) == len(dilation) >= 1,
              f"axes, kernel, stride and dilation need one entry per windowed axis, got "
              f"{tuple(axes)}, {tuple(kernel)}, {tuple(stride)}, {tuple(dilation)}")
    axes = [_norm_axis(c, a, len(x)) for a in axes]
    c.require(len(set(axes)) == len(axes), f"repeated axis in {tuple(axes)}")
    out = list(x)
    for a, k, s, d in zip(axes, kernel, stride, dilation):
        c.require(k >= 1, f"kernel size {k} < 1 on axis {a}")
        c.require(s >= 1, f"stride {s} < 1 on axis {a}")
        c.require(d >= 1, f"dilation {d} < 1 on axis {a}")
        n = window_out_size(x[a], k, s, d)
        c.require(n >= 1, f"window of {k} (dilation {d}) does not fit axis {a} of size {x[a]}")
        out[a] = n
    return tuple(out) + tuple(kernel)


def _shape_shift(c: _Checker, shapes: list[Shape], channel_axis: int, axes: Sequence[int],
                 offsets: Sequence[Sequence[int]]) -> Shape:
    (x,) = shapes
    ch = _norm_axis(c, channel_axis, len(x), "channel_axis")
    axes = [_norm_axis(c, a, len(x)) for a in axes]
    c.require(ch not in axes, "the channel axis cannot also be a shifted axis")
    c.require(len(offsets) == x[ch], f"{len(offsets)} offsets for {x[ch]} channels")
    for i, off in enumerate(offsets):
        c.require(len(off) == len(axes), f"offset {i} is {tuple(off)}, needs one entry per axis {tuple(axes)}")
    return x


def parse_einsum(spec: str) -> tuple[list[str], str]:
    """'ab,bc->ac' -> (['ab', 'bc'], 'ac')."""
    if "->" not in spec:
        raise ValueError(f"contraction spec {spec!r} needs an explicit '->' output")
    lhs, out = spec.replace(" ", "").split("->")
    return lhs.split(","), out


def _shape_contract(c: _Checker, shapes: list[Shape], spec: str) -> Shape:
    try:
        operands, out = parse_einsum(spec)
    except ValueError as err:
        c.fail(str(err))
    c.require(len(operands) == len(shapes) == 2,
              f"a contraction takes exactly two operands; spec {spec!r} has {len(operands)}, "
              f"node has {len(shapes)} inputs")
    sizes: dict[str, int] = {}
    for i, (letters, shape) in enumerate(zip(operands, shapes)):
        c.require(letters.isalpha(), f"axis names must be letters, got {letters!r}")
        c.require(len(letters) == len(shape),
                  f"operand {i} is named {letters!r} ({len(letters)} axes) but has shape {shape}")
        c.require(len(set(letters)) == len(letters), f"operand {i} repeats an axis in {letters!r}")
        for axis, size in zip(letters, shape):
            c.require(sizes.setdefault(axis, size) == size,
                      f"axis '{axis}' has size {sizes[axis]} in one operand and {size} in operand {i}")
    for axis in out:
        c.require(axis in sizes, f"unknown axis '{axis}' in output {out!r} of spec {spec!r}")
    c.require(len(set(out)) == len(out), f"output {out!r} repeats an axis")
    return tuple(sizes[a] for a in out)


def broadcast_shapes(c: _Checker, a: Shape, b: Shape) -> Shape:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        c.require(da == db or da == 1 or db == 1, f"shapes {a} and {b} do not broadcast")
        out.append(max(da, db))
    return tuple(reversed(out))


def _shape_binary(c: _Checker, shapes: list[Shape]) -> Shape:
    c.require(len(shapes) == 2, f"takes two inputs, got {len(shapes)}")
    return broadcast_shapes(c, shapes[0], shapes[1])


def _shape_unary(c: _Checker, shapes: list[Shape]) -> Shape:
    c.require(len(shapes) == 1, f"takes one input, got {len(shapes)}")
    return shapes[0]


def _shape_reduce(c: _Checker, shapes: list[Shape], axes: Sequence[int], keepdims: bool = False) -> Shape:
    (x,) = shapes
    axes = {_norm_axis(c, a, len(x)) for a in axes}
    c.require(len(axes) >= 1, "needs at least one axis to reduce")
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in axes)


def _shape_reshape(c: _Checker, shapes: list[Shape], shape: Sequence[int]) -> Shape:
    (x,) = shapes
    c.require(all(d >= 1 for d in shape), f"target shape {tuple(shape)} has a non-positive size")
    c.require(_prod(shape) == _prod(x), f"cannot reshape {x} ({_prod(x)} elements) to "
                                        f"{tuple(shape)} ({_prod(shape)} elements)")
    return tuple(shape)


def _shape_transpose(c: _Checker, shapes: list[Shape], perm: Sequence[int]) -> Shape:
    (x,) = shapes
    c.require(sorted(perm) == list(range(len(x))), f"perm {tuple(perm)} is not a permutation of {len(x)} axes")
    return tuple(x[p] for p in perm)


def _shape_concat(c: _Checker, shapes: list[Shape], axis: int) -> Shape:
    c.require(len(shapes) >= 1, "needs at least one input")
    a = _norm_axis(c, axis, len(shapes[0]))
    for s in shapes[1:]:
        c.require(len(s) == len(shapes[0]) and all(d == e for i, (d, e) in enumerate(zip(s, shapes[0])) if i != a),
                  f"inputs {shapes} differ outside the concatenation axis {a}")
    out = list(shapes[0])
    out[a] = sum(s[a] for s in shapes)
    return tuple(out)


def _shape_slice(c: _Checker, shapes: list[Shape], axis: int, begin: int, end: int, stride: int = 1) -> Shape:
    (x,) = shapes
    a = _norm_axis(c, axis, len(x))
    c.require(stride >= 1, f"stride {stride} < 1")
    c.require(0 <= begin < end <= x[a], f"slice [{begin}:{end}] out of range for axis {a} of size {x[a]}")
    out = list(x)
    out[a] = len(range(begin, end, stride))
    return tuple(out)


@dataclass(frozen=True)
class Instruction:
    """A primitive instruction: its shape rule, its FLOP count and what it does."""

    name: str
    arity: int | None  # None: variadic
    infer: Callable[..., Shape]
    doc: str
    flops: Callable[[list[Shape], Shape, dict], int] = lambda ins, out, attrs: 0


def _contract_flops(ins: list[Shape], out: Shape, attrs: dict) -> int:
    operands, _ = parse_einsum(attrs["spec"])
    sizes = {a: d for letters, shape in zip(operands, ins) for a, d in zip(letters, shape)}
    return 2 * _prod(sizes.values())  # one multiply and one add per point of the iteration space


INSTRUCTIONS: dict[str, Instruction] = {
    "pad": Instruction("pad", 1, _shape_pad,
                       "pad(x; pads=((lo, hi), ...), value=0): constant padding on every axis"),
    "window": Instruction("window", 1, _shape_window,
                          "window(x; axes, kernel, stride, dilation): sliding windows; axis a becomes the "
                          "window position, one new trailing axis per window offset: "
                          "y[..., o, ..., k] = x[..., o*stride + k*dilation, ...]"),
    "shift": Instruction("shift", 1, _shape_shift,
                         "shift(x; channel_axis, axes, offsets): y[c, p] = x[c, p + offsets[c]], zero outside"),
    "contract": Instruction("contract", 2, _shape_contract,
                            "contract(a, b; spec): multiply-accumulate over named axes (einsum 'ab,bc->ac')",
                            _contract_flops),
    **{op: Instruction(op, 2, _shape_binary, f"{op}(a, b): element-wise with numpy broadcasting",
                       lambda ins, out, attrs: _prod(out)) for op in BINARY_OPS},
    **{op: Instruction(op, 1, _shape_unary, f"{op}(x): element-wise",
                       lambda ins, out, attrs: _prod(out)) for op in UNARY_OPS},
    **{op: Instruction(op, 1, _shape_reduce, f"{op}(x; axes, keepdims=False): reduction",
                       lambda ins, out, attrs: _prod(ins[0])) for op in REDUCE_OPS},
    "reshape": Instruction("reshape", 1, _shape_reshape, "reshape(x; shape): row-major reshape"),
    "transpose": Instruction("transpose", 1, _shape_transpose, "transpose(x; perm): y.shape[i] = x.shape[perm[i]]"),
    "concat": Instruction("concat", None, _shape_concat, "concat(xs...; axis): concatenation"),
    "slice": Instruction("slice", 1, _shape_slice, "slice(x; axis, begin, end, stride=1): x[begin:end:stride]"),
}


def _check_node(node: Node, in_shapes: list[Shape]) -> Shape:
    c = _Checker(node)
    inst = INSTRUCTIONS.get(node.op)
    if inst is None:
        raise ValueError(f"node '{node.name}': unknown instruction '{node.op}'; "
                         f"known: {', '.join(sorted(INSTRUCTIONS))}")
    if inst.arity is not None:
        c.require(len(in_shapes) == inst.arity, f"takes {inst.arity} input(s), got {len(in_shapes)}")
    try:
        return tuple(int(d) for d in inst.infer(c, in_shapes, **node.attr))
    except TypeError as err:  # wrong or missing attribute names
        c.fail(f"bad attributes {node.attr}: {err}")
        raise


@dataclass(frozen=True)
class OpProgram:
    """A DAG of primitive instructions with named inputs, named weights and one output.

    `inputs` and `weights` map names to shapes (float32); `nodes` are in topological
    order; `output` names the node whose value the program returns.  Construction runs
    shape inference and raises `ValueError` on any inconsistency.
    """

    name: str
    inputs: Mapping[str, Shape]
    weights: Mapping[str, Shape]
    nodes: tuple[Node, ...]
    output: str
    shapes: Mapping[str, Shape] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", {k: tuple(int(d) for d in v) for k, v in self.inputs.items()})
        object.__setattr__(self, "weights", {k: tuple(int(d) for d in v) for k, v in self.weights.items()})
        object.__setattr__(self, "nodes", tuple(self.nodes))
        shapes: dict[str, Shape] = {}
        for kind, table in (("input", self.inputs), ("weight", self.weights)):
            for name, shape in table.items():
                if name in shapes:
                    raise ValueError(f"program '{self.name}': name '{name}' is declared twice")
                if not shape or any(d < 1 for d in shape):
                    raise ValueError(f"program '{self.name}': {kind} '{name}' has invalid shape {shape}")
                shapes[name] = shape
        for node in self.nodes:
            if node.name in shapes:
                raise ValueError(f"program '{self.name}': node name '{node.name}' is already defined")
            missing = [i for i in node.inputs if i not in shapes]
            if missing:
                raise ValueError(f"instruction '{node.op}' (node '{node.name}'): undefined input(s) {missing} "
                                 "(nodes must come after the values they use)")
            shapes[node.name] = _check_node(node, [shapes[i] for i in node.inputs])
        if self.output not in shapes:
            raise ValueError(f"program '{self.name}': output '{self.output}' is not defined")
        object.__setattr__(self, "shapes", shapes)

    # --- derived facts ---------------------------------------------------------------

    @property
    def output_shape(self) -> Shape:
        return self.shapes[self.output]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def flops(self) -> int:
        """Floating-point operations (a multiply-accumulate counts 2)."""
        return sum(INSTRUCTIONS[n.op].flops([self.shapes[i] for i in n.inputs], self.shapes[n.name], n.attr)
                   for n in self.nodes)

    @property
    def params(self) -> int:
        """Number of weight elements."""
        return sum(_prod(s) for s in self.weights.values())

    @property
    def bytes(self) -> int:
        """Compulsory memory traffic in bytes: read inputs and weights once, write the output once."""
        return 4 * (sum(_prod(s) for s in self.inputs.values()) + self.params + _prod(self.output_shape))

    def structure(self) -> dict:
        """The program with every name replaced by its position: equal for equal computations."""
        canon = {n: f"in{i}" for i, n in enumerate(self.inputs)}
        canon.update({n: f"w{i}" for i, n in enumerate(self.weights)})
        canon.update({n.name: f"v{i}" for i, n in enumerate(self.nodes)})
        return {
            "inputs": [list(s) for s in self.inputs.values()],
            "weights": [list(s) for s in self.weights.values()],
            "nodes": [[n.op, [canon[i] for i in n.inputs], jsonable(n.attr)] for n in self.nodes],
            "output": canon[self.output],
        }

    @property
    def structural_hash(self) -> str:
        """sha256 of the canonical structure (names of values and the program do not matter)."""
        blob = json.dumps(self.structure(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # --- serialisation ---------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "name": self.name,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "weights": {k: list(v) for k, v in self.weights.items()},
            "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "attrs": jsonable(n.attr)}
                      for n in self.nodes],
            "output": self.output,
        }, indent=1)

    @staticmethod
    def from_json(text: str | dict) -> "OpProgram":
        d = json.loads(text) if isinstance(text, str) else text
        nodes = [Node.make(n["name"], n["op"], n["inputs"], **n["attrs"]) for n in d["nodes"]]
        return OpProgram(d["name"], d["inputs"], d["weights"], nodes, d["output"])

    def __str__(self) -> str:
        sig = ", ".join(f"{k}: f32{list(v)}" for k, v in self.inputs.items())
        ws = ", ".join(f"{k}: f32{list(v)}" for k, v in self.weights.items())
        lines = [f"program {self.name}({sig}) weights({ws}) {{"]
        for n in self.nodes:
            attrs = "".join(f", {k}={_fmt(v)}" for k, v in n.attrs)
            lines.append(f"  {n.name}: f32{list(self.shapes[n.name])} = {n.op}({', '.join(n.inputs)}{attrs})")
        lines.append(f"  return {self.output}")
        lines.append(f"}}  # {self.flops} FLOPs, {self.params} params, {self.bytes} bytes")
        return "\n".join(lines)


def jsonable(v: Any) -> Any:
    """`v` with tuples as lists, numpy scalars as Python numbers and dict keys as strings (for JSON)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


class ProgramBuilder:
    """Builds an `OpProgram` one instruction at a time; every method returns the new value's name."""

    def __init__(self, name: str):
        self.name = name
        self._inputs: dict[str, Shape] = {}
        self._weights: dict[str, Shape] = {}
        self._nodes: list[Node] = []
        self._count: dict[str, int] = {}

    def input(self, name: str, shape: Sequence[int]) -> str:
        self._inputs[name] = tuple(shape)
        return name

    def weight(self, name: str, shape: Sequence[int]) -> str:
        self._weights[name] = tuple(shape)
        return name

    def emit(self, op: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        if name is None:
            i = self._count[op] = self._count.get(op, -1) + 1
            name = f"{op}{i}"
        self._nodes.append(Node.make(name, op, inputs, **attrs))
        return name

    def __getattr__(self, op: str) -> Callable[..., str]:
        if op in INSTRUCTIONS:
            return lambda *inputs, **attrs: self.emit(op, *inputs, **attrs)
        raise AttributeError(op)

    def shape(self, value: str) -> Shape:
        """The inferred shape of a value built so far."""
        return self.build(value).shapes[value]

    def build(self, output: str) -> OpProgram:
        return OpProgram(self.name, self._inputs, self._weights, self._nodes, output)
