"""Checks of a run's inputs, made before any work starts, and the identity of a work directory.

`gos_tvm.tune` and `gos-tvm tune` call these first: a wrong preset, an unreachable tracker,
calibration data of the wrong shape or labels of the wrong shape fail here within seconds,
with one line that names the bad value and what to do, instead of after minutes of tuning,
and before anything is written to the work directory.

Every such mistake raises `UserError` (a ValueError); the command line prints its message as
one line on stderr and exits with status 2 (`--debug` shows the traceback).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import UserError


# ----------------------------------------------------------------------------------- numbers


def check_int(name: str, value: Any, minimum: int, *, allow_none: bool = False) -> int | None:
    """`value` as an int >= `minimum` (None passes when `allow_none`), else UserError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, minimum: float, maximum: float = math.inf, *,
                min_exclusive: bool = False) -> float:
    """`value` as a finite float in [minimum, maximum] ((minimum, maximum] when `min_exclusive`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < minimum or value > maximum or (min_exclusive and value == minimum):
        low = f"> {minimum:g}" if min_exclusive else f">= {minimum:g}"
        high = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise UserError(f"{name} must be a finite number {low}{high}, got {value!r}")
    return float(value)


#: the least value of each integer search option (see `SearchOptions`; max_flops_ratio is in (0, 1]).
#: An option missing here is passed on unchecked.
OPTION_MINIMUM: dict[str, int] = {"trials": 1, "trials_per_task": 1, "max_rounds": 1, "kernel_trials": 1,
                                   "max_sites": 0, "tries_per_site": 1, "measure_per_site": 1, "depth": 1, "fit_steps": 0, "calib_samples": 2,
                                   "screen_per_site": 0, "screen_fit_steps": 0,
                                   "generations": 0, "rounds": 1, "population": 1, "repeat": 1, "seed": 0,
                                   "distill_steps": 0, "final_distill_steps": 0, "recover_steps": 0,
                                   "distill_samples": 2, "final_distill_samples": 2, "distill_batch": 1}


def check_options(options: Mapping[str, Any]):
    """The `SearchOptions` of a run, each budget and count checked (UserError names the bad one)."""
    from .gos import SearchOptions

    fields = {f.name: f for f in dataclasses.fields(SearchOptions)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise UserError(f"unknown option(s) {unknown}; the options are: {', '.join(fields)}")
    for name, value in options.items():
        if name == "max_flops_ratio":
            check_float(name, value, 0.0, 1.0, min_exclusive=True)
        elif name in ("distill_lr", "distill_temperature"):
            check_float(name, value, 0.0, float("inf"), min_exclusive=True)
        elif name == "distill_task" and value not in ("auto", "classification", "regression"):
            raise UserError(f"distill_task must be 'auto', 'classification' or 'regression', got {value!r}")
        elif name in ("distill", "row_split", "serial_kernels") and not isinstance(value, (bool, np.bool_)):
            raise UserError(f"{name} must be True or False, got {value!r}")
        elif name == "time_budget":
            if value is not None:
                check_float(name, value, 0.0, min_exclusive=True)
        elif name in OPTION_MINIMUM:
            # An option whose default is None (no limit, or derived) accepts None.
            check_int(name, value, OPTION_MINIMUM[name], allow_none=fields[name].default is None)
    return SearchOptions(**options)


# ----------------------------------------------------------------------------------- device


def parse_tracker(tracker: Any) -> tuple[str, int] | None:
    """The tracker as (host, port) from 'HOST:PORT' or a (host, port) pair; None stays None."""
    if tracker is None:
        return None
    if isinstance(tracker, str):
        host, sep, port = tracker.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UserError(f"the tracker must be HOST:PORT, e.g. 127.0.0.1:9190; got {tracker!r}")
    elif isinstance(tracker, (tuple, list)) and len(tracker) == 2:
        host, port = tracker
    else:
        raise UserError(f"the tracker must be 'HOST:PORT' or (host, port), got {tracker!r}")
    if isinstance(port, bool) or not str(port).isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"the tracker's port must be 1..65535, got {port!r} (in {tracker!r})")
    return str(host), int(port)


def check_device(target: Any, tracker: Any = None, key: str | None = None, *,
                 tracker_timeout: float = 5.0):
    """The device preset of `target`, checked before any work: the preset exists and is sane, its
    export toolchain is on this host, and the device can be reached -- the tracker answers and
    holds a server under the key, or (no tracker) the device is this machine or a built emulator.

    Returns (preset, (host, port) or None).  Raises UserError.
    """
    from ..hw import DeviceUnavailableError, Preset, resolve_preset

    try:
        device = resolve_preset(target)
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None
    if not isinstance(device, Preset):  # pragma: no cover - resolve_preset returns Presets
        raise UserError(f"target must be a preset name or a Preset, got {target!r}")
    if isinstance(device.num_cores, bool) or not isinstance(device.num_cores, numbers.Integral) \
            or device.num_cores < 1:
        raise UserError(f"device {device.name!r} has num_cores={device.num_cores!r}; it must be >= 1")
    addr = parse_tracker(tracker)
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise UserError(f"the RPC key must be a non-empty string, got {key!r}")
    if addr is None and not device.is_local and not device.emulated:
        raise UserError(f"device {device.name!r} is not this machine: pass tracker=(host, port) of the RPC "
                        "tracker its servers registered with (`--tracker HOST:PORT`, see rpc/README.md), or use "
                        f"its emulated form (gos_tvm.hw.emulate.emulated_preset({device.name!r}), `--emulated` "
                        "on the command line) where one exists")
    if not device.is_local:
        try:
            device.check_export()
        except RuntimeError as err:
            raise UserError(str(err)) from None
    if addr is not None:
        from ..hw import require_servers

        k = key or device.key
        try:
            require_servers(addr[0], addr[1], k, 1, timeout=tracker_timeout)
        except DeviceUnavailableError as err:
            raise UserError(str(err)) from None
        return device, addr
    if device.emulated:
        from ..hw import emulate

        if not emulate.is_built(device.name):
            raise UserError(f"the emulated {device.name} is not built on this machine: build it once with "
                            f"`gos-tvm rpc emulate {device.name} --build-only` (needs root), or pass a tracker")
    return device, None


# ----------------------------------------------------------------------------------- data


def _array(name: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as err:  # noqa: BLE001 - numpy raises several types for ragged input
        raise UserError(f"{name} is not an array ({type(err).__name__}: {err})") from None


def check_calib(calib_data: Any, input_shape: tuple[int, ...] | None = None,
                input_dtype: str | None = None) -> np.ndarray:
    """Calibration inputs (N, ...) as float32, N >= 2, matching the model's input (batch aside)."""
    x = _array("calib_data", calib_data)
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) < 2:
        raise UserError(f"calib_data must be a numeric batch of model inputs (N, ...) with N >= 2, "
                        f"got shape {x.shape} dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise UserError("calib_data holds NaN or infinite values")
    if input_dtype is not None and input_dtype != "float32":
        raise UserError(f"the model's input has dtype {input_dtype}; gos_tvm handles float32 models only")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise UserError(f"calib_data has samples of shape {tuple(x.shape[1:])} but the model's input is "
                        f"{tuple(input_shape)} (batch first): pass inputs of shape (N, "
                        f"{', '.join(map(str, input_shape[1:]))})")
    return x.astype("float32", copy=False)


def check_val_data(val_data: Any, sample_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) for classification accuracy: x of the model's sample shape, y integer labels (N,)."""
    if not isinstance(val_data, (tuple, list)) or len(val_data) != 2:
        raise UserError(f"val_data must be a pair (x, y) of inputs and integer labels, got {type(val_data).__name__}")
    x, y = _array("val_data x", val_data[0]), _array("val_data y", val_data[1])
    if x.dtype.kind not in "fiu" or x.ndim < 1 or tuple(x.shape[1:]) != tuple(sample_shape):
        raise UserError(f"val_data x must be a numeric batch (N, {', '.join(map(str, sample_shape))}) like "
                        f"calib_data, got shape {x.shape} dtype {x.dtype}")
    if len(x) < 1:
        raise UserError("val_data holds no samples")
    if y.ndim != 1:
        raise UserError(f"val_data labels must have shape (N,) (one class index per sample), got {y.shape}: "
                        "pass y.reshape(-1) if they are (N, 1), or eval_fn for other scores")
    if len(y) != len(x):
        raise UserError(f"val_data has {len(x)} inputs but {len(y)} labels: they must be the same length")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype("int64")
    if y.dtype.kind not in "iu":
        raise UserError(f"val_data labels must be integer class indices, got dtype {y.dtype}: "
                        "pass y.astype(int), or eval_fn for other scores")
    if (y < 0).any():
        raise UserError(f"val_data labels must be class indices >= 0, got {int(y.min())}")
    return x.astype("float32", copy=False), y


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """A short hash of arrays' shapes, dtypes and bytes: which data a work directory was made with."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def score_identity(eval_fn: Callable) -> str:
    """What a run is scored with: the validation data's fingerprint for classification accuracy
    (set by `tune` on its evaluation function), else the user's function by name -- a work
    directory cannot see inside `eval_fn`; change its name or the work directory when it changes."""
    tag = getattr(eval_fn, "gos_identity", None)
    if tag:
        return str(tag)
    return f"eval_fn {getattr(eval_fn, '__module__', '?')}.{getattr(eval_fn, '__qualname__', repr(eval_fn))}"


#: Options a work directory may be resumed with changed (the state records each run's budgets).
#: A later round starts from what the earlier ones chose, so a rerun with more `rounds` continues.
RESUMABLE_OPTIONS = ("trials", "trials_per_task", "time_budget", "rounds")

#: Options added after work directories were written, with the value that means "as before": they
#: enter the identity only when set otherwise, so an older directory still resumes.
LATER_OPTIONS = {"recover_steps": 0, "row_split": False, "serial_kernels": False}


def run_identity(model_fingerprint: str, device, options, calib: np.ndarray, eval_fn: Callable,
                 accuracy_budget: float) -> dict[str, Any]:
    """Everything that changes a search's results, as stored in (and compared with) run.json.

    A resumed run reuses the directory's measurements, scores and decisions, so any difference
    here is refused (`WorkDir` names the field): the model, the device and its target, the
    calibration data (as used: the longest of the first `calib_samples`, `distill_samples` and
    `final_distill_samples`), the validation data and labels (or the
    score function), the accuracy budget and every search option.
    """
    identity: dict[str, Any] = {"model": model_fingerprint, "device": device.name, "target": str(device.target),
                                "calib_data": fingerprint_arrays(calib), "score": score_identity(eval_fn),
                                "accuracy_budget": float(accuracy_budget)}
    if device.emulated:  # emulation timings must never be resumed as the board's
        identity["emulated"] = True
    from ..graph.layout import current_conv_layout

    if current_conv_layout() != "NCHW":  # other kernels, other timings (NCHW dirs keep their identity)
        identity["conv_layout"] = current_conv_layout()
    # Whole-model tuning budgets are not part of it: resuming with a larger one continues tuning from
    # the records in the database (the measurement-log keys of model latencies carry the budget).
    identity.update(options_identity(options))
    return identity


def options_identity(options) -> dict[str, Any]:
    """The search options that are part of a work directory's identity (see `run_identity`)."""
    return {k: v for k, v in vars(options).items()
            if k not in RESUMABLE_OPTIONS and not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])}


