"""Model import: torch (via `torch.export`) and ONNX into a Relax module plus its parameters.

Both importers return ``(mod, params)``:

* ``mod`` is a Relax `IRModule` whose ``main`` takes the model's inputs first and then one
  argument per *parameter* (trained weight); ``main`` carries the attribute ``num_input``
  (the number of real model inputs).
* ``params`` maps each parameter argument's name to its value (a float32 numpy array).

Parameters are kept as function arguments, not bound as constants, because that is what
makes the rest of `gos_tvm.graph` simple: a weight has a *name* (the torch state-dict key,
e.g. ``layer1.0.conv1.weight``, or the ONNX initializer name), op sites are named after
the weights they use, a substitution swaps parameter arguments, and the module stays
small enough to print and serialise.  `from_torch` folds each BatchNorm that follows a
convolution or linear layer into that layer first (`gos_tvm.graph.fold`); buffers that are
not trainable parameters (the running statistics of a BatchNorm that could not be folded)
stay in the module as constants.  `compile_module` binds ``params`` as constants before
compiling.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np
import tvm
from tvm import relax


class UnsupportedModelError(NotImplementedError):
    """The model uses an operator or construct that cannot be imported."""


def _rename_params(mod: tvm.IRModule, names: Sequence[str]) -> tvm.IRModule:
    """Give the parameter arguments of ``main`` (those after ``num_input``) the given names."""
    func = mod["main"]
    n = int(func.attrs["num_input"])
    old = list(func.params[n:])
    if len(old) != len(names):
        raise ValueError(f"main has {len(old)} parameter arguments, got {len(names)} names")
    new = [relax.Var(name, v.ty) for v, name in zip(old, names)]
    bound = func.bind_params(dict(zip(old, new)))
    func = relax.Function(list(bound.params) + new, bound.body, bound.ret_ty, bound.is_pure, bound.attrs)
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    out["main"] = func
    return out


def _detach(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[np.ndarray]]:
    mod, detached = relax.frontend.detach_params(mod)
    values = [np.asarray(t.numpy()) for t in detached.get("main", [])]
    return mod, values


def _check_float32(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in params.items():
        if value.dtype != np.float32:
            raise UnsupportedModelError(
                f"parameter '{name}' has dtype {value.dtype}; gos_tvm handles float32 models only "
                "(convert the model with model.float() first)")
        out[name] = value
    return out


def _unsupported_from_assert(err: AssertionError) -> str | None:
    """TVM's torch frontend reports unsupported ops as `AssertionError("Unsupported function types [...]")`."""
    match = re.search(r"Unsupported function types? \[(.*)\]", str(err))
    if not match:
        return None
    ops = [o.strip().strip("'\"") for o in match.group(1).split(",") if o.strip()]
    return ", ".join(f"aten.{o}" for o in ops)


