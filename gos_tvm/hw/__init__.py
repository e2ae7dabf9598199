"""Devices over TVM RPC: target presets, the tracker as a device pool, per-kernel MetaSchedule
tuning through the tracker, end-to-end measurement of compiled Relax modules, and a warm builder
that keeps tuning fast on small machines.

Names are imported lazily: `import gos_tvm.hw` (and `gos-tvm rpc --help`) does not import TVM.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    # presets
    "Preset": "presets", "preset": "presets", "PRESET_NAMES": "presets", "resolve_target": "presets",
    "resolve_preset": "presets",
    # tracker and local processes
    "DeviceUnavailableError": "tracker", "TrackerStatus": "tracker", "query_tracker": "tracker",
    "require_servers": "tracker", "request_session": "tracker", "LocalDevicePool": "tracker",
    "start_tracker": "tracker", "start_server": "tracker",
    # builder / runner
    "WarmBuilder": "builder", "TrackerRunner": "runner", "make_runner": "runner",
    # tuning
    "tune_primfunc": "tuning", "tune_primfuncs": "tuning", "tune_module": "tuning", "compile_tuned": "tuning",
    "KernelTuneResult": "tuning", "best_record": "tuning", "record_latency": "tuning",
    "open_database": "tuning", "database_records": "tuning",
    # measurement
    "measure_module": "measure", "LatencyStats": "measure", "export_module": "measure",
    "import_tensor_intrin": "_fastimport",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'gos_tvm.hw' has no attribute '{name}'")


__all__ = sorted(_LAZY)