# ----------------------------------------------------------------------------------- tune()


def classification_eval(x: np.ndarray, y: np.ndarray) -> Callable:
    """Accuracy of predict(x).argmax(-1) against labels y, tagged with the data's fingerprint (the
    work directory's identity records which validation data its scores were computed on)."""

    def evaluate(predict) -> float:
        return float((predict(x).argmax(-1) == y).mean())

    evaluate.gos_identity = f"accuracy on val_data {fingerprint_arrays(x, y)}"
    return evaluate


def validate_tune_inputs(mod: Any, target: Any, *, params: Mapping[str, np.ndarray] | None, calib_data: Any,
                         val_data: Any, eval_fn: Callable | None, accuracy_budget: Any, tracker: Any,
                         key: str | None, options: Mapping[str, Any], example_inputs: Any = None,
                         warm_start: Any = None) -> dict[str, Any]:
    """Every check of `gos_tvm.tune`'s arguments, cheapest first, before any work starts.

    Returns {'device', 'tracker', 'mod', 'params', 'calib', 'eval_fn', 'options'}: the preset, the
    tracker as (host, port) or None, the Relax module and parameters (a torch module is imported
    here), the calibration data as float32, the score function and the `SearchOptions`.
    Raises UserError naming the first bad value.
    """
    import os
    from pathlib import Path

    opts = check_options(options)
    check_float("accuracy_budget", accuracy_budget, 0.0)
    if eval_fn is not None and not callable(eval_fn):
        raise UserError(f"eval_fn must be a function predict -> score, got {type(eval_fn).__name__}")
    if eval_fn is None and val_data is None:
        raise UserError("give val_data=(x, y) for classification accuracy, or eval_fn(predict) -> score")
    if warm_start is not None and not Path(os.fspath(warm_start)).is_file():
        raise UserError(f"warm_start {os.fspath(warm_start)!r} is not a file: pass the cost_model.json of an "
                        "earlier work directory")
    calib = check_calib(calib_data)
    device, addr = check_device(target, tracker, key)

    from .. import graph

    if hasattr(mod, "state_dict") and hasattr(mod, "forward"):  # a torch module
        import torch

        example = example_inputs if example_inputs is not None else torch.from_numpy(calib[:1])
        mod, params = graph.from_torch(mod.eval(), example)
    elif not hasattr(mod, "functions") or "main" not in [gv.name_hint for gv in mod.functions]:
        raise UserError(f"mod must be a Relax IRModule with 'main' (from gos_tvm.from_torch / from_onnx) or a "
                        f"torch.nn.Module, got {type(mod).__name__}")
    params = dict(params or {})
    inputs = graph.model_inputs(mod)
    if len(inputs) != 1:
        raise UserError(f"the model takes {len(inputs)} inputs ({', '.join(n for n, _, _ in inputs)}); "
                        "gos_tvm tunes models with one input")
    _, shape, dtype = inputs[0]
    calib = check_calib(calib, shape, dtype)
    if eval_fn is None:
        x, y = check_val_data(val_data, calib.shape[1:])
        eval_fn = classification_eval(x, y)
    return {"device": device, "tracker": addr, "mod": mod, "params": params, "calib": calib,
            "eval_fn": eval_fn, "options": opts}
