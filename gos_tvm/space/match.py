"""Finding rewritable sites inside an `OpProgram`.

A *site* is a contraction node that computes a linear operator of one activation with one
weight tensor.  Two shapes of site are recognised:

* **conv** — ``contract(window(pad?(x)), W)``: an N-d convolution over ``x = (N, C, *S)``
  with kernel, stride, dilation and padding read off the pad and window nodes.  Grouped
  convolutions split the windowed channel axis into (group, channel-in-group) with a
  reshape and merge (group, out-channel-in-group) back with a reshape after the
  contraction; depthwise convolutions keep the channel axis in the output
  (``'nc..ij,cm ij->ncm..'``) and merge (channel, multiplier) with a reshape.
* **linear** — ``contract(x, W)`` with a 2-d weight that maps one axis of ``x`` (the
  channel axis) from C to O and leaves every other axis alone: dense layers (channel axis
  last) and pointwise convolutions (channel axis 1).

Matching works on the *roles* of the einsum letters (which operand and which output an
axis appears in), not on particular letters, so it recognises the library's operators and
the subgraphs the rewrite rules emit alike; that is what lets rules compose.

The weight operand may be a program weight or a chain of reshapes of one.  A site records
how to view that weight as the *effective* torch-layout weight ``(O, C/groups, *kernel)``
(``(O, C)`` for linear sites), so numeric initialisation never has to know how a
particular program stores its weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..instructions.program import Node, OpProgram, Shape, parse_einsum


@dataclass(frozen=True)
class Site:
    """One rewritable contraction of a program and the operator it computes.

    Attributes:
        kind: ``"conv"`` (windowed contraction) or ``"linear"`` (no window).
        contract: name of the contraction node.
        end: the value holding the site's result, shape `output_shape` (the contraction
            itself, or the reshape that merges its group axes).
        source: the value the site reads (before padding).
        source_shape: its shape.
        channel_axis: the axis of `source` (and of the output) that holds channels.
        spatial_axes: the windowed axes of `source` (empty for linear sites).
        kernel, stride, dilation: per spatial axis.
        pads: ``(lo, hi)`` zero padding per spatial axis.
        groups: channel groups (``in_channels`` for a depthwise convolution).
        in_channels, out_channels: C and O.
        output_shape: shape of `end`.
        weight: the program weight the contraction reads.
        weight_operand_shape: the shape of the weight operand (after its reshapes).
        weight_perm: permutes the operand's axes to the canonical order
            (``o, c, *kernel``; ``g, o, c, *kernel`` when grouped; ``c, m, *kernel`` when depthwise).
        effective_shape: the torch-layout weight shape ``(O, C/groups, *kernel)`` or ``(O, C)``.
    """

    kind: str
    contract: str
    end: str
    source: str
    source_shape: Shape
    channel_axis: int
    spatial_axes: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    groups: int
    in_channels: int
    out_channels: int
    output_shape: Shape
    weight: str
    weight_operand_shape: Shape
    weight_perm: tuple[int, ...]
    effective_shape: Shape

    # --- derived facts -----------------------------------------------------------------

    @property
    def nsp(self) -> int:
        """Number of spatial (windowed) axes."""
        return len(self.spatial_axes)

    @property
    def taps(self) -> int:
        """Kernel elements per (output, input) channel pair: prod(kernel), 1 for linear sites."""
        return math.prod(self.kernel)

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "conv" and self.groups == self.in_channels and self.groups > 1

    @property
    def is_pointwise(self) -> bool:
        """A convolution whose window is a single tap without stride or padding is a linear map."""
        return self.kind == "linear" or (self.taps == 1 and all(s == 1 for s in self.stride)
                                         and not any(lo or hi for lo, hi in self.pads))

    def describe(self) -> str:
        if self.kind == "linear":
            return (f"linear site '{self.contract}': {self.in_channels} -> {self.out_channels} channels "
                    f"on axis {self.channel_axis} of {self.source_shape}")
        g = f", groups={self.groups}" if self.groups > 1 else ""
        return (f"conv site '{self.contract}': {self.in_channels} -> {self.out_channels} channels, "
                f"kernel={self.kernel}, stride={self.stride}, dilation={self.dilation}, pads={self.pads}{g} "
                f"on {self.source_shape}")

    # --- the effective weight ----------------------------------------------------------

    def effective_weight(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        """The site's weight in torch layout, ``(O, C/groups, *kernel)`` or ``(O, C)``, as float64."""
        if self.weight not in weights:
            raise ValueError(f"no value for weight '{self.weight}' of {self.describe()}")
        w = np.asarray(weights[self.weight], dtype=np.float64)
        # Reshapes are row-major, so a chain of them equals one reshape to the operand shape.
        return w.reshape(self.weight_operand_shape).transpose(self.weight_perm).reshape(self.effective_shape)

    def stored_weight(self, effective: np.ndarray, stored_shape: Shape) -> np.ndarray:
        """Inverse of `effective_weight`: lay an effective weight out as the program stores it."""
        canon = tuple(self.weight_operand_shape[p] for p in self.weight_perm)
        inverse = np.argsort(self.weight_perm)
        w = np.asarray(effective).reshape(canon).transpose(inverse)
        return np.ascontiguousarray(w.reshape(stored_shape), dtype=np.float32)


