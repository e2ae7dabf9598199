"""gos_tvm: Grassroots Operator Search on Apache TVM.

Public entry points are imported lazily (TVM and torch take seconds to import):

    from_torch, from_onnx   model import              (gos_tvm.graph)
    preset                  device target presets     (gos_tvm.hw)
    tune, TuneResult        the GOS search            (gos_tvm.search)
    UserError               a bad argument or input   (gos_tvm.errors)
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

from .threads import configure_runtime_threads

__version__ = "0.1.0"

# Before any TVM thread pool exists in this process or the ones it starts: see `gos_tvm.threads`.
try:
    configure_runtime_threads()
except ValueError as err:
    warnings.warn(str(err), stacklevel=2)

_LAZY = {
    "from_torch": "gos_tvm.graph",
    "from_onnx": "gos_tvm.graph",
    "preset": "gos_tvm.hw",
    "tune": "gos_tvm.search",
    "TuneResult": "gos_tvm.search",
    "UserError": "gos_tvm.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gos_tvm' has no attribute '{name}'")


__all__ = list(_LAZY)
