"""Import `tvm.s_tir.tensor_intrin` in about a second instead of 25-60 s.

Why it is slow: every `@T.prim_func` in TVM's tensor-intrinsic modules (about 500 of them) calls
`inspect.stack()` when the decorator runs.  `inspect.stack()` builds a `FrameInfo` for every frame
of the stack, and for each one `inspect.getmodule()` scans all of `sys.modules` to map the frame's
file to a module -- the import machinery's own frames (`<frozen importlib._bootstrap>`) never match,
so every call scans everything.  Profiled here: 70 of 80 s of the import were in `inspect.stack()`.

MetaSchedule imports the package in every `TuneContext` and, through `default_build`, in every
builder worker process -- which is what makes the stock `LocalBuilder` (a fresh pool per batch)
so slow on a small machine.

The parser only uses, from each frame: the frame object (its locals, for closure variables), the
file name, the line number and that line's text (to see whether a class decorator is on it).  All
of that is available without `getmodule`, so while the package is imported we swap in an
equivalent `inspect.stack` that takes the line text from `linecache` directly.  The swap is local
to the import (restored in `finally`, under a lock) and the intrinsics registered are the same ones.
"""
from __future__ import annotations

import inspect
import linecache
import sys
import threading
import time

_LOCK = threading.Lock()
_IMPORT_SECONDS: float | None = None


def _fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack(context)` without `inspect.getmodule` (line text straight from linecache)."""
    frame = sys._getframe(1)  # noqa: SLF001 - the caller's frame, as inspect.stack() starts
    out = []
    while frame is not None:
        code = frame.f_code
        filename, lineno = code.co_filename, frame.f_lineno
        lines = index = None
        if context > 0 and lineno is not None:
            start = max(lineno - context // 2, 1)
            lines = [linecache.getline(filename, n) for n in range(start, start + context)]
            lines = [ln for ln in lines if ln] or None
            index = (lineno - start) if lines else None
        out.append(inspect.FrameInfo(frame, filename, lineno, code.co_name, lines, index))
        frame = frame.f_back
    return out


def import_tensor_intrin() -> float:
    """Import `tvm.s_tir.tensor_intrin` (registering TVM's tensor intrinsics) the fast way.

    Returns the seconds it took in this process (0.0 when it was already imported).  Safe to call
    many times and from several threads.
    """
    global _IMPORT_SECONDS
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return 0.0
    with _LOCK:
        if "tvm.s_tir.tensor_intrin" in sys.modules:
            return 0.0
        t0 = time.perf_counter()
        original = inspect.stack
        inspect.stack = _fast_stack
        try:
            import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the intrinsics
        finally:
            inspect.stack = original
        _IMPORT_SECONDS = time.perf_counter() - t0
        return _IMPORT_SECONDS
