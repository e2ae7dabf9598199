"""Graph rewriting: substitute replacement programs at op sites, and expose site activations.

`substitute` replaces each chosen site by its replacement program, one piece per stage of the
program (`gos_tvm.instructions.stages`: one per arithmetic instruction): a stage that is a
convolution or linear map becomes Relax's own operator (`graph.operators`), any other stage a
``call_tir`` of its TensorIR PrimFunc (`gos_tvm.instructions.to_te`).  The program's weights
become new parameter arguments of ``main``.  Everything else is left as it was: the site's own
bindings (operator, weight transpose, bias reshape and bias add) become dead and are removed,
and so are the parameters that only they used.  The replaced site's output variable is
kept, so every other binding, and the ids of the other sites, are unchanged.

The PrimFuncs (`replacement_prim_func`: `to_te`'s computation with int64 buffer shapes,
as Relax's legalized operators have) are ordinary functions of the module (one per distinct program
structure, named ``gos_<program>_<hash>``), so `relax.get_pipeline("zero")` fuses them
with their neighbours and MetaSchedule extracts and tunes them like the legalized
operators.

Always substitute into the *original* module with the full mapping: a replaced site
is no longer a site of the adapted module.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from tvm import te, tirx

from ..instructions import OpProgram
from ..instructions.lowering_te import to_te_tensors
from .importer import num_inputs
from .sites import REPLACEMENT_PARAM, Site, analyze

Replacement = tuple[OpProgram, Mapping[str, Any]]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor / parameter
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tvm tensor
        value = value.numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=np.float32))


def check_replacement(site: Site, program: OpProgram, weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check that ``program`` can stand in for ``site``; return its weights as float32 arrays.

    The program must take one input of the site's input shape, produce the site's
    output shape, and ``weights`` must hold exactly its weights with their shapes.
    """
    where = f"replacement '{program.name}' for site '{site.id}'"
    if len(program.inputs) != 1:
        raise ValueError(f"{where} takes {len(program.inputs)} inputs; a site replacement takes exactly one")
    (in_shape,) = program.inputs.values()
    if tuple(in_shape) != tuple(site.input_shape):
        raise ValueError(f"{where} takes input shape {tuple(in_shape)}, the site's input is {site.input_shape}")
    if tuple(program.output_shape) != tuple(site.output_shape):
        raise ValueError(f"{where} produces shape {tuple(program.output_shape)}, "
                         f"the site produces {site.output_shape}")
    missing = [w for w in program.weights if w not in weights]
    extra = [w for w in weights if w not in program.weights]
    if missing or extra:
        raise ValueError(f"{where}: weights missing {missing}, unexpected {extra}; "
                         f"the program's weights are {list(program.weights)}")
    out = {}
    for name, shape in program.weights.items():
        value = _to_numpy(weights[name])
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{where}: weight '{name}' has shape {tuple(value.shape)}, expected {tuple(shape)}")
        out[name] = value
    return out


def replacement_prim_func(program: OpProgram) -> tirx.PrimFunc:
    """The TensorIR PrimFunc that computes ``program`` inside a Relax module.

    Same computation and calling convention ``(inputs..., weights..., output)`` as
    `gos_tvm.instructions.to_te`, but the argument buffers have int64 shapes like the
    PrimFuncs that Relax's LegalizeOps produces: FuseTIR refuses to fuse a call_tir whose
    buffers disagree with its neighbours' in index type (int32 vs int64).
    """
    args, out = to_te_tensors(program, index_dtype="int64")
    return te.create_prim_func(args + [out])


def _prim_func_name(program: OpProgram) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", program.name)
    return f"gos_{base}_{program.structural_hash[:8]}"


def _copy_module(mod: tvm.IRModule) -> tvm.IRModule:
    return tvm.IRModule(dict(mod.functions), attrs=mod.attrs)


def _add_prim_func(bb: relax.BlockBuilder, program: OpProgram) -> tvm.ir.GlobalVar:
    """The GlobalVar of ``program``'s PrimFunc in the builder's module, added if absent."""
    name = _prim_func_name(program)
    mod = bb.get()
    if name in [gv.name_hint for gv in mod.functions]:
        return mod.get_global_var(name)
    return bb.add_func(replacement_prim_func(program).without_attr("global_symbol"), name)


