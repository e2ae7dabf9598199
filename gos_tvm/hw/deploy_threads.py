"""Which ``TVM_NUM_THREADS`` to ship an exported library with, found by timing it on this machine.

TVM's runtime sizes its thread pool once per process, so the only way to compare thread counts is
one fresh process per count.  The answer depends on the model, not just the machine: an adapted
model made of many short kernels can run faster on one thread than on two (vgg-style on
Fashion-MNIST, 2-core Xeon: the adapted model 81 us on one thread, 129 us on two; its original 174
us on one, 140 us on two).  The pool's wake-ups are not why (spinning longer or not binding threads
leaves the two-thread time as it is; README, "One thread"): on two threads each kernel costs 2-4 us
more inside the model than alone, on one thread about nothing (`gos_tvm.hw.vm_calls`): mostly
reading what the other core wrote (benchmarks/bench_cross_core.py).

Each library and count is timed the way a Python caller sees it, one batch-1 call at a time
(median of `calls` calls), all of them taking turns for `rounds` rounds; a count's time is its best
round.  Timing the original and the adapted library together gives the speed-up with each at its
own fastest count.  Only for libraries built for this machine's CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..threads import THREAD_VARIABLES, host_cores

# A fresh process that imports TVM only (gos_tvm would set the variable) and times the library.
_CHILD = r"""
import json, sys, time
import numpy as np
import tvm, tvm_ffi
from tvm import relax

library, example, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
vm = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
x = tvm.runtime.tensor(np.load(example))
main = vm["main"]
for _ in range(min(calls, 200)):
    main(x)
times = []
for _ in range(calls):
    t0 = time.perf_counter()
    main(x)
    times.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({"median_s": float(np.median(times)),
                              "threads": int(tvm_ffi.get_global_func("runtime.NumThreads")())}))
"""


def time_libraries_at_threads(libraries: Mapping[str, str | os.PathLike], example: np.ndarray, *,
                              threads: Iterable[int] | None = None, rounds: int = 3, calls: int = 300) -> dict:
    """Time each exported Relax library of `libraries` (name -> path) on `example` (one batch-1
    input) under each ``TVM_NUM_THREADS`` in `threads` (default: 1 and this host's physical cores),
    each library and count in a fresh process, all of them taking turns in every round.

    Returns ``{"libraries": {name: {"path", "seconds": {count: best round's median per call},
    "best": count}}, "threads", "rounds", "calls"}``.  RuntimeError with the child's error when a
    library does not run here."""
    counts = sorted({int(t) for t in (threads or (1, host_cores()))})
    if not counts or counts[0] < 1 or rounds < 1 or calls < 1:
        raise ValueError(f"need thread counts >= 1, rounds >= 1 and calls >= 1; got {counts}, {rounds}, {calls}")
    if not libraries:
        raise ValueError("no libraries to time: give {name: path}")
    paths = {name: Path(path) for name, path in libraries.items()}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"no library at {path}: export one with TuneResult.export_library")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    seconds = {name: {t: [] for t in counts} for name in paths}
    with tempfile.TemporaryDirectory(prefix="gos_tvm_threads_") as tmp:
        example_path = Path(tmp) / "example.npy"
        np.save(example_path, np.ascontiguousarray(example, dtype="float32"))
        # Everything takes turns: a slow minute on a shared host hits every library and count alike.
        for _ in range(rounds):
            for name, path in paths.items():
                for t in counts:
                    seconds[name][t].append(time_in_fresh_process(path, example_path, calls, t, env))
    out = {}
    for name, path in paths.items():
        best = {t: min(v) for t, v in seconds[name].items()}
        out[name] = {"path": str(path), "seconds": best, "best": min(best, key=best.get)}
    return {"libraries": out, "threads": counts, "rounds": rounds, "calls": calls}


def json_ready(timed: Mapping) -> dict:
    """A result of `time_libraries_at_threads` with its thread counts as strings (JSON object keys)."""
    def convert(v):
        if isinstance(v, Mapping):
            return {str(k): convert(x) for k, x in v.items()}
        return v
    return convert(timed)


def speedup_each_at_its_best_threads(libraries: Mapping[str, Mapping]) -> float:
    """The original's time at its fastest thread count over the adapted model's at its own:
    `libraries` is the ``libraries`` part of `time_libraries_at_threads`' result, with rows named
    ``original`` and ``adapted``."""
    best = {name: min(row["seconds"].values()) for name, row in libraries.items()}
    return best["original"] / best["adapted"]


def run_in_fresh_process(code: str, args: Iterable[str], env: Mapping[str, str], failure: str,
                         timeout: float = 600) -> dict:
    """Run the Python `code` with `args` in a fresh interpreter under environment `env` (TVM sizes
    its thread pool once per process, so each thread setting needs its own) and return the JSON
    that it prints on a line starting ``RESULT ``.  RuntimeError ``failure`` with the child's
    stderr when it fails."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=dict(env), capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{failure}:\n{out.stderr[-2000:]}")
    return json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])


def time_in_fresh_process(library: Path, example_path: Path, calls: int, threads: int,
                          env: Mapping[str, str]) -> float:
    """One library's median seconds per batch-1 call on the input saved at `example_path` (.npy),
    in a fresh process with environment `env` and ``TVM_NUM_THREADS=threads`` (e.g. to compare
    the thread pool's own settings, TVM_THREAD_POOL_SPIN_COUNT or TVM_BIND_THREADS, at one count)."""
    result = run_in_fresh_process(_CHILD, (library, example_path, calls), {**env, "TVM_NUM_THREADS": str(threads)},
                                  f"{library} did not run with TVM_NUM_THREADS={threads} (a library built for "
                                  "another CPU?)")
    if result["threads"] != threads:
        raise RuntimeError(f"TVM ran {result['threads']} threads where TVM_NUM_THREADS={threads} was set")
    return result["median_s"]


__all__ = ["time_libraries_at_threads", "time_in_fresh_process", "run_in_fresh_process", "json_ready", "speedup_each_at_its_best_threads"]
