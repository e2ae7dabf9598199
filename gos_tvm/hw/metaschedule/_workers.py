"""Functions that run inside the builder's and runner's worker processes.

Kept in a module of their own, importing TVM lazily, so that cloudpickle sends them to the
workers by reference (`gos_tvm.hw.metaschedule._workers.build_one`) and a worker imports nothing it does not use.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Optional, Sequence


def init_builder_worker() -> None:
    """Worker initializer: import TVM's build path once per process, before the first build.

    Not the tensor intrinsics, which MetaSchedule's own builder imports in every worker: only
    scheduling (`tensorize`, MetaSchedule's rules and postprocessors, in the tuning process) looks
    an intrinsic up; a tensorized schedule carries the intrinsic's implementation in its body, so
    building it needs nothing registered (tests/test_hw_builder.py builds one).  Skipping them
    saves each worker 1.7 s of start-up here.
    """
    import tvm.driver  # noqa: F401
    import tvm.s_tir.transform  # noqa: F401
    import tvm.support.cc  # noqa: F401

    _freeze_imports()


def init_runner_worker() -> None:
    """Worker initializer: import the RPC client and MetaSchedule's measurement helpers once."""
    import tvm.rpc  # noqa: F401
    import tvm.s_tir.meta_schedule.runner.utils  # noqa: F401

    _freeze_imports()


def _freeze_imports() -> None:
    """Move everything imported so far out of the garbage collector's sight.

    The runner collects garbage after every RPC session (remote handles in reference cycles keep
    the session, and so the server, busy until collected); with TVM imported a full collection
    walks a few hundred thousand objects, 70 ms here, more than a kernel's measurement.  Frozen,
    the imports are never scanned again, and a collection only walks what the work created.
    """
    import gc

    gc.collect()
    gc.freeze()


def ping() -> int:
    """A no-op used to start (warm) workers ahead of the first batch."""
    return os.getpid()


def rss_mb() -> float:
    """Resident memory of this worker, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _fcompile(export: Optional[str], fmt: str):
    """The export_library fcompile: a preset's (cross) compiler for .so, TVM's tar for .tar."""
    if fmt == "tar":
        from tvm.support import tar

        return tar.tar
    if export is None:
        return None  # the host's default C++ compiler
    from ..presets import preset

    return preset(export).export


def build_one(mod: Any, target: Any, params: Optional[bytearray], export: Optional[str], fmt: str) -> str:
    """Build one scheduled IRModule and export it as a loadable library; returns the artifact path.

    The same build as MetaSchedule's `default_build` (weight-layout-rewrite blocks removed, then
    `tvm.driver.build`), minus its per-call `import tvm.s_tir.tensor_intrin` (done once, fast, by the
    initializer).  The library is linked here, on the host, by the preset's compiler, so the device's
    RPC server only has to dlopen it.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    del params  # MetaSchedule's TIR tasks carry no params (default_build ignores them too)
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    rt_mod = tvm_build(mod, target=target)
    out_dir = tempfile.mkdtemp(prefix="gos_tvm_build_")  # removed by MetaSchedule's RemoveBuildArtifact
    path = os.path.join(out_dir, "tvm_tmp_mod." + ("tar" if fmt == "tar" else "so"))
    rt_mod.export_library(path, fcompile=_fcompile(export, fmt))
    return path


def _session_alive(sess: Any) -> bool:
    """Whether an RPC session still answers (distinguishes a failing kernel from a broken session)."""
    try:
        # A round trip to a function the server registers for every session.
        return bool(sess.get_function("tvm.rpc.server.workpath")("probe"))
    except Exception:  # noqa: BLE001
        return False


def _time_in_session(sess: Any, f_fill: Any, artifact_path: str, device_type: str, args_info: Sequence[Any],
                     config: Any, alloc_repeat: int) -> list[float]:
    """Upload one built kernel into an open session, fill its arguments at random and time it."""
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

    dev = sess.device(device_type, 0)
    remote_name = os.path.basename(os.path.dirname(artifact_path)) + "_" + os.path.basename(artifact_path)
    sess.upload(artifact_path, remote_name)
    rt_mod = sess.load_module(remote_name)
    args = alloc_argument_common(f_fill, dev, args_info, alloc_repeat)
    costs = run_evaluator_common(rt_mod, dev, config, args)
    try:
        sess.remove(remote_name)
    except Exception:  # noqa: BLE001 - the server's temp dir goes with the session anyway
        pass
    return costs


