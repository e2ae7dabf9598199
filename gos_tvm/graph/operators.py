"""Replacement stages that are convolutions or linear maps, written as Relax's own operators.

Most stages of a replacement program (`instructions.stages`) are one site
(`space.match.Site`): a convolution (dense, grouped or depthwise, any stride, dilation and
padding), a pointwise convolution, or a dense layer, sometimes with a bias or scale as
epilogue.  Lowered through `instructions.to_te` such a stage is a generic einsum kernel; written
as ``R.nn.conv2d`` / ``R.matmul`` it is the very operator the original model runs, so Relax's
ConvertLayout turns it channels-last, LegalizeOps gives it TOPI's compute, FuseOps fuses its
epilogue, and MetaSchedule tunes it exactly like the convolution it replaces.  Measured before
this (Fashion-MNIST, originals converged at 64 trials per task): 15 of 19 accurate candidates
of resnet18-style, and all 16 of vgg-style, ran slower in the model than the convolution they
would replace, although they do a fraction of its arithmetic.

`site_operator` returns None for a stage it does not recognise; that stage stays a ``call_tir``
of its TensorIR kernel.  Both forms compute the same function (checked in
``tests/test_relax_operators.py``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from tvm import relax

from ..instructions import OpProgram
from ..instructions.program import BINARY_OPS, UNARY_OPS, Node, parse_einsum
from ..space.match import Site, find_sites, weight_source

_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": relax.op.add, "sub": relax.op.subtract, "mul": relax.op.multiply, "maximum": relax.op.maximum,
}
_UNARY: dict[str, Callable[[Any], Any]] = {"abs": relax.op.abs, "neg": relax.op.negative}
assert set(_BINARY) == set(BINARY_OPS) and set(_UNARY) == set(UNARY_OPS)

#: How `graph.substitute` writes replacement stages; part of the key of a candidate's logged latency.
STAGE_FORM = "relax-ops"

#: Relax convolutions by number of spatial axes (channels-first data, ``O, C/groups, *kernel`` weights).
_CONV = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d}


def _reads(program: OpProgram, value: str, stop: set[str]) -> set[str]:
    """The nodes `value` is computed from, down to (not including) `stop` and program weights."""
    by_name = {n.name: n for n in program.nodes}
    seen, stack = set(), [value]
    while stack:
        name = stack.pop()
        if name in seen or name in stop or name not in by_name:
            continue
        seen.add(name)
        stack.extend(by_name[name].inputs)
    return seen


def _effective_weight(site: Site, weight: relax.Expr) -> relax.Expr:
    """The site's weight variable viewed as the torch-layout weight (`Site.effective_weight`, in Relax
    ops on a parameter: FoldConstant turns them into a constant once the parameters are bound)."""
    w = relax.op.reshape(weight, site.weight_operand_shape)
    if tuple(site.weight_perm) != tuple(range(len(site.weight_perm))):
        w = relax.op.permute_dims(w, list(site.weight_perm))
    return relax.op.reshape(w, site.effective_shape)


def _site_call(site: Site, x: relax.Expr, weight: relax.Expr) -> relax.Expr | None:
    """The site as one Relax operator applied to its source `x`, or None if Relax has none for it."""
    w = _effective_weight(site, weight)
    rank = len(site.source_shape)
    if site.kind == "conv" and site.nsp in _CONV:
        # Relax pads (lo per axis, then hi per axis), like ONNX.
        padding = [lo for lo, _ in site.pads] + [hi for _, hi in site.pads]
        return _CONV[site.nsp](x, w, strides=list(site.stride), padding=padding, dilation=list(site.dilation),
                               groups=site.groups)
    if site.kind == "linear" and site.channel_axis == 1 and rank - 2 in _CONV:
        # A pointwise map over channels-first feature maps is a 1x1 convolution: one the layout
        # passes turn channels-last with their neighbours.
        return _CONV[rank - 2](x, relax.op.reshape(w, (*site.effective_shape, *(1,) * (rank - 2))))
    if site.kind == "linear" and site.channel_axis == rank - 1:
        return relax.op.matmul(x, relax.op.permute_dims(w, [1, 0]))
    return None


def _grouped_pointwise(stage: OpProgram) -> Site | None:
    """A grouped map of the channels of a feature map (`space.emit.linear` with groups: reshape to
    (N, G, C/G, *S), contract with a (G, O/G, C/G) weight view, reshape to (N, O, *S)) as the site of
    the 1x1 convolution with G groups it is.  The space does not rewrite these, so `space.match`
    does not call them sites; Relax has the operator."""
    nodes = {n.name: n for n in stage.nodes}
    contracts = [n for n in stage.nodes if n.op == "contract"]
    readers = [n for n in stage.nodes if contracts and contracts[0].name in n.inputs]
    if len(contracts) != 1 or len(readers) != 1 or readers[0].op != "reshape":
        return None
    contract, merge = contracts[0], readers[0]
    (ld, lw), out = parse_einsum(contract.attr["spec"])
    split = nodes.get(contract.inputs[0])
    weight = weight_source(stage, contract.inputs[1])
    if split is None or split.op != "reshape" or split.inputs[0] not in stage.inputs or weight is None:
        return None
    x_shape, g_shape = stage.shapes[split.inputs[0]], stage.shapes[split.name]
    if len(x_shape) not in (3, 4) or len(g_shape) != len(x_shape) + 1 or g_shape[0] != x_shape[0] \
            or g_shape[1] * g_shape[2] != x_shape[1] or g_shape[3:] != x_shape[2:]:
        return None
    n, g, c, rest = ld[0], ld[1], ld[2], ld[3:]
    extra = [a for a in lw if a not in ld]
    if len(extra) != 1 or sorted(lw) != sorted(g + c + extra[0]) or out != n + g + extra[0] + rest:
        return None
    groups, o_channels = g_shape[1], stage.output_shape[1]
    nsp = len(x_shape) - 2
    return Site(kind="conv", contract=contract.name, end=merge.name, source=split.inputs[0], source_shape=x_shape,
                channel_axis=1, spatial_axes=tuple(range(2, 2 + nsp)), kernel=(1,) * nsp, stride=(1,) * nsp,
                dilation=(1,) * nsp, pads=((0, 0),) * nsp, groups=groups, in_channels=x_shape[1],
                out_channels=o_channels, output_shape=stage.output_shape, weight=weight,
                weight_operand_shape=stage.shapes[contract.inputs[1]],
                weight_perm=tuple(lw.index(a) for a in g + extra[0] + c),
                effective_shape=(o_channels, x_shape[1] // groups, *(1,) * nsp))


def site_operator(stage: OpProgram, env: Mapping[str, relax.Expr]) -> relax.Expr | None:
    """`stage` as Relax operators on the values in `env` (its inputs and weights, by name), when it
    is one site read straight from a stage input, followed by point-wise epilogue instructions whose
    other operands are weights (a bias add, a scale); else None.  The operator's output has the
    site's shape by construction: the program's window instruction sizes its output with Relax's
    formula (`instructions.program.window_out_size`)."""
    sites = find_sites(stage) or [s for s in [_grouped_pointwise(stage)] if s is not None]
    if len(sites) != 1 or sites[0].source not in stage.inputs:
        return None
    site = sites[0]
    value = _site_call(site, env[site.source], env[site.weight])
    if value is None:
        return None
    body = _reads(stage, site.end, {site.source})
    on_input = {*stage.inputs, site.end}  # values computed from a feature map, not from weights alone
    values: dict[str, relax.Expr] = {**env, site.end: value}
    for node in stage.nodes:
        if node.name in body:
            continue
        if any(i in on_input for i in node.inputs):
            on_input.add(node.name)
        emitted = _epilogue(node, values, on_weights=node.name not in on_input)
        if emitted is None:
            return None
        values[node.name] = emitted
    return values.get(stage.output)


def _epilogue(node: Node, values: Mapping[str, relax.Expr], on_weights: bool) -> relax.Expr | None:
    """One instruction after the site: point-wise ops, and reshapes/transposes of weights only (on a
    feature map they would move data in a layout the model does not run)."""
    if any(i not in values for i in node.inputs):
        return None
    args = [values[i] for i in node.inputs]
    if node.op in _BINARY:
        return _BINARY[node.op](*args)
    if node.op in _UNARY:
        return _UNARY[node.op](*args)
    if on_weights and node.op == "reshape":
        return relax.op.reshape(args[0], node.attr["shape"])
    if on_weights and node.op == "transpose":
        return relax.op.permute_dims(args[0], list(node.attr["perm"]))
    return None


__all__ = ["STAGE_FORM", "site_operator"]
