"""The layout convolutions are compiled in (`conv_layout`: the imported NCHW by default, NHWC on
request) and the module rewrites that make a channels-last model out of an imported NCHW one
(`to_conv_layout`, used by `graph.legalize` so that tuning, compiling and export see the same
kernels).

The library's default stays the imported NCHW (`conv_layout` changes it for a block);
`gos-tvm tune` compiles NHWC by default (`--layout`).  Measured with the README's main command
in one session (digits-cnn, 16 trials per task, original and adapted timed alternately): NHWC
0.236 -> 0.108 ms (2.18x), NCHW 0.610 -> 0.527 ms (1.16x).  That needs the search to judge sites
and candidates in the layout the model runs: while it judged NCHW kernels and the model ran their
NHWC copies, the same command gave 0.216 -> 0.215 ms (digits-cnn's conv2 replacement: 29.6 us as
the NCHW kernel, 51.4 us as the NHWC copy).  The search now judges them by the tasks of the model
itself (`gos_tvm.hw.tuning.task_delta`), compiled through `to_conv_layout`.

MetaSchedule's CPU schedules vectorise the innermost axis: in NCHW that is the image width
(4-32 pixels in these models), in NHWC the channels.  Relax's ConvertLayout turns conv2d and the
ops it knows around it to NHWC and puts transposes where it has to hand a tensor to an op it
does not know.  Two kinds of op it does not know are rewritten here first, because a transpose
pair around them costs more than the layout gains:

* ``R.clip`` (ReLU6, hardtanh) becomes ``minimum(maximum(x, lo), hi)``, which ConvertLayout
  follows and FuseOps fuses into the convolution;
* a GOS replacement (a ``call_tir`` of an NCHW `OpProgram` kernel) gets a channels-last copy of
  its kernel: `tvm.s_tir.Schedule.transform_layout` on the kernel's input and output *parameter*
  buffers, so the kernel itself reads and writes NHWC and no transpose runs at all.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import tvm
import tvm_ffi
from tvm import relax

#: Layouts convolutions are compiled in: (data, kernel) for Relax's ConvertLayout, None for the
#: imported NCHW / OIHW.  "NHWC-narrow" is NHWC, with the convolutions that have fewer output
#: channels than the target's float32 vector lanes computed NCHW inside (`narrow_conv2d_as_nchw`).
CONV_LAYOUTS: dict[str, list[str] | None] = {"NCHW": None, "NHWC": ["NHWC", "HWIO"], "NHWC-narrow": ["NHWC", "HWIO"]}
_CONV_LAYOUT: ContextVar[str] = ContextVar("gos_tvm_conv_layout", default="NCHW")

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


@contextmanager
def conv_layout(name: str) -> Iterator[None]:
    """Compile (and tune) convolutions in layout ``name`` (a key of `CONV_LAYOUTS`) inside the block."""
    if name not in CONV_LAYOUTS:
        raise ValueError(f"unknown convolution layout {name!r}; choose one of {sorted(CONV_LAYOUTS)}")
    token = _CONV_LAYOUT.set(name)
    try:
        yield
    finally:
        _CONV_LAYOUT.reset(token)


def current_conv_layout() -> str:
    """The layout `graph.legalize` compiles convolutions in (see `conv_layout`)."""
    return _CONV_LAYOUT.get()


def to_conv_layout(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` (params bound, before legalization) with its convolutions in `current_conv_layout`.

    Modules without a conv2d are left alone (TVM 0.27's ConvertLayout dies with std::bad_alloc
    on the PPG TCN's conv1d graph); a module ConvertLayout cannot convert is compiled in the
    imported layout, with a warning.  Either way the result is deterministic per module, so
    tuning and compiling still see the same kernels.
    """
    layouts = CONV_LAYOUTS[current_conv_layout()]
    if layouts is None or not calls_op(mod, "relax.nn.conv2d"):
        return mod
    staged = _replacements_channels_last(_clip_as_min_max(mod))
    try:
        converted = relax.transform.ConvertLayout({"relax.nn.conv2d": layouts})(staged)
    except tvm.error.TVMError as err:
        warnings.warn(f"convolution layout {layouts} not applied (Relax ConvertLayout failed: "
                      f"{str(err).splitlines()[-1][:200]}); compiling in the imported NCHW layout", stacklevel=3)
        return mod
    converted = _cancel_transposes(converted)
    if current_conv_layout() == "NHWC-narrow":
        lanes = float32_lanes(tvm.target.Target.current(allow_none=True))
        # LegalizeOps is the first pass of `legalize`'s pipeline; here it is run with the narrow
        # convolutions' lowering, and the pipeline's own then finds nothing left to legalize.
        converted = relax.transform.LegalizeOps({"relax.nn.conv2d": narrow_conv2d_as_nchw(lanes)})(converted)
    return converted


