"""End-to-end latency of a compiled Relax module on a device reached through the RPC tracker.

The executable is exported on the host (cross-compiled with the preset's export function),
uploaded to a server under the key, loaded into a Relax VM on the device and timed with the VM's
time evaluator.  Over RPC the VM is driven statefully -- `set_input`, `invoke_stateful`,
`get_outputs` -- because a direct call returns an `RPCObjectRef` that cannot be indexed.
"""
from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .presets import Preset, resolve_preset
from .tracker import DeviceUnavailableError, request_session


@dataclass
class LatencyStats:
    """Latency over `repeat` timings (seconds; each timing is the mean of `number` runs).

    `raw` holds every timing; `outputs` the model's outputs (numpy) when they were asked for;
    `device` the preset name and `emulated` whether the device was an emulator.
    """

    median: float
    mean: float
    std: float
    min: float
    max: float
    raw: list[float]
    number: int = 1
    device: str = ""
    emulated: bool = False
    outputs: Optional[list[np.ndarray]] = field(default=None, repr=False)

    @classmethod
    def from_raw(cls, raw: Sequence[float], **kw: Any) -> "LatencyStats":
        raw = [float(x) for x in raw]
        if not raw:
            raise ValueError("no timings")
        return cls(median=statistics.median(raw), mean=statistics.fmean(raw),
                   std=statistics.pstdev(raw) if len(raw) > 1 else 0.0, min=min(raw), max=max(raw), raw=raw, **kw)

    def to_json(self) -> dict:
        return {"median_s": self.median, "mean_s": self.mean, "std_s": self.std, "min_s": self.min,
                "max_s": self.max, "raw_s": self.raw, "number": self.number, "device": self.device,
                "emulated": self.emulated}

    def __str__(self) -> str:
        tag = " (emulated)" if self.emulated else ""
        return (f"median {self.median * 1e3:.3f} ms, mean {self.mean * 1e3:.3f} ± {self.std * 1e3:.3f} ms "
                f"[{self.min * 1e3:.3f}, {self.max * 1e3:.3f}] over {len(self.raw)}x{self.number} runs{tag}")


def export_module(executable: Any, device: Union[str, Preset, None] = None, directory: Optional[str] = None) -> str:
    """Export a compiled module (`tvm.compile` output) as a shared library for `device`; returns the path."""
    p = resolve_preset(device)
    if not p.is_local:
        p.check_export()
    directory = directory or tempfile.mkdtemp(prefix="gos_tvm_export_")
    path = os.path.join(directory, f"model_{p.name}.so")
    executable.export_library(path, fcompile=p.export)
    return path


def _as_list(inputs: Union[Mapping[str, Any], Sequence[Any], np.ndarray, None]) -> list[np.ndarray]:
    if inputs is None:
        return []
    if isinstance(inputs, np.ndarray):
        return [inputs]
    if isinstance(inputs, Mapping):
        inputs = list(inputs.values())
    out = []
    for x in inputs:
        if hasattr(x, "detach"):  # torch tensor
            x = x.detach().cpu().numpy()
        out.append(np.ascontiguousarray(np.asarray(x)))
    return out


def measure_module(executable: Any, device: Union[str, Preset, None], tracker: tuple[str, int],
                   key: Optional[str] = None, inputs: Union[Mapping[str, Any], Sequence[Any], None] = None, *,
                   repeat: int = 10, number: int = 5, min_repeat_ms: int = 0, func_name: str = "main",
                   fetch_outputs: bool = False, queue_timeout: float = 60.0, session_timeout: float = 300.0,
                   retries: int = 1, library: Optional[str] = None) -> LatencyStats:
    """Time a compiled Relax module end to end on a device behind the RPC tracker.

    Parameters
    ----------
    executable:
        The output of `tvm.compile` / `compile_tuned` (anything with `export_library`); or None with
        `library` the path of an already exported shared library.
    device:
        The preset (or its name) the module was compiled for: its export function links the library.
    tracker, key:
        The tracker's (host, port); the key defaults to the preset's key.
    inputs:
        The model's inputs (numpy arrays or torch tensors, in order, or a dict in order).
    repeat, number, min_repeat_ms:
        `repeat` timings, each the mean of `number` runs (raised so a timing lasts `min_repeat_ms`).
    fetch_outputs:
        Also run once and return the outputs (as numpy, in `LatencyStats.outputs`).
    retries:
        Re-runs on another server if the session breaks (the server died).

    Raises DeviceUnavailableError if no server under the key becomes free within `queue_timeout`.
    """
    p = resolve_preset(device)
    key = key or p.key
    tmp = None
    if library is None:
        if executable is None:
            raise ValueError("give the compiled executable or library=path")
        tmp = tempfile.mkdtemp(prefix="gos_tvm_export_")
        library = export_module(executable, p, tmp)
    args = _as_list(inputs)
    errors = []
    try:
        for attempt in range(retries + 1):
            try:
                return _measure_once(library, tracker, key, args, repeat=repeat, number=number,
                                     min_repeat_ms=min_repeat_ms, func_name=func_name, fetch_outputs=fetch_outputs,
                                     queue_timeout=queue_timeout, session_timeout=session_timeout, preset=p)
            except DeviceUnavailableError:
                raise
            except Exception as err:  # noqa: BLE001
                errors.append(f"{type(err).__name__}: {err}")
                if attempt == retries or not _looks_like_lost_session(err):
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")
    finally:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _looks_like_lost_session(err: Exception) -> bool:
    msg = str(err).lower()
    return any(s in msg for s in ("socket", "connection", "closed", "broken pipe", "reset", "eof"))


def _measure_once(library: str, tracker: tuple[str, int], key: str, args: list[np.ndarray], *, repeat: int,
                  number: int, min_repeat_ms: int, func_name: str, fetch_outputs: bool, queue_timeout: float,
                  session_timeout: float, preset: Preset) -> LatencyStats:
    import tvm
    from tvm import relax

    sess = request_session(tracker[0], int(tracker[1]), key, queue_timeout=queue_timeout,
                           session_timeout=session_timeout)
    rlib = dev = vm = remote_args = timer = None
    try:
        remote_name = os.path.basename(library)
        sess.upload(library, remote_name)
        rlib = sess.load_module(remote_name)
        dev = sess.cpu(0)
        vm = relax.VirtualMachine(rlib, dev)
        remote_args = [tvm.runtime.tensor(a, dev) for a in args]
        vm.set_input(func_name, *remote_args)
        outputs = None
        if fetch_outputs:
            vm.invoke_stateful(func_name)
            from ..graph.compile import flatten_outputs

            outputs = flatten_outputs(vm.get_outputs(func_name))
        timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
        result = timer(func_name)
        return LatencyStats.from_raw(list(result.results), number=number, device=preset.name,
                                     emulated=preset.emulated, outputs=outputs)
    finally:
        # Every remote handle (module, VM, tensors, timer) keeps the session, and so the server,
        # busy; the VM holds reference cycles, so without a collection here the server stays taken
        # until the next garbage collection -- which a caller blocked waiting for a server never runs.
        sess = rlib = dev = vm = remote_args = timer = None  # noqa: F841
        gc.collect()


__all__ = ["LatencyStats", "measure_module", "export_module"]