def _staged_call(bb: relax.BlockBuilder, program: OpProgram, x: Any, weights: Mapping[str, Any],
                 relax_operators: bool = True) -> relax.Expr:
    """``program`` applied to ``x`` stage by stage (`instructions.stages`: each contraction its own
    kernel, so that MetaSchedule tunes each with the per-task budget; FuseOps fuses the point-wise
    stages into the one before them).  A stage that is a convolution or linear map becomes Relax's
    own operator (`graph.operators`, scheduled like the model's convolutions), any other stage a
    ``call_tir`` of its TensorIR kernel.  A program whose stage outputs are read by more than one
    later stage stays one kernel: a nested expression would compute the shared value twice."""
    from ..instructions.stages import stages
    from .operators import site_operator

    parts = stages(program)
    reads = [i for st in parts for i in st.inputs]
    if any(reads.count(st.output) > 1 for st in parts):
        parts = [program]
    env: dict[str, Any] = {next(iter(program.inputs)): x, **weights}
    for st in parts:
        value = site_operator(st, env) if relax_operators else None
        if value is None:
            gvar = _add_prim_func(bb, st)
            args = [env[v] for v in (*st.inputs, *st.weights)]
            value = relax.call_tir(gvar, relax.Tuple(args),
                                   relax.TensorType(list(program.shapes[st.output]), "float32"))
        env[st.output] = value
    return env[program.output]


def _rebuild(mod: tvm.IRModule, func: relax.Function, n_inputs: int, replace: Mapping[Any, Any],
             extra_params: Sequence[Any],
             tail: tuple[list[Any], Any] | None = None) -> relax.Function:
    """``func`` with the values of the bindings in ``replace`` swapped, ``extra_params``
    appended, dead bindings and unused parameters removed.  ``tail`` = (extra block
    bindings, new body) appends a non-dataflow block and returns a new value."""
    blocks = []
    for block in func.body.blocks:
        bindings = [relax.VarBinding(b.var, replace[b.var]) if isinstance(b, relax.VarBinding) and b.var in replace
                    else b for b in block.bindings]
        blocks.append(relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock)
                      else relax.BindingBlock(bindings))
    body_expr = func.body.body
    if tail is not None:
        blocks.append(relax.BindingBlock(tail[0]))
        body_expr = tail[1]
    params = list(func.params) + list(extra_params)
    ret_ty = func.ret_ty if tail is None else body_expr.ty
    new = relax.Function(params, relax.SeqExpr(blocks, body_expr), ret_ty, func.is_pure, func.attrs)
    new = _normalize(mod, new)
    new = relax.analysis.remove_all_unused(new)
    used = set()
    for v in relax.analysis.free_vars(new.body):
        used.add(v)
    kept = [p for i, p in enumerate(new.params) if i < n_inputs or p in used]
    return relax.Function(kept, new.body, new.ret_ty, new.is_pure, new.attrs)


def _normalize(mod: tvm.IRModule, func: relax.Function) -> relax.Function:
    """``func`` normalized (types filled in) in the context of ``mod``'s other functions."""
    ctx = _copy_module(mod)
    ctx["main"] = func
    return relax.transform.Normalize()(ctx)["main"]


