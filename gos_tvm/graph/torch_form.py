"""A trainable torch form of an imported Relax module, for models without a torch module (ONNX).

`RelaxTorch(mod, params, site_modules)` runs ``mod["main"]`` binding by binding with
PyTorch operators, its parameters frozen, and computes each site named in
``site_modules`` with the given torch module instead (on the site's input; the site's own
bindings are skipped), so that gradients reach those modules: the torch counterpart of
`substitute` for any model `from_onnx` or `from_torch` imported.  The graph has the
static shapes of the import (batch 1, usually); a batch is run by mapping the graph over
its samples with `torch.func.vmap`.

Only the operators imported CNNs and TCNs use are translated (convolutions, matmul,
element-wise arithmetic, relu / clip / sigmoid / tanh, max and average pooling, mean, batch
norm in inference form, reshape / permute_dims / squeeze / expand_dims, tuples); any other operator is refused up front
by `UnsupportedModelError` naming it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from .importer import UnsupportedModelError, num_inputs
from .sites import analyze


def _ints(xs: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in xs)


def _scalar(expr: Any) -> float:
    return float(expr.value)


def _conv(nsp: int) -> Callable:
    def run(call: relax.Call, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        a = call.attrs
        want = ("NCW", "OIW") if nsp == 1 else ("NCHW", "OIHW")
        if (str(a.data_layout), str(a.kernel_layout)) != want or str(a.out_layout or a.data_layout) != want[0]:
            raise UnsupportedModelError(f"{call.op.name} with layouts {a.data_layout}/{a.kernel_layout}")
        pad = _ints(a.padding)  # (lo per spatial axis..., hi per spatial axis...)
        torch_pad: list[int] = []
        for i in reversed(range(nsp)):  # F.pad lists the last axis first
            torch_pad += [pad[i], pad[i + nsp]]
        x = F.pad(x, torch_pad)
        fn = F.conv1d if nsp == 1 else F.conv2d
        return fn(x, w, None, _ints(a.strides), 0, _ints(a.dilation), int(a.groups))
    return run


def _max_pool2d(call: relax.Call, x: torch.Tensor) -> torch.Tensor:
    a = call.attrs
    if str(a.layout) != "NCHW" or str(a.out_layout or a.layout) != "NCHW":
        raise UnsupportedModelError(f"max_pool2d with layout {a.layout}")
    top, left, bottom, right = _ints(a.padding)
    x = F.pad(x, [left, right, top, bottom], value=float("-inf"))
    return F.max_pool2d(x, _ints(a.pool_size), _ints(a.strides), 0, _ints(a.dilation), bool(a.ceil_mode))


def _avg_pool(nsp: int) -> Callable:
    def run(call: relax.Call, x: torch.Tensor) -> torch.Tensor:
        a = call.attrs
        layout = "NCW" if nsp == 1 else "NCHW"
        pad = _ints(a.padding)
        if str(a.layout) != layout or any(d != 1 for d in _ints(a.dilation)) or pad[:nsp] != pad[nsp:]:
            raise UnsupportedModelError(f"{call.op.name} with layout {a.layout}, dilation {_ints(a.dilation)}, "
                                        f"padding {pad} (the trainable form takes {layout}, no dilation, "
                                        "symmetric padding)")
        fn = F.avg_pool1d if nsp == 1 else F.avg_pool2d
        return fn(x, _ints(a.pool_size), _ints(a.strides), pad[:nsp], bool(a.ceil_mode), bool(a.count_include_pad))
    return run


def _squeeze(call: relax.Call, x: torch.Tensor) -> torch.Tensor:
    axes = call.attrs.axis
    if axes is None:
        return x.squeeze()
    for axis in sorted((int(a) % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _expand_dims(call: relax.Call, x: torch.Tensor) -> torch.Tensor:
    rank = x.dim() + len(call.attrs.axis)
    for axis in sorted(int(a) % rank for a in call.attrs.axis):
        x = x.unsqueeze(axis)
    return x


def _batch_norm(call: relax.Call, x, gamma, beta, mean, var):
    a = call.attrs
    axis = int(a.axis) % x.dim()
    shape = [1] * x.dim()
    shape[axis] = -1
    out = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + float(a.epsilon))
    if bool(a.scale):
        out = out * gamma.reshape(shape)
    if bool(a.center):
        out = out + beta.reshape(shape)
    return (out, mean, var)  # inference form: the running statistics pass through


def _mean(call: relax.Call, x: torch.Tensor) -> torch.Tensor:
    axis = None if call.attrs.axis is None else _ints(call.attrs.axis)
    return x.mean(dim=axis, keepdim=bool(call.attrs.keepdims)) if axis is not None else x.mean()


_OPS: dict[str, Callable] = {
    "relax.nn.conv1d": _conv(1),
    "relax.nn.conv2d": _conv(2),
    "relax.matmul": lambda call, a, b: torch.matmul(a, b),
    "relax.add": lambda call, a, b: a + b,
    "relax.subtract": lambda call, a, b: a - b,
    "relax.multiply": lambda call, a, b: a * b,
    "relax.divide": lambda call, a, b: a / b,
    "relax.nn.relu": lambda call, x: torch.relu(x),
    "relax.sigmoid": lambda call, x: torch.sigmoid(x),
    "relax.tanh": lambda call, x: torch.tanh(x),
    "relax.clip": lambda call, x, lo, hi: torch.clamp(x, lo, hi),
    "relax.nn.max_pool2d": _max_pool2d,
    "relax.nn.avg_pool1d": _avg_pool(1),
    "relax.nn.avg_pool2d": _avg_pool(2),
    "relax.nn.batch_norm": _batch_norm,
    "relax.squeeze": _squeeze,
    "relax.expand_dims": _expand_dims,
    "relax.mean": _mean,
    "relax.reshape": lambda call, x, shape: x.reshape(shape),
    "relax.permute_dims": lambda call, x: (x.permute(_ints(call.attrs.axes)) if call.attrs.axes is not None
                                           else x.permute(*reversed(range(x.dim())))),
    "relax.zeros_like": lambda call, x: torch.zeros_like(x),
}


class RelaxTorch(torch.nn.Module):
    """``mod["main"]`` run with PyTorch; sites in ``site_modules`` computed by those modules.

    Args:
        mod, params: an imported model (`from_onnx` / `from_torch`).
        site_modules: ``{site id: torch module}``; each maps the site's input (a batch of the
            site's input shape) to its output, bias included.  They are registered as
            submodules (``site_modules[i]``), so their parameters train.

    Raises:
        UnsupportedModelError: an operator or construct without a translation here (named).
        KeyError: an unknown or skipped site id.
    """

    def __init__(self, mod: tvm.IRModule, params: Mapping[str, np.ndarray],
                 site_modules: Mapping[str, torch.nn.Module] | None = None):
        super().__init__()
        func = mod["main"]
        self.n_inputs = num_inputs(mod)
        self.input_shapes = [tuple(int(d) for d in v.ty.shape) for v in func.params[:self.n_inputs]]
        self.func = func
        self._values: dict[Any, torch.Tensor] = {}
        for i, v in enumerate(func.params[self.n_inputs:]):
            if v.name not in params:
                raise KeyError(f"parameter '{v.name}' of main has no value in params")
            name = f"param{i}"
            self.register_buffer(name, torch.from_numpy(np.asarray(params[v.name], dtype=np.float32).copy()))
            self._values[v] = name
        analysis = analyze(mod, dict(params))
        self.sites = torch.nn.ModuleList()
        self._replaced: dict[Any, tuple[Any, int]] = {}   # site output var -> (site input expr, module index)
        self._skipped: set[str] = set()
        counts: dict[str, int] = {}
        for block in func.body.blocks:
            for b in block.bindings:
                counts[b.var.name] = counts.get(b.var.name, 0) + 1
        for site_id, module in (site_modules or {}).items():
            site = analysis.site(site_id)
            x, out_var = site.refs
            self._replaced[out_var] = (x, len(self.sites))
            self.sites.append(module)
            # The site's own bindings are dead once it is replaced; skip them (by name, so only
            # names bound once: skipping is an economy, computing a dead binding is harmless).
            self._skipped |= {n for n in site.bindings if counts.get(n) == 1}
        self._constants: list[torch.Tensor] = []
        unsupported = set()
        for block in func.body.blocks:
            for b in block.bindings:
                if not isinstance(b, relax.VarBinding):
                    unsupported.add(type(b).__name__)
                elif b.var in self._replaced or b.var.name in self._skipped:
                    continue
                elif isinstance(b.value, relax.Call):
                    op = b.value.op
                    if not isinstance(op, tvm.ir.Op) or op.name not in _OPS:
                        unsupported.add(getattr(op, "name", None) or getattr(op, "name_hint", type(op).__name__))
                elif not isinstance(b.value, (relax.Tuple, relax.TupleGetItem, relax.Var, tvm.ir.GenericConst)):
                    unsupported.add(type(b.value).__name__)
        if unsupported:
            raise UnsupportedModelError(
                f"the trainable torch form has no translation for {sorted(unsupported)} in this model's Relax graph")

    def _const(self, expr: tvm.ir.GenericConst) -> torch.Tensor:
        return torch.from_numpy(np.asarray(expr.value.numpy()))

    def _eval(self, expr: Any, env: dict[Any, Any]) -> Any:
        if isinstance(expr, relax.Var):
            if expr in env:
                return env[expr]
            return getattr(self, self._values[expr])
        if isinstance(expr, tvm.ir.GenericConst):
            return self._const(expr)
        if isinstance(expr, relax.Tuple):
            return tuple(self._eval(f, env) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self._eval(expr.tuple_value, env)[int(expr.index)]
        if isinstance(expr, relax.ShapeExpr):
            return tuple(int(d) for d in expr.values)
        if isinstance(expr, relax.Call):
            return _OPS[expr.op.name](expr, *(self._eval(a, env) for a in expr.args))
        if isinstance(expr, (tvm.tirx.FloatImm, tvm.tirx.IntImm)):  # scalar arguments (clip bounds)
            return _scalar(expr)
        raise UnsupportedModelError(f"the trainable torch form cannot evaluate {type(expr).__name__}")

    def _sample(self, *xs: torch.Tensor) -> torch.Tensor:
        env: dict[Any, Any] = dict(zip(self.func.params[:self.n_inputs], xs))
        for block in self.func.body.blocks:
            for b in block.bindings:
                if b.var in self._replaced:
                    x, k = self._replaced[b.var]
                    env[b.var] = self.sites[k](self._eval(x, env))
                elif b.var.name not in self._skipped:
                    env[b.var] = self._eval(b.value, env)
        return self._eval(self.func.body.body, env)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """Outputs for a batch: each input (B, *shape[1:]) with B a multiple of the imported batch."""
        if len(xs) != self.n_inputs:
            raise TypeError(f"the model takes {self.n_inputs} input(s), got {len(xs)}")
        b = self.input_shapes[0][0]
        chunks = []
        for x, shape in zip(xs, self.input_shapes):
            if tuple(x.shape[1:]) != shape[1:] or x.shape[0] % b:
                raise ValueError(f"input must have shape (B, {', '.join(map(str, shape[1:]))}) with B a multiple "
                                 f"of {b}, got {tuple(x.shape)}")
            chunks.append(x.reshape(x.shape[0] // b, *shape))
        y = torch.func.vmap(self._sample)(*chunks)
        if isinstance(y, tuple):
            if len(y) != 1:
                raise UnsupportedModelError(f"the model returns {len(y)} outputs; the trainable form handles one")
            (y,) = y
        return y.reshape(y.shape[0] * y.shape[1], *y.shape[2:])


__all__ = ["RelaxTorch"]