def from_torch(model: Any, example_inputs: Any, *,
               fold_batchnorm: bool = True) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Import a `torch.nn.Module` through `torch.export` into a Relax module and its parameters.

    ``example_inputs`` is a tensor (or numpy array) or a tuple of them; their shapes become
    the module's static input shapes.  The model is exported in eval mode (its training
    flag is restored afterwards).  Parameter arguments of ``main`` are named by their
    state-dict keys (``"layer1.0.conv1.weight"``), so op sites are named after the torch
    modules that own them (see `find_sites`).

    With ``fold_batchnorm`` (default) every BatchNorm right after a convolution or linear layer
    is folded into it first (`gos_tvm.graph.fold_batchnorm`), as inference runtimes do: the
    module then has the folded weights and a bias for such layers (``<layer>.bias``).

    Raises `UnsupportedModelError` naming the operator(s) when torch.export cannot capture
    the model or TVM's frontend has no conversion for one of its operators.
    """
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    args = tuple(torch.as_tensor(x) if isinstance(x, np.ndarray) else x for x in example_inputs)

    if fold_batchnorm:
        from .fold import fold_batchnorm as _fold

        model, _ = _fold(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                ep = torch.export.export(model, args)
            except Exception as err:  # torch raises many types (Unsupported, UserError, ...)
                raise UnsupportedModelError(
                    f"torch.export could not capture {type(model).__name__}: {type(err).__name__}: "
                    f"{_first_lines(str(err))}") from err
    finally:
        model.train(was_training)

    try:
        mod = from_exported_program(ep, keep_params_as_input=True)
    except AssertionError as err:
        ops = _unsupported_from_assert(err)
        if ops is None:
            raise UnsupportedModelError(f"TVM's torch frontend failed on {type(model).__name__}: {err}") from err
        raise UnsupportedModelError(
            f"{type(model).__name__} uses operator(s) that TVM's torch frontend cannot convert: {ops}") from err
    # TVM 0.27 has no tvm.error.TVMError: its FFI errors arrive as RuntimeError (or a builtin type
    # named by the C++ error kind, e.g. ValueError, TypeError, IndexError, AttributeError).
    except (NotImplementedError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as err:
        raise UnsupportedModelError(
            f"TVM's torch frontend failed on {type(model).__name__}: {type(err).__name__}: "
            f"{_first_lines(str(err))}") from err

    from torch.export.graph_signature import InputKind

    targets = {spec.arg.name: spec.target for spec in ep.graph_signature.input_specs
               if spec.kind == InputKind.PARAMETER}
    mod, values = _detach(mod)
    func = mod["main"]
    n = int(func.attrs["num_input"])
    names = [targets.get(v.name, v.name) for v in func.params[n:]]
    mod = _rename_params(mod, names)
    return mod, _check_float32(mod, dict(zip(names, values)))


def _first_lines(text: str, n: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def from_onnx(path_or_model: Any, shape_dict: dict[str, Sequence[int]] | None = None,
              opset: int | None = None) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Import an ONNX model (a path or an `onnx.ModelProto`) into a Relax module and its parameters.

    Initializers become parameter arguments named as in the ONNX graph (for a model
    exported from torch, usually its state-dict keys, e.g. ``"fc.weight"``).  Give
    ``shape_dict`` ({input name: shape}) to fix symbolic input dimensions: op sites need
    static shapes.

    Raises `UnsupportedModelError` naming the ONNX operator(s) that TVM cannot convert.
    """
    import onnx
    from tvm.relax.frontend.onnx import from_onnx as _from_onnx

    if isinstance(path_or_model, (str, os.PathLike)):
        path = os.fspath(path_or_model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model {path!r}: no such file")
        try:
            model = onnx.load(path)
            if not model.graph.node:
                raise ValueError("the file holds no graph (empty or not an ONNX model)")
        except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and others
            raise UnsupportedModelError(f"{path} is not a readable ONNX model: {type(err).__name__}: "
                                        f"{_first_lines(str(err), 2)}") from None
    elif isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
    else:
        raise TypeError(f"from_onnx expects a path or an onnx.ModelProto, got {type(path_or_model).__name__}")
    shape_dict = {k: list(v) for k, v in shape_dict.items()} if shape_dict else None
    try:
        mod = _from_onnx(model, shape_dict=shape_dict, opset=opset, keep_params_in_input=True,
                         sanitize_input_names=False)
    except tvm.error.OpNotImplemented as err:
        raise UnsupportedModelError(f"ONNX model uses operator(s) that TVM cannot convert: "
                                    f"{_first_lines(str(err), 2)}") from err
    except Exception as err:
        raise UnsupportedModelError(f"TVM's ONNX frontend failed: {type(err).__name__}: "
                                    f"{_first_lines(str(err))}") from err
    func = mod["main"]
    if "num_input" not in func.attrs:
        func = func.with_attr("num_input", len(func.params))
        mod = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
        mod["main"] = func
    n = int(mod["main"].attrs["num_input"])
    names = [v.name for v in mod["main"].params[n:]]
    mod, values = _detach(mod)
    return mod, _check_float32(mod, dict(zip(names, values)))


def model_inputs(mod: tvm.IRModule) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, static shape, dtype) of each model input of ``main`` (the arguments before the parameters)."""
    func = mod["main"]
    n = num_inputs(mod)
    out = []
    for v in func.params[:n]:
        shape = tuple(int(d) for d in v.ty.shape) if v.ty.shape is not None else ()
        out.append((v.name, shape, str(v.ty.dtype)))
    return out


def num_inputs(mod: tvm.IRModule) -> int:
    """Number of model inputs of ``main``: its ``num_input`` attribute, else all its arguments."""
    func = mod["main"]
    attrs = func.attrs
    if attrs is not None and "num_input" in attrs:
        return int(attrs["num_input"])
    return len(func.params)


__all__ = ["from_torch", "from_onnx", "UnsupportedModelError", "model_inputs", "num_inputs"]