def measure_batch(tracker: tuple[str, int], key: str, kernels: Sequence[tuple[str, str, Sequence[Any]]],
                  evaluator: tuple, alloc_repeat: int, session_timeout: float,
                  queue_timeout: float, max_retries: int) -> tuple[list[tuple[bool, Any]], list[str]]:
    """Time several built kernels on a server under `key`, in as few RPC sessions as faults allow.

    `kernels` holds (library path, device type, args_info JSON) triples.  Returns, per kernel,
    (True, run seconds) or (False, error message), and the address of the server of each session
    it opened.  One session measures the kernels one after another, so the session's cost
    (tracker round trip, server fork, thread-pool start) is paid once per batch, not once per
    kernel, and the server is handed back when the batch is done.  The server ends a session
    after `session_timeout` s per kernel it still has to measure.

    Faults: an error that the live session reports (the kernel fails to load or run) fails that
    kernel and the session goes on with the next.  When the session breaks, the tracker tells why:
    if the server is no longer registered it died (killed, crashed, unplugged), and the kernel is
    retried with the rest on another server, at most `max_retries` times per kernel; if it is
    still registered, the kernel crashed its session process, and retrying would only crash
    another server's session, so the kernel fails and the rest go on in a new session.  Waiting
    for a free server is bounded by `queue_timeout`; when no server comes, the kernels left fail.
    """
    import gc

    from tvm.s_tir.meta_schedule.runner.config import EvaluatorConfig

    from ..tracker import DeviceUnavailableError, request_session, server_registered

    config = EvaluatorConfig(*evaluator)
    results: list[Optional[tuple[bool, Any]]] = [None] * len(kernels)
    pending = list(range(len(kernels)))
    died: dict[int, list[str]] = {}          # kernel index -> the server deaths it went through
    sessions: list[str] = []
    while pending:
        try:
            sess = request_session(tracker[0], tracker[1], key, queue_timeout=queue_timeout,
                                   session_timeout=session_timeout * len(pending))
        except DeviceUnavailableError as err:
            for i in pending:
                results[i] = (False, f"{err}" + _retried_note(died.get(i)))
            break
        addr = getattr(sess, "gos_server_addr", "")
        sessions.append(addr)
        current = pending[0]
        f_fill = None
        try:
            f_fill = sess.get_function("tvm.contrib.random.random_fill_for_measure")
            while pending:
                current = pending[0]
                try:
                    results[current] = (True, _time_in_session(sess, f_fill, *kernels[current], config,
                                                               alloc_repeat))
                except Exception as err:  # noqa: BLE001
                    if "kShutdown" in str(err) or not _session_alive(sess):
                        raise
                    results[current] = (False, str(err))  # the kernel failed; the session goes on
                pending.pop(0)
        except Exception as err:  # noqa: BLE001 - the session broke while measuring `current`
            msg = str(err)
            time.sleep(0.3)  # let the tracker notice a dead server's closed connection
            if "RPCSessionTimeoutError" not in msg and not server_registered(tracker[0], tracker[1], addr):
                died.setdefault(current, []).append(
                    f"server {addr} died: " + (msg.strip().splitlines()[-1][:200] if msg.strip() else "?"))
                if len(died[current]) > max_retries:
                    results[current] = (False, msg + _retried_note(died[current][:-1]))
                    pending.pop(0)
            else:
                results[current] = (False, f"the kernel broke the RPC session on server {addr} (the server "
                                           f"survived): {msg}" + _retried_note(died.get(current)))
                pending.pop(0)
        finally:
            # Drop every handle into the session now, so that the server is freed for the next
            # batch (a remote function or module left alive keeps the session open).
            sess = f_fill = None  # noqa: F841
            gc.collect()
    return [r if r is not None else (False, "not measured") for r in results], sessions


def _retried_note(deaths: Optional[list[str]]) -> str:
    return f"\n(after {len(deaths)} retried session failure(s): {'; '.join(deaths)})" if deaths else ""
