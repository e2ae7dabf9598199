"""Op-site discovery: the replaceable operators of a Relax module, each as an `OpProgram`.

A *site* is one convolution (``relax.nn.conv1d`` / ``relax.nn.conv2d``) or one dense
layer (``relax.matmul`` with a constant weight), together with the bias add that
follows it when the bias is a constant per-output-channel vector.  Its weights come
from the module's parameters (or its constants) and are given in torch layouts
(conv ``(O, C/groups, *kernel)``, dense ``(O, K)``), so a site's ``(program, weights)``
is what the operator library (`gos_tvm.instructions.library`) builds.

Site ids
--------
A site is named after its weight: the weight parameter's name without a trailing
``.weight``.  For a model imported with `from_torch` that is the qualified name of the
torch module that owns it (``"layer1.0.conv1"``, ``"fc"``), so ``model.get_submodule(id)``
is the layer (see `gos_tvm.graph.reference`).  For ONNX it is the initializer name
(minus ``.weight``).  A site whose weight is a constant rather than a parameter is named
``"<kind>@<relax var>"``, and a weight used by several sites gives ``"<name>#2"``,
``"<name>#3"``, ... to the later ones.  Ids depend only on the names of the site's own
values, so the sites that `substitute` leaves alone keep their ids.  The convolutions that
`substitute` writes for a replacement program (`graph.operators`) are part of that replacement,
not sites.

Operators that look like sites but cannot be expressed (transposed or 3-d convolution,
non-float32 or non-NCHW layouts, symbolic shapes, weights computed at run time) are
reported as `SkippedSite`s and left untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..instructions import OpProgram, library
from .importer import num_inputs

SITE_KINDS = ("conv1d", "conv2d", "depthwise", "pointwise", "dense")

#: Marks the parameters `graph.substitute` adds for a replacement's weights (``<site>.replacement.<weight>``).
REPLACEMENT_PARAM = ".replacement."

# Relax operators that are convolution-like but that the library does not express.
_OTHER_CONV_OPS = {
    "relax.nn.conv3d": "3-d convolution",
    "relax.nn.conv1d_transpose": "transposed convolution",
    "relax.nn.conv2d_transpose": "transposed convolution",
    "relax.nn.conv3d_transpose": "transposed convolution",
}


@dataclass(eq=False)
class Site:
    """One replaceable operator of a Relax module.

    ``program`` (from `gos_tvm.instructions.library`) computes the site's output from
    ``x`` (shape ``input_shape``) and ``weights``; it includes the bias when ``bias``.
    ``output_var`` / ``input_var`` name the Relax values the site reads and writes;
    ``bindings`` are the Relax variables the site replaces (the operator, the weight
    transpose or bias reshape that only it uses, and the bias add).
    """

    id: str
    kind: str
    program: OpProgram
    weights: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    op: str
    attrs: dict[str, Any]
    bias: bool
    input_var: str
    output_var: str
    bindings: tuple[str, ...]
    param_names: tuple[str, ...] = ()
    #: (input expression, output var) in the module that `analyze` was given; internal.
    refs: Any = field(default=None, repr=False, compare=False)

    @property
    def flops(self) -> int:
        """FLOPs of the original operator (multiply-accumulate counts 2)."""
        return self.program.flops

    @property
    def params(self) -> int:
        """Number of weight elements of the original operator."""
        return self.program.params

    def __getstate__(self) -> dict[str, Any]:  # the TVM references do not pickle
        return {**self.__dict__, "refs": None}

    def __repr__(self) -> str:
        return (f"Site({self.id!r}, {self.kind}, {self.input_shape} -> {self.output_shape}, "
                f"bias={self.bias}, {self.flops} FLOPs)")


@dataclass
class SkippedSite:
    """An operator that looks like a site but that the library cannot express (left untouched)."""

    id: str
    op: str
    reason: str
    output_var: str


@dataclass
class SiteAnalysis:
    """All sites and skipped operators of a module, in program order."""

    sites: list[Site] = field(default_factory=list)
    skipped: list[SkippedSite] = field(default_factory=list)

    def site(self, site_id: str) -> Site:
        for s in self.sites:
            if s.id == site_id:
                return s
        skipped = [s for s in self.skipped if s.id == site_id]
        if skipped:
            raise KeyError(f"site '{site_id}' was skipped: {skipped[0].reason}")
        raise KeyError(f"no site '{site_id}'; sites are {[s.id for s in self.sites]}")


class _Skip(Exception):
    pass


class _Graph:
    """The bindings of ``main`` with use counts and a resolver for constant values."""

    def __init__(self, mod: tvm.IRModule, params: dict[str, np.ndarray]):
        self.func = mod["main"]
        n = num_inputs(mod)
        self.inputs = list(self.func.params[:n])
        self.param_vars = {v: v.name for v in self.func.params[n:]}
        self.params = params
        self.bindings: list[relax.VarBinding] = []
        self.value: dict[Any, Any] = {}   # var -> bound expression
        self.uses: dict[Any, int] = {}
        self.users: dict[Any, list[relax.VarBinding]] = {}
        for block in self.func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.bindings.append(b)
                    self.value[b.var] = b.value
                for v in relax.analysis.free_vars(b.value):
                    self.uses[v] = self.uses.get(v, 0) + 1
                    self.users.setdefault(v, []).append(b)
        for v in relax.analysis.free_vars(self.func.body.body):
            self.uses[v] = self.uses.get(v, 0) + 1

    def call(self, expr: Any, op: str | tuple[str, ...]) -> relax.Call | None:
        """The call bound to ``expr`` (a var) if it calls ``op``."""
        value = self.value.get(expr) if isinstance(expr, relax.Var) else expr
        ops = (op,) if isinstance(op, str) else op
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in ops:
            return value
        return None

    def constant(self, expr: Any) -> tuple[np.ndarray, str | None, list[Any]] | None:
        """(value, parameter name or None, vars passed through) if ``expr`` is a constant,
        a parameter, or a reshape / transpose / expand_dims / broadcast_to of one; else None."""
        through: list[Any] = []
        transforms: list[tuple[Any, relax.Call]] = []
        while isinstance(expr, relax.Var) and expr in self.value:
            call = self.call(expr, ("relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.broadcast_to"))
            if call is None:
                return None
            through.append(expr)
            transforms.append((expr, call))
            expr = call.args[0]
        if isinstance(expr, relax.Var) and expr in self.param_vars:
            name = self.param_vars[expr]
            if name not in self.params:
                raise _Skip(f"parameter '{name}' has no value in params")
            value, source = np.asarray(self.params[name]), name
        elif isinstance(expr, tvm.ir.GenericConst):
            value, source = expr.value.numpy(), None
        else:
            return None
        for var, call in reversed(transforms):
            if call.op.name == "relax.permute_dims":
                axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
                value = np.transpose(value, axes)
            elif call.op.name == "relax.broadcast_to":
                value = np.broadcast_to(value, _static_shape(var.ty))
            else:  # reshape / expand_dims: row-major, order unchanged
                value = value.reshape(_static_shape(var.ty))
        return value, source, through


def _static_shape(ty: Any) -> tuple[int, ...]:
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise _Skip(f"value of type {ty} has no static shape")
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, (tvm.tirx.IntImm, int)):
            raise _Skip(f"symbolic shape {ty.shape}")
        dims.append(int(d))
    return tuple(dims)


def _check_f32(*tys: Any) -> None:
    for ty in tys:
        if not isinstance(ty, relax.TensorType) or str(ty.dtype) != "float32":
            raise _Skip(f"dtype {getattr(ty, 'dtype', ty)} is not float32")


def _ints(xs: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in xs)


def _site_name(weight_param: str | None, kind: str, out_var: str) -> str:
    if weight_param is None:
        return f"{kind}@{out_var}"
    return weight_param[:-len(".weight")] if weight_param.endswith(".weight") else weight_param


def _bias(g: _Graph, out_var: Any, out_shape: tuple[int, ...], channels: int, channel_axis: int):
    """The bias add consuming ``out_var`` if there is one: (add var, bias (O,), source, passed vars)."""
    if g.uses.get(out_var, 0) != 1:
        return None
    for b in g.users.get(out_var, []):
        if not isinstance(b, relax.VarBinding):
            return None
        call = g.call(b.var, "relax.add")
        if call is None or not any(a.same_as(out_var) for a in call.args):
            continue
        other = call.args[1] if call.args[0].same_as(out_var) else call.args[0]
        if other.same_as(out_var):
            return None
        try:
            found = g.constant(other)
        except _Skip:
            return None
        if found is None:
            return None
        value, source, through = found
        if _static_shape(b.var.ty) != out_shape or value.size != channels or channels == 1 and value.ndim == 0:
            return None
        # The bias must broadcast along the channel axis only.
        shape = (1,) * (len(out_shape) - value.ndim) + tuple(value.shape)
        if len(shape) != len(out_shape) or any(d != 1 for i, d in enumerate(shape) if i != channel_axis % len(shape)):
            return None
        passed = [v for v in through if g.uses.get(v, 0) == 1]
        return b.var, value.reshape(-1).astype(np.float32), source, passed
    return None


def _conv_site(g: _Graph, b: relax.VarBinding, call: relax.Call) -> dict[str, Any]:
    op = call.op.name
    nsp = 1 if op == "relax.nn.conv1d" else 2
    a = call.attrs
    layouts = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout or a.data_layout))
    want = ("NCW", "OIW", "NCW") if nsp == 1 else ("NCHW", "OIHW", "NCHW")
    if layouts != want:
        raise _Skip(f"layouts {layouts} (the library expresses {want})")
    x, w = call.args
    _check_f32(x.ty, b.var.ty)
    if str(a.out_dtype) not in ("", "float32", "None"):
        raise _Skip(f"out_dtype {a.out_dtype}")
    in_shape, out_shape = _static_shape(x.ty), _static_shape(b.var.ty)
    found = g.constant(w)
    if found is None:
        raise _Skip("its weight is computed at run time, not a constant or parameter")
    weight, source, through = found
    weight = weight.astype(np.float32)
    strides, dilation, padding, groups = _ints(a.strides), _ints(a.dilation), _ints(a.padding), int(a.groups)
    o, cin = out_shape[1], in_shape[1]
    kernel = tuple(weight.shape[2:])
    if nsp == 1:
        kind = "conv1d"
        program = library.conv1d(in_shape, o, kernel[0], strides[0], padding, dilation[0], groups, bias=False)
    elif groups == cin and groups > 1 and o % cin == 0:
        kind = "depthwise"
        program = library.depthwise_conv2d(in_shape, kernel, strides, padding, dilation, o // cin, bias=False)
    elif groups == 1 and kernel == (1, 1) and strides == (1, 1) and not any(padding):
        kind = "pointwise"
        program = library.pointwise_conv2d(in_shape, o, bias=False)
    else:
        kind = "conv2d"
        program = library.conv2d(in_shape, o, kernel, strides, padding, dilation, groups, bias=False)
    attrs = {"kernel_size": kernel, "stride": strides, "padding": padding, "dilation": dilation, "groups": groups}
    return {"kind": kind, "program": program, "weight": weight, "source": source, "through": through,
            "in_shape": in_shape, "out_shape": out_shape, "channel_axis": 1, "attrs": attrs, "x": x,
            "rebuild": lambda bias: _rebuild_conv(kind, in_shape, o, attrs, bias)}


def _rebuild_conv(kind: str, in_shape, o: int, attrs: dict, bias: bool) -> OpProgram:
    k, s, p, d, g = (attrs[n] for n in ("kernel_size", "stride", "padding", "dilation", "groups"))
    if kind == "conv1d":
        return library.conv1d(in_shape, o, k[0], s[0], p, d[0], g, bias=bias)
    if kind == "depthwise":
        return library.depthwise_conv2d(in_shape, k, s, p, d, o // in_shape[1], bias=bias)
    if kind == "pointwise":
        return library.pointwise_conv2d(in_shape, o, bias=bias)
    return library.conv2d(in_shape, o, k, s, p, d, g, bias=bias)


def _dense_site(g: _Graph, b: relax.VarBinding, call: relax.Call) -> dict[str, Any] | None:
    x, w = call.args
    found = g.constant(w)
    if found is None:
        if g.constant(x) is not None:
            raise _Skip("constant left operand (x @ activation) is not a dense layer")
        return None  # activation @ activation (attention): not a site
    _check_f32(x.ty, b.var.ty)
    if str(call.attrs.out_dtype) not in ("", "float32", "None"):
        raise _Skip(f"out_dtype {call.attrs.out_dtype}")
    value, source, through = found
    in_shape, out_shape = _static_shape(x.ty), _static_shape(b.var.ty)
    if value.ndim > 2:  # torch.export writes a 3-d linear as a bmm with a broadcast weight
        stacked = value.reshape(-1, *value.shape[-2:])
        if not (stacked == stacked[:1]).all():
            raise _Skip(f"batched weight of shape {value.shape} differs across the batch")
        value = stacked[0]
    if value.ndim != 2:
        raise _Skip(f"weight of rank {value.ndim} (a dense layer has a 2-d weight)")
    if len(in_shape) < 1 or len(in_shape) > 6:
        raise _Skip(f"input of rank {len(in_shape)}")
    weight = np.ascontiguousarray(value.T).astype(np.float32)  # x @ W (K, O) -> torch layout (O, K)
    o = weight.shape[0]
    program = library.dense(in_shape, o, bias=False)
    return {"kind": "dense", "program": program, "weight": weight, "source": source, "through": through,
            "in_shape": in_shape, "out_shape": out_shape, "channel_axis": -1, "attrs": {}, "x": x,
            "rebuild": lambda bias: library.dense(in_shape, o, bias=bias)}


def analyze(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> SiteAnalysis:
    """Sites and skipped operators of ``mod["main"]`` in program order (see the module doc)."""
    g = _Graph(mod, params)
    result = SiteAnalysis()
    seen: dict[str, int] = {}

    def unique(name: str) -> str:
        seen[name] = seen.get(name, 0) + 1
        return name if seen[name] == 1 else f"{name}#{seen[name]}"

    for b in g.bindings:
        value = b.value
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            continue
        op = value.op.name
        if op in _OTHER_CONV_OPS:
            found = None
            try:
                found = g.constant(value.args[1])
            except _Skip:
                pass
            kind = op.split(".")[-1]
            result.skipped.append(SkippedSite(unique(_site_name(found[1] if found else None, kind, b.var.name)),
                                              op, f"{_OTHER_CONV_OPS[op]} is not expressed by the operator library",
                                              b.var.name))
            continue
        if op not in ("relax.nn.conv1d", "relax.nn.conv2d", "relax.matmul"):
            continue
        kind_hint = {"relax.nn.conv1d": "conv1d", "relax.nn.conv2d": "conv2d", "relax.matmul": "dense"}[op]
        try:
            info = _conv_site(g, b, value) if op != "relax.matmul" else _dense_site(g, b, value)
        except _Skip as err:
            source = None
            try:
                found = g.constant(value.args[1])
                source = found[1] if found else None
            except _Skip:
                pass
            result.skipped.append(SkippedSite(unique(_site_name(source, kind_hint, b.var.name)), op, str(err),
                                              b.var.name))
            continue
        if info is None or REPLACEMENT_PARAM in (info["source"] or ""):
            continue  # an operator `substitute` wrote for a replacement program is part of that program
        weights = {"weight": info["weight"]}
        program, out_var = info["program"], b.var
        replaced = [b.var] + [v for v in info["through"] if g.uses.get(v, 0) == 1]
        bias = _bias(g, b.var, info["out_shape"], info["out_shape"][info["channel_axis"]], info["channel_axis"])
        param_names = [info["source"]] if info["source"] else []
        if bias is not None:
            add_var, bias_value, bias_source, passed = bias
            program = info["rebuild"](True)
            weights["bias"] = bias_value
            out_var = add_var
            replaced += [add_var] + passed
            if bias_source:
                param_names.append(bias_source)
        if program.weights["weight"] != weights["weight"].shape:
            result.skipped.append(SkippedSite(unique(_site_name(info["source"], info["kind"], b.var.name)), op,
                                              f"weight shape {weights['weight'].shape} does not match the "
                                              f"program's {program.weights['weight']}", b.var.name))
            continue
        if program.output_shape != info["out_shape"]:
            result.skipped.append(SkippedSite(unique(_site_name(info["source"], info["kind"], b.var.name)), op,
                                              f"output shape {info['out_shape']} differs from the library "
                                              f"program's {program.output_shape}", b.var.name))
            continue
        x = info["x"]
        result.sites.append(Site(
            id=unique(_site_name(info["source"], info["kind"], b.var.name)),
            kind=info["kind"], program=program, weights=weights,
            input_shape=info["in_shape"], output_shape=info["out_shape"], op=op, attrs=info["attrs"],
            bias=bias is not None, input_var=x.name if isinstance(x, relax.Var) else "",
            output_var=out_var.name, bindings=tuple(v.name for v in replaced), param_names=tuple(param_names),
            refs=(x, out_var)))
    return result


def find_sites(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> list[Site]:
    """The replaceable op sites of ``mod["main"]`` in program order.

    Each `Site` carries its id, kind (one of `SITE_KINDS`), its `OpProgram` (bias
    included when a constant bias add follows), its weights (numpy, torch layout) and
    its input/output shapes.  Operators the library cannot express are left out; see
    `find_skipped` / `analyze` for them and the reasons.
    """
    return analyze(mod, params).sites


def find_skipped(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> list[SkippedSite]:
    """Convolution / dense operators of ``mod["main"]`` that are not sites, with the reason."""
    return analyze(mod, params).skipped


__all__ = ["Site", "SkippedSite", "SiteAnalysis", "SITE_KINDS", "analyze", "find_sites", "find_skipped"]