# --- helpers over the program graph ------------------------------------------------------


def _producers(program: OpProgram) -> dict[str, Node]:
    return {n.name: n for n in program.nodes}


def _consumers(program: OpProgram, value: str) -> list[Node]:
    return [n for n in program.nodes if value in n.inputs]


def weight_source(program: OpProgram, value: str) -> str | None:
    """The program weight that `value` is (possibly through reshapes), else None."""
    nodes = _producers(program)
    while value not in program.weights:
        node = nodes.get(value)
        if node is None or node.op != "reshape":
            return None
        value = node.inputs[0]
    return value


def _strip_pad(program: OpProgram, value: str, spatial: tuple[int, ...]) -> tuple[str, tuple[tuple[int, int], ...]]:
    """(source, spatial pads) when `value` is a zero pad on spatial axes only, else (value, no pads)."""
    node = _producers(program).get(value)
    none = tuple((0, 0) for _ in spatial)
    if node is None or node.op != "pad":
        return value, none
    attrs = node.attr
    pads = attrs["pads"]
    if attrs.get("value", 0.0) != 0.0 or any(pads[a] != (0, 0) for a in range(len(pads)) if a not in spatial):
        return value, none
    return node.inputs[0], tuple(tuple(pads[a]) for a in spatial)


def _single_reshape_consumer(program: OpProgram, value: str, shape: Shape) -> str | None:
    """The reshape to `shape` that is the only consumer of `value` (group axes merged back)."""
    if value == program.output:
        return None
    users = _consumers(program, value)
    if len(users) == 1 and users[0].op == "reshape" and program.shapes[users[0].name] == tuple(shape):
        return users[0].name
    return None


# --- matching ----------------------------------------------------------------------------


def match_site(program: OpProgram, name: str) -> Site | None:
    """The site whose contraction is node `name`, or None if it is not a recognised site."""
    node = _producers(program).get(name)
    if node is None or node.op != "contract":
        return None
    (la, lb), out = parse_einsum(node.attr["spec"])
    for data, wop, ld, lw in ((node.inputs[0], node.inputs[1], la, lb), (node.inputs[1], node.inputs[0], lb, la)):
        weight = weight_source(program, wop)
        if weight is None or weight_source(program, data) is not None:
            continue
        site = (_match_conv(program, node, data, wop, weight, ld, lw, out)
                or _match_linear(program, node, data, wop, weight, ld, lw, out))
        if site is not None:
            return site
    return None


def find_sites(program: OpProgram) -> list[Site]:
    """Every recognised site of `program`, in program order."""
    sites = [match_site(program, n.name) for n in program.nodes if n.op == "contract"]
    return [s for s in sites if s is not None]


def _perm(lw: str, order: str) -> tuple[int, ...] | None:
    if sorted(lw) != sorted(order):
        return None
    return tuple(lw.index(a) for a in order)