def float32_lanes(target: tvm.target.Target | None) -> int:
    """float32 values in one vector register of ``target``: 16 with AVX-512, 8 with AVX, 4 with SSE;
    for other CPUs LLVM's vector width (NEON: 128 bits, 4); 4 for a target that is not LLVM's.
    (x86 goes by its features: TVM 0.27's ``llvm_get_vector_width`` says 512 bits for any x86 CPU,
    haswell and plain x86-64 included.)"""
    if target is None or target.kind.name != "llvm":
        return 4
    from tvm.target import codegen

    for feature, lanes in (("avx512f", 16), ("avx", 8), ("sse", 4)):
        if codegen.target_has_features(feature, target):
            return lanes
    return max(int(codegen.llvm_get_vector_width(target)) // 32, 1)


def narrow_conv2d_as_nchw(lanes: int):
    """Relax legalization of ``relax.nn.conv2d`` for "NHWC-narrow": an NHWC convolution with fewer
    output channels than ``lanes`` becomes one kernel that reads and writes NHWC but computes NCHW
    (the input's transpose inlines into the padding copy, the output's into the write); every other
    conv2d is legalized as Relax does.

    An NHWC kernel vectorizes along the output channels; with fewer of them than a vector holds
    (a rank-4 channel bottleneck: 4 channels against AVX-512's 16 lanes) MetaSchedule's best
    schedules leave the compute unvectorized, while NCHW vectorizes along the image rows: tuned
    alone on the AMD Zen 5 host, 3x3 4->4 at 32x32 2.09 us NCHW vs 3.47 NHWC, 1x1 16->4 1.06 vs
    2.10 (benchmarks/results/fashion_mnist_serial_twins_vgg/narrow_layouts.txt).  Compiling those
    convolutions NCHW *between* NHWC neighbours instead costs a transpose kernel at each border,
    and MetaSchedule finds only two or three schedules for a transpose: on the adapted vgg-style
    model the four transposes took 7.3 us, the narrow convolutions saved 3.7
    (`narrow_nchw.py` there, first version).  This form adds no kernel, but at 64 trials per task
    only the 3x3 4->4 convolution gained (4.57 -> 3.42 us); the 1x1 16->4 (2.10 -> 4.17 us) and the
    3x1 32->12 (1.12 -> 2.31) lost, and the adapted model ran 45.1 us against 39.2 in plain NHWC.
    Not a default: an option to measure per model and target."""
    from tvm import topi
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    def conv2d_nhwc_via_nchw(x, w, strides, padding, dilation, groups, out_dtype):
        y = topi.nn.conv(topi.transpose(x, TO_NCHW), topi.transpose(w, (3, 2, 0, 1)), strides, padding, dilation,
                         groups, "NCHW", "OIHW", out_dtype=out_dtype)
        return topi.transpose(y, TO_NHWC)

    def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        a = call.attrs
        if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NHWC", "HWIO", "NHWC") \
                or int(call.args[1].ty.shape.values[3]) >= lanes:
            return _nn_conv2d(bb, call)
        return bb.call_te(conv2d_nhwc_via_nchw, call.args[0], call.args[1], a.strides, a.padding, a.dilation,
                          int(a.groups), a.out_dtype if a.out_dtype != "" else None,
                          primfunc_name_hint="conv2d_nhwc_via_nchw")

    return legalize_conv2d


def calls_op(mod: tvm.IRModule, op_name: str) -> bool:
    """Whether a Relax function of ``mod`` calls the operator ``op_name``."""
    found = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name:
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def _rewrite_calls(mod: tvm.IRModule, pattern, rewrite) -> tvm.IRModule:
    from tvm.relax.dpl import rewrite_call

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = rewrite_call(pattern, rewrite, func)
    return out


def _clip_as_min_max(mod: tvm.IRModule) -> tvm.IRModule:
    """Every ``R.clip(x, lo, hi)`` as ``minimum(maximum(x, lo), hi)``: the same function, in ops
    ConvertLayout can follow (left as clip, each ReLU6 of mobilenetv2-style sat between
    NHWC<->NCHW transposes that took 0.43 of the model's 0.76 ms tuned at 64 trials per task)."""
    from tvm.relax.dpl import is_op, wildcard

    def rewrite(call: relax.Call, _matches: dict) -> relax.Expr:
        x, lo, hi = call.args
        dtype = x.ty.dtype
        return relax.op.minimum(relax.op.maximum(x, relax.const(float(lo.value), dtype)),
                                relax.const(float(hi.value), dtype))

    return _rewrite_calls(mod, is_op("relax.clip")(wildcard(), wildcard(), wildcard()), rewrite)


def _channels_last_kernel(func: tvm.tirx.PrimFunc, x_shape: tuple[int, ...],
                          out_shape: tuple[int, ...]) -> tvm.tirx.PrimFunc | None:
    """``func`` reading its NCHW input (the parameter of shape ``x_shape``) and writing its NCHW
    output NHWC instead, or None when it is not a kernel of that form."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - a PrimFunc without a root block is not one of our kernels
        return None
    local = {b.name for b in sch.get(root).alloc_buffers}

    def shape(buf) -> tuple[int, ...]:
        return tuple(int(d) for d in buf.shape)

    reads, writes = {}, {}
    for block in sch.get_child_blocks(root):
        stmt = sch.get(block)
        for region in stmt.reads:
            if region.source.name not in local:
                reads.setdefault(region.source.name, (block, shape(region.source)))
        for region in stmt.writes:
            if region.source.name not in local:
                writes.setdefault(region.source.name, (block, shape(region.source)))
    inputs = [name for name, (_, shp) in reads.items() if shp == tuple(x_shape)]
    outputs = [name for name, (_, shp) in writes.items() if shp == tuple(out_shape)]
    if len(inputs) != 1 or len(outputs) != 1 or len(writes) != 1:
        return None  # ambiguous (a weight shaped like the input) or not one NCHW output
    sch.transform_layout(reads[inputs[0]][0], inputs[0], lambda n, c, h, w: (n, h, w, c))
    sch.transform_layout(writes[outputs[0]][0], outputs[0], lambda n, c, h, w: (n, h, w, c))
    return sch.mod["main"]


def _replacements_channels_last(mod: tvm.IRModule) -> tvm.IRModule:
    """Each ``call_tir`` of a GOS replacement kernel on a 4-d NCHW tensor as
    ``permute_dims(call_tir(<kernel reading and writing NHWC>, permute_dims(x)))``: the
    transposes in Relax, which ConvertLayout and `_cancel_transposes` then remove between NHWC
    neighbours; the kernel itself never transposes."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    renamed: dict[str, tvm.ir.GlobalVar] = {}

    @relax.expr_functor.mutator
    class Mutator(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
            call = super().visit_call_(call)
            if call.op != call_tir or not call.args[0].name_hint.startswith("gos_"):
                return call
            gv, args = call.args[0], list(call.args[1].fields)
            x_ty, out_ty = args[0].ty, call.ty
            if not (isinstance(x_ty, relax.TensorType) and isinstance(out_ty, relax.TensorType)
                    and x_ty.ndim == 4 and out_ty.ndim == 4):
                return call
            x_shape = tuple(int(d) for d in x_ty.shape.values)
            out_shape = tuple(int(d) for d in out_ty.shape.values)
            if gv.name_hint not in renamed:
                kernel = _channels_last_kernel(mod[gv], x_shape, out_shape)
                if kernel is None:
                    return call
                renamed[gv.name_hint] = self.builder_.add_func(kernel, gv.name_hint + "_nhwc")
            nhwc = relax.op.permute_dims(args[0], TO_NHWC)
            n, c, h, w = out_shape
            inner = relax.call_tir(renamed[gv.name_hint], relax.Tuple([nhwc, *args[1:]]),
                                   relax.TensorType([n, h, w, c], out_ty.dtype))
            return relax.op.permute_dims(inner, TO_NCHW)

    mutator = Mutator(out)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


#: Element-wise ops a transpose commutes with: op(permute(a, P), permute(b, P)) = permute(op(a, b), P)
#: (or with a scalar constant for b).
ELEMENTWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.maximum", "relax.minimum", "relax.nn.relu")


def _cancel_transposes(mod: tvm.IRModule) -> tvm.IRModule:
    """Move transposes below the element-wise ops and pools between a replacement kernel and its
    NHWC neighbours, then drop ``permute_dims(permute_dims(x, p), q)`` that is the identity and
    identity ``permute_dims``."""
    from tvm.relax.dpl import is_const, is_op, wildcard

    permute = tvm.ir.Op.get("relax.permute_dims")

    def axes_of(expr: relax.Expr) -> tuple[int, ...] | None:
        if isinstance(expr, relax.Call) and expr.op == permute and expr.attrs.axes is not None:
            return tuple(int(a) for a in expr.attrs.axes)
        return None

    def permuted() -> object:
        return is_op("relax.permute_dims")(wildcard())

    def sink_rule(name: str, operands: list) -> tuple:
        def rewrite(call: relax.Call, matches: dict) -> relax.Expr:
            values = [matches[o] for o in operands]
            found = {axes_of(v) for v in values if axes_of(v) is not None}
            others_scalar = all(axes_of(v) is not None or (isinstance(v, tvm.ir.expr.GenericConst) and v.ty.ndim == 0)
                                for v in values)
            if len(found) != 1 or not others_scalar:
                return call
            inner = [v.args[0] if axes_of(v) is not None else v for v in values]
            return relax.op.permute_dims(relax.Call(call.op, inner, call.attrs), list(found.pop()))

        return is_op(name)(*operands), rewrite

    rules = []
    for name in ELEMENTWISE:
        if name == "relax.nn.relu":
            rules.append(sink_rule(name, [permuted()]))
        else:  # both operands transposed alike, or one a scalar constant
            rules += [sink_rule(name, [permuted(), permuted()]), sink_rule(name, [permuted(), is_const()]),
                      sink_rule(name, [is_const(), permuted()])]

    def pool_rule(name: str) -> tuple:
        # pool(permute(x, NHWC->NCHW)) in NCHW = permute(pool(x) in NHWC): ConvertLayout keeps a
        # pool NCHW when its input comes from a replacement's NCHW view, leaving a transpose pair
        # around it (23 us of digits-cnn's 0.215 ms).
        make = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d, "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}[name]
        x = permuted()

        def rewrite(call: relax.Call, matches: dict) -> relax.Expr:
            a = call.attrs
            if axes_of(matches[x]) != TO_NCHW or str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW":
                return call
            pooled = make(matches[x].args[0], [int(v) for v in a.pool_size], [int(v) for v in a.strides],
                          [int(v) for v in a.padding], [int(v) for v in a.dilation], bool(a.ceil_mode),
                          bool(a.count_include_pad), layout="NHWC", out_layout="NHWC")
            return relax.op.permute_dims(pooled, list(TO_NCHW))

        return is_op(name)(x), rewrite

    rules += [pool_rule("relax.nn.max_pool2d"), pool_rule("relax.nn.avg_pool2d")]
    inner = permuted()
    outer = is_op("relax.permute_dims")(inner)

    def cancel(call: relax.Call, matches: dict) -> relax.Expr:
        p, q = axes_of(matches[inner]), axes_of(call)
        if p is not None and q is not None and tuple(p[i] for i in q) == tuple(range(len(q))):
            return matches[inner].args[0]
        return call

    def identity(call: relax.Call, _matches: dict) -> relax.Expr:
        q = axes_of(call)
        return call.args[0] if q is not None and q == tuple(range(len(q))) else call

    for _ in range(8):  # a chain of k element-wise ops needs k sinks; stop when nothing changes
        before = mod
        for pattern, rewrite in rules:
            mod = _rewrite_calls(mod, pattern, rewrite)
        mod = _rewrite_calls(mod, outer, cancel)
        mod = _rewrite_calls(mod, permuted(), identity)
        if tvm_ffi.structural_equal(before, mod):
            break
    return mod
