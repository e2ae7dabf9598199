"""What a user would run instead: the original model in onnxruntime and in PyTorch, timed beside
the tuned TVM models in one process, on this machine's cores.

A speed-up over the tuned original is only half the claim; the other half is whether the TVM model
beats the runtimes a user already has.  Every runtime is called from Python, one batch-1 call at a
time, the way a Python caller sees it, and the runtimes take turns round by round, so that a
minute of noise on a shared host falls on all of them (`time_alternately`).

Only meaningful where the device is this machine: onnxruntime and PyTorch run here, not on a
board behind RPC.
"""
from __future__ import annotations

from pathlib import Path
import statistics
import time
from typing import Any, Callable, Mapping

import numpy as np


def export_onnx(model: Any, example: np.ndarray, path: str | Path, *, atol: float = 1e-3) -> Path:
    """Export a torch module (switched to eval mode) to ONNX (opset 17, TorchScript exporter: no
    onnxscript needed) and check that onnxruntime computes what torch does on `example`; ValueError
    if not."""
    import torch

    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(example),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
        want = model(torch.from_numpy(example)).numpy()
    got = onnxruntime_call(path, example, threads=1)()[0]
    if not np.allclose(got, want, atol=atol, rtol=1e-3):
        raise ValueError(f"onnxruntime's output of {path} differs from torch's by {np.abs(got - want).max():.3g}")
    return path


def onnxruntime_call(path: str | Path, example: np.ndarray, threads: int) -> Callable[[], list]:
    """One batch-1 call of an ONNX model in onnxruntime (all graph optimizations, `threads` intra-op
    threads), as a function of nothing."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(example)}
    return lambda: session.run(None, feed)


def torch_call(model: Any, example: np.ndarray, threads: int) -> Callable[[], Any]:
    """One batch-1 call of a torch module in eager mode (switched to eval mode), without autograd, on
    `threads` threads."""
    import torch

    model.eval()
    torch.set_num_threads(int(threads))
    x = torch.from_numpy(np.ascontiguousarray(example))

    def call() -> Any:
        with torch.no_grad():
            return model(x)
    return call


def tvm_call(executable: Any, example: np.ndarray) -> Callable[[], Any]:
    """One batch-1 call of a compiled Relax module (or exported library) on this machine's CPU."""
    import tvm

    from ..graph.compile import load_vm

    vm = load_vm(executable)
    x = tvm.runtime.tensor(np.ascontiguousarray(example), tvm.cpu())
    return lambda: vm["main"](x)


def time_alternately(calls: Mapping[str, Callable[[], Any]], *, rounds: int = 5, calls_per_round: int = 100,
                     warmup: int = 10, settle_s: float = 0.5) -> dict[str, dict]:
    """Time each function `calls_per_round` times per round, the functions taking turns for `rounds`
    rounds; before its turn each is called `warmup` times untimed, after a `settle_s` pause (a runtime's
    thread pool keeps spinning for a while after its last call, which slows the next one's threads).

    Returns per name: median_s, min_s, mean_s, p25_s, p75_s, spread ((p75 - p25) / median) and
    round_medians_s, over all timed calls."""
    if rounds < 1 or calls_per_round < 1:
        raise ValueError(f"rounds and calls_per_round must be >= 1, got {rounds} and {calls_per_round}")
    times: dict[str, list[float]] = {name: [] for name in calls}
    round_medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            time.sleep(settle_s)
            for _ in range(warmup):
                fn()
            ts = []
            for _ in range(calls_per_round):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            times[name] += ts
            round_medians[name].append(statistics.median(ts))
    out = {}
    for name, ts in times.items():
        p25, median, p75 = (float(q) for q in np.percentile(ts, [25, 50, 75]))
        out[name] = {"median_s": median, "min_s": min(ts), "mean_s": statistics.fmean(ts), "p25_s": p25,
                     "p75_s": p75, "spread": (p75 - p25) / median, "calls": len(ts),
                     "round_medians_s": round_medians[name]}
    return out


def outputs_agree(calls: Mapping[str, Callable[[], Any]], *, atol: float = 1e-3) -> dict[str, float]:
    """Max |difference| of each function's first output from the first function's: the runtimes
    compared must compute the same model.  ValueError naming the runtime that does not."""
    def first(out: Any) -> np.ndarray:
        while isinstance(out, (list, tuple)) or type(out).__name__ == "Array":
            out = out[0]
        return out.numpy() if hasattr(out, "numpy") else np.asarray(out)

    names = list(calls)
    ref = first(calls[names[0]]())
    diffs = {}
    for name in names[1:]:
        got = first(calls[name]())
        diffs[name] = float(np.abs(got - ref).max())
        if got.shape != ref.shape or diffs[name] > atol * max(1.0, float(np.abs(ref).max())):
            raise ValueError(f"{name!r} computes another function than {names[0]!r} (max |diff| {diffs[name]:.3g}, "
                             f"shapes {got.shape} and {ref.shape})")
    return diffs


def table(stats: Mapping[str, dict], reference: str) -> str:
    """A text table of `time_alternately`'s result, each row's median also as a ratio to `reference`'s."""
    ref = stats[reference]["median_s"]
    width = max(len(n) for n in stats)
    lines = [f"{'runtime':<{width}}  median ms    min ms   spread  {reference} / this"]
    for name, s in stats.items():
        lines.append(f"{name:<{width}}  {s['median_s'] * 1e3:9.3f} {s['min_s'] * 1e3:9.3f} {s['spread']:7.0%}"
                     f"  {ref / s['median_s']:.2f}x")
    return "\n".join(lines)


__all__ = ["export_onnx", "onnxruntime_call", "torch_call", "tvm_call", "time_alternately", "outputs_agree", "table"]