def _match_conv(program: OpProgram, node: Node, data: str, wop: str, weight: str,
                ld: str, lw: str, out: str) -> Site | None:
    nodes = _producers(program)
    dnode = nodes.get(data)
    grouped_split = None
    if dnode is not None and dnode.op == "reshape" and nodes.get(dnode.inputs[0]) is not None \
            and nodes[dnode.inputs[0]].op == "window":
        grouped_split, dnode = dnode, nodes[dnode.inputs[0]]
    if dnode is None or dnode.op != "window":
        return None
    win_in = dnode.inputs[0]
    xshape = program.shapes[win_in]
    nsp = len(dnode.attr["axes"])
    spatial = tuple(a % len(xshape) for a in dnode.attr["axes"])
    if len(xshape) != 2 + nsp or spatial != tuple(range(2, 2 + nsp)):
        return None  # only (N, C, *spatial) layouts, windowed on every spatial axis in order
    source, pads = _strip_pad(program, win_in, spatial)
    kernel, stride, dilation = (tuple(dnode.attr[k]) for k in ("kernel", "stride", "dilation"))
    n_, c_in = xshape[0], xshape[1]
    wshape = program.shapes[dnode.name]
    positions = wshape[2:2 + nsp]
    wop_shape = program.shapes[wop]
    common = dict(contract=node.name, source=source, source_shape=program.shapes[source], channel_axis=1,
                  spatial_axes=spatial, kernel=kernel, stride=stride, dilation=dilation, pads=pads,
                  in_channels=c_in, weight=weight, weight_operand_shape=wop_shape)

    if grouped_split is None:
        n, c, pos, ker = ld[0], ld[1], ld[2:2 + nsp], ld[2 + nsp:]
        extra = [a for a in lw if a not in ld]
        if len(extra) == 1 and out == n + extra[0] + pos:  # dense conv: 'nc..ij,oc ij->no..'
            perm = _perm(lw, extra[0] + c + ker)
            if perm is None:
                return None
            o_ch = program.shapes[node.name][1]
            return Site(kind="conv", end=node.name, groups=1, out_channels=o_ch,
                        output_shape=program.shapes[node.name], weight_perm=perm,
                        effective_shape=(o_ch, c_in, *kernel), **common)
        # depthwise: the channel axis is kept ('nc..ij,cm ij->ncm..'), optionally without 'm'
        if len(extra) <= 1 and out == n + c + "".join(extra) + pos:
            perm = _perm(lw, c + "".join(extra) + ker)
            if perm is None:
                return None
            mult = program.shapes[node.name][2] if extra else 1
            out_shape = (n_, c_in * mult, *positions)
            end = node.name if not extra else _single_reshape_consumer(program, node.name, out_shape)
            if end is None:
                return None
            return Site(kind="conv", end=end, groups=c_in, out_channels=c_in * mult, output_shape=out_shape,
                        weight_perm=perm, effective_shape=(c_in * mult, 1, *kernel), **common)
        return None

    # grouped conv: window reshaped to (N, G, C/G, *P, *k), output (N, G, O/G, *P) merged by a reshape
    split = program.shapes[grouped_split.name]
    if len(split) != len(wshape) + 1 or split[0] != n_ or split[1] * split[2] != c_in \
            or split[3:] != wshape[2:]:
        return None
    g_count = split[1]
    n, g, c, pos, ker = ld[0], ld[1], ld[2], ld[3:3 + nsp], ld[3 + nsp:]
    extra = [a for a in lw if a not in ld]
    if len(extra) != 1 or out != n + g + extra[0] + pos:
        return None
    perm = _perm(lw, g + extra[0] + c + ker)
    if perm is None:
        return None
    og = program.shapes[node.name][2]
    out_shape = (n_, g_count * og, *positions)
    end = _single_reshape_consumer(program, node.name, out_shape)
    if end is None:
        return None
    return Site(kind="conv", end=end, groups=g_count, out_channels=g_count * og, output_shape=out_shape,
                weight_perm=perm, effective_shape=(g_count * og, c_in // g_count, *kernel), **common)


def _match_linear(program: OpProgram, node: Node, data: str, wop: str, weight: str,
                  ld: str, lw: str, out: str) -> Site | None:
    if len(lw) != 2:
        return None
    shared = [a for a in lw if a in ld]
    extra = [a for a in lw if a not in ld]
    if len(shared) != 1 or len(extra) != 1:
        return None
    c, o = shared[0], extra[0]
    p = ld.index(c)
    if out != ld[:p] + o + ld[p + 1:]:
        return None  # must map the channel axis in place and keep every other axis
    xshape = program.shapes[data]
    o_ch = program.shapes[node.name][p]
    return Site(kind="linear", contract=node.name, end=node.name, source=data, source_shape=xshape,
                channel_axis=p, spatial_axes=(), kernel=(), stride=(), dilation=(), pads=(), groups=1,
                in_channels=xshape[p], out_channels=o_ch, output_shape=program.shapes[node.name],
                weight=weight, weight_operand_shape=program.shapes[wop], weight_perm=_perm(lw, o + c),
                effective_shape=(o_ch, xshape[p]))
