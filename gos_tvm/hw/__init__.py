"""Devices over TVM RPC, in three layers:

    device pool and processes   presets.py (device presets), tracker.py (tracker and servers as a
                                device pool), emulate.py (a board under qemu), rpc_cli.py
                                (`gos-tvm rpc ...`), measure.py (end-to-end timing over RPC),
                                deploy_threads.py (the TVM_NUM_THREADS to ship a library with),
                                vm_calls.py (a model's kernels timed alone beside the whole call)
    metaschedule/               MetaSchedule plug-ins: the warm builder, the tracker runner, their
                                workers, the fast tensor-intrinsic import
    tuning/                     tuning sessions (kernels, whole modules), database queries,
                                verification of tuned records, `compile_tuned`

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
    # MetaSchedule plug-ins
    "WarmBuilder": "metaschedule.builder", "TrackerRunner": "metaschedule.runner",
    "make_runner": "metaschedule.runner",
    # tuning
    "tune_primfunc": "tuning", "tune_primfuncs": "tuning", "tune_module": "tuning", "tune_module_per_task": "tuning", "tune_tasks_per_task": "tuning", "task_budgets": "tuning", "compile_tuned": "tuning",
    "KernelTuneResult": "tuning", "best_record": "tuning", "record_latency": "tuning",
    "open_database": "tuning", "database_records": "tuning", "builder_and_runner": "tuning",
    # measurement
    "measure_module": "measure", "LatencyStats": "measure", "export_module": "measure",
    "time_libraries_at_threads": "deploy_threads", "time_vm_calls": "vm_calls", "record_calls": "vm_calls",
    "import_tensor_intrin": "metaschedule._fastimport",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'gos_tvm.hw' has no attribute '{name}'")


__all__ = sorted(_LAZY)
