"""Model import, op-site discovery, substitution, activation capture, compilation and export.

Typical use::

    mod, params = from_torch(model, example_input)       # or from_onnx("model.onnx")
    sites = find_sites(mod, params)                       # [Site('layer1.0.conv1', conv2d, ...), ...]
    new_mod, new_params = substitute(mod, params, {"layer1.0.conv1": (program, weights)})
    acts = capture(mod, params, calibration_inputs)      # {site id: (site input, site output)}
    ex = compile_module(new_mod, new_params, target)      # optional database= (MetaSchedule)
    outputs = run(ex, x)                                  # host only
    export_library(ex, "model.so", target)                # cross-links for aarch64 / armv7 targets

``(mod, params)``: ``mod["main"]`` takes the model inputs and then one argument per
parameter; ``params`` maps parameter names (torch state-dict keys / ONNX initializer
names) to numpy arrays.  See the submodules for the details.
"""
from __future__ import annotations

import importlib
from typing import Any

from .capture import capture, split_samples
from .compile import (CROSS_COMPILERS, EM_AARCH64, EM_ARM, EM_X86_64, apply_database, as_target, bind_params,
                      compile_lowered,
                      compile_module, cross_compiler_for, elf_machine, elf_type, export_library, is_cross_target,
                      input_tensors, legalize, load_vm, run)
from .layout import CONV_LAYOUTS, conv_layout, current_conv_layout
from .importer import UnsupportedModelError, from_onnx, from_torch, model_inputs, num_inputs
from .rewrite import Replacement, capture_module, check_replacement, replacement_prim_func, substitute
from .sites import SITE_KINDS, Site, SiteAnalysis, SkippedSite, analyze, find_sites, find_skipped

_LAZY = {"torch_reference": "gos_tvm.graph.reference", "capture_torch": "gos_tvm.graph.reference",
         "fold_batchnorm": "gos_tvm.graph.fold"}


def __getattr__(name: str) -> Any:  # torch is imported only when the torch helpers are used
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gos_tvm.graph' has no attribute '{name}'")


__all__ = [
    "from_torch", "from_onnx", "UnsupportedModelError", "model_inputs", "num_inputs",
    "Site", "SkippedSite", "SiteAnalysis", "SITE_KINDS", "analyze", "find_sites", "find_skipped",
    "substitute", "check_replacement", "capture_module", "replacement_prim_func", "Replacement",
    "capture", "split_samples", "CONV_LAYOUTS", "conv_layout", "current_conv_layout",
    "as_target", "bind_params", "legalize", "apply_database", "compile_module", "compile_lowered", "run", "load_vm", "input_tensors", "export_library",
    "cross_compiler_for", "is_cross_target", "elf_machine", "elf_type", "CROSS_COMPILERS",
    "EM_ARM", "EM_AARCH64", "EM_X86_64", "torch_reference", "capture_torch", "fold_batchnorm",
]
