"""Functions that run inside the builder's and runner's worker processes.

Kept in a module of their own, importing TVM lazily, so that cloudpickle sends them to the
workers by reference (`gos_tvm.hw._workers.build_one`) and a worker imports nothing it does not use.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Optional, Sequence


def init_builder_worker() -> None:
    """Worker initializer: pay for TVM, MetaSchedule and the tensor intrinsics once per process."""
    from ._fastimport import warm_worker

    warm_worker()


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
    from .presets import preset

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


def measure_one(tracker: tuple[str, int], key: str, artifact_path: str, device_type: str,
                args_info: Sequence[Any], evaluator: tuple, alloc_repeat: int, session_timeout: float,
                queue_timeout: float, max_retries: int) -> list[float]:
    """Upload one built kernel to a server under `key`, time it, and return the run seconds.

    Faults: an error that the live session reports (the kernel fails to load or run) is raised at
    once, so MetaSchedule records the candidate as failed.  When the session breaks, the tracker
    tells why: if the server is no longer registered it died (killed, crashed, unplugged) and the
    measurement is retried on another server, at most `max_retries` times; if it is still
    registered, the kernel crashed its session process, and retrying would only crash another
    server's session, so the candidate is recorded as failed.  Waiting for a free server is
    bounded by `queue_timeout`.
    """
    import gc

    from tvm.s_tir.meta_schedule.runner.config import EvaluatorConfig
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

    from .tracker import request_session, server_registered

    config = EvaluatorConfig(*evaluator)
    remote_name = os.path.basename(artifact_path)
    errors: list[str] = []
    for attempt in range(max_retries + 1):
        sess = request_session(tracker[0], tracker[1], key, queue_timeout=queue_timeout,
                               session_timeout=session_timeout)
        addr = getattr(sess, "gos_server_addr", "")
        retry = False
        msg = ""
        try:
            dev = sess.device(device_type, 0)
            sess.upload(artifact_path, remote_name)
            rt_mod = sess.load_module(remote_name)
            f_fill = sess.get_function("tvm.contrib.random.random_fill_for_measure")
            args = alloc_argument_common(f_fill, dev, args_info, alloc_repeat)
            costs = run_evaluator_common(rt_mod, dev, config, args)
            try:
                sess.remove(remote_name)
            except Exception:  # noqa: BLE001 - the server's temp dir goes with the session anyway
                pass
            return costs
        except Exception as err:  # noqa: BLE001
            msg = str(err)
            broken = "kShutdown" in msg or not _session_alive(sess)
            if "RPCSessionTimeoutError" not in msg and broken and attempt < max_retries:
                time.sleep(0.3)  # let the tracker notice a dead server's closed connection
                retry = not server_registered(tracker[0], tracker[1], addr)
                if not retry:
                    msg = f"the kernel broke the RPC session on server {addr} (the server survived): {msg}"
        finally:
            # Drop every handle into the session now, so that the server is freed for the next
            # measurement (a remote function or module left alive keeps the session open).
            sess = dev = rt_mod = f_fill = args = None  # noqa: F841
            gc.collect()
        if not retry:
            if errors:
                msg += f"\n(after {len(errors)} retried session failure(s): {'; '.join(errors)})"
            raise RuntimeError(msg)
        errors.append(f"server {addr} died: " + (msg.strip().splitlines()[-1][:200] if msg.strip() else "?"))
    raise AssertionError("unreachable")