def substitute(mod: tvm.IRModule, params: Mapping[str, np.ndarray], replacements: Mapping[str, Replacement],
               relax_operators: bool = True) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """A new ``(mod, params)`` in which each site in ``replacements`` is computed by its program.

    ``replacements`` maps a site id (see `find_sites`) to ``(program, weights)``; the
    program takes the site's input (one input, same shape) and produces its output
    (same shape); ``weights`` (numpy arrays or torch tensors) hold all its weights.
    The program's weights become parameters named ``"<site id>.replacement.<weight>"``;
    the parameters that only the replaced sites used are dropped from the signature
    and from the returned params.  Raises `KeyError` for an unknown or skipped site and
    `ValueError` for a program that does not fit its site.

    With ``relax_operators`` (the default), the program's stages that are convolutions or linear
    maps are written as Relax operators (`graph.operators`); without, every stage is a ``call_tir``
    of its TensorIR kernel, so even a program that computes the site's own operator is a new kernel
    (what the search uses to find a site's share of the model's latency).
    """
    params = dict(params)
    analysis = analyze(mod, params)
    bb = relax.BlockBuilder(_copy_module(mod))
    func = mod["main"]
    n = num_inputs(mod)
    taken = {p.name for p in func.params}
    replace: dict[Any, Any] = {}
    new_params: list[Any] = []
    new_values: dict[str, np.ndarray] = {}
    for site_id, (program, weights) in replacements.items():
        site = analysis.site(site_id)
        values = check_replacement(site, program, weights)
        x, out_var = site.refs
        wvars = []
        for wname, value in values.items():
            pname = f"{site.id}{REPLACEMENT_PARAM}{wname}"
            while pname in taken:
                pname += "_"
            taken.add(pname)
            var = relax.Var(pname, relax.TensorType(list(value.shape), "float32"))
            wvars.append(var)
            new_values[pname] = value
        replace[out_var] = _staged_call(bb, program, x, dict(zip(values, wvars)), relax_operators)
        new_params += wvars
    out = bb.get()
    new_func = _rebuild(out, func, n, replace, new_params)
    out["main"] = new_func
    kept = {p.name for p in new_func.params[n:]}
    out_params = {k: v for k, v in params.items() if k in kept}
    out_params.update({k: v for k, v in new_values.items() if k in kept})
    return out, out_params


def capture_module(mod: tvm.IRModule, params: Mapping[str, np.ndarray],
                   site_ids: Sequence[str] | None = None) -> tuple[tvm.IRModule, dict[str, np.ndarray], list[str]]:
    """A module whose ``main`` returns (input, output) of each site instead of the model output.

    Returns ``(mod, params, ids)``; the new ``main`` returns a flat tuple
    ``(in_0, out_0, in_1, out_1, ...)`` for the sites ``ids`` (all sites when
    ``site_ids`` is None), computing only what these values need.
    """
    analysis = analyze(mod, dict(params))
    ids = [s.id for s in analysis.sites] if site_ids is None else list(site_ids)
    sites = [analysis.site(i) for i in ids]
    func = mod["main"]
    n = num_inputs(mod)
    # Values defined in a dataflow block are only visible there: export them with one
    # extra output binding per block, then gather everything in a trailing block.
    wanted: list[Any] = []
    for s in sites:
        wanted += list(s.refs)
    block_of: dict[Any, int] = {}
    for i, block in enumerate(func.body.blocks):
        if isinstance(block, relax.DataflowBlock):
            for b in block.bindings:
                block_of[b.var] = i
    exported: dict[int, list[Any]] = {}
    for v in wanted:
        if isinstance(v, relax.Var) and v in block_of and v not in exported.get(block_of[v], []):
            exported.setdefault(block_of[v], []).append(v)
    blocks = []
    export_var: dict[int, Any] = {}
    for i, block in enumerate(func.body.blocks):
        bindings = list(block.bindings)
        if i in exported:
            fields = exported[i]
            var = relax.Var(f"gos_capture{i}", relax.TupleType([f.ty for f in fields]))
            bindings.append(relax.VarBinding(var, relax.Tuple(fields)))
            export_var[i] = var
        blocks.append(relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock)
                      else relax.BindingBlock(bindings))
    tail: list[Any] = []
    fields = []
    for k, v in enumerate(wanted):
        if isinstance(v, relax.Var) and v in block_of:
            i = block_of[v]
            item = relax.TupleGetItem(export_var[i], exported[i].index(v))
            var = relax.Var(f"gos_site{k}", v.ty)
            tail.append(relax.VarBinding(var, item))
            fields.append(var)
        else:  # a function input, a non-dataflow var, or a constant
            fields.append(v)
    result = relax.Var("gos_sites", relax.TupleType([f.ty for f in fields]))
    tail.append(relax.VarBinding(result, relax.Tuple(fields)))
    new = relax.Function(list(func.params), relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                         func.is_pure, func.attrs)
    new = _rebuild(mod, new, n, {}, [], tail=(tail, result))
    out = _copy_module(mod)
    out["main"] = new
    kept = {p.name for p in new.params[n:]}
    return out, {k: v for k, v in params.items() if k in kept}, ids


__all__ = ["substitute", "check_replacement", "capture_module", "replacement_prim_func", "Replacement"]
