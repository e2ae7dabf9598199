"""`WarmBuilder`: a MetaSchedule builder whose worker processes stay alive across batches.

MetaSchedule's stock `LocalBuilder` creates a fresh `PopenPoolExecutor` for every batch of
candidates (to dodge a memory leak in long-lived workers), and its `default_build` imports
`tvm.s_tir.tensor_intrin` in each fresh worker: 25-60 s of TVMScript parsing on a small machine
before the first build, which with the default 30 s timeout makes every build time out.

`WarmBuilder` instead

* keeps one pool for its whole life: a worker is started once and serves every later batch;
* warms the workers in their initializer (TVM's build path; not the tensor intrinsics, which a
  build does not need), outside the per-build timeout, and starts them in the background before
  the first batch (`warm_up()`);
* recycles a worker after `maximum_process_uses` builds, and after a batch kills any worker whose
  resident memory exceeds `max_worker_rss_mb` (the leak the stock builder works around); a killed
  or timed-out worker restarts lazily on its next build;
* links the library on the host with the device preset's compiler (`.so`), so the RPC server on a
  board only has to dlopen it.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from tvm.ir.utils import derived_object
from tvm.runtime import save_param_dict
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from . import _workers
from ..presets import Preset

logger = logging.getLogger(__name__)


@derived_object
class WarmBuilder(PyBuilder):
    """A MetaSchedule builder with persistent, pre-warmed, recycled worker processes.

    Parameters
    ----------
    device:
        The preset (or preset name) whose export function links the libraries; None or 'local'
        links with the host's C++ compiler.
    max_workers:
        Worker processes (default: the host's CPU count).
    timeout_sec:
        Per-build timeout (the worker start-up is not counted: it happens in the initializer).
    export_format:
        'so' (link on the host; default) or 'tar' (object files; the RPC server links them).
    maximum_process_uses:
        Builds after which a worker is restarted (None: never, except on timeout/crash); the warm-up
        counts as one use.
    max_worker_rss_mb:
        After a batch, workers above this resident memory are restarted (None: no check).
    warm:
        Start the workers in the background right away (default True).
    """

    def __init__(self, device: "Preset | str | None" = None, *, max_workers: Optional[int] = None,
                 timeout_sec: float = 120.0, export_format: str = "so", maximum_process_uses: Optional[int] = 200,
                 max_worker_rss_mb: Optional[float] = 2048.0, warm: bool = True) -> None:
        super().__init__()
        if export_format not in ("so", "tar"):
            raise ValueError(f"export_format must be 'so' or 'tar', got {export_format!r}")
        name = device.name if isinstance(device, Preset) else device
        if name == "local":
            name = None
        if name is not None:
            from ..presets import preset

            preset(name).check_export()  # a missing cross-compiler is an error now, not in every build
        self.export = name
        self.export_format = export_format
        self.max_workers = int(max_workers or os.cpu_count() or 1)
        self.timeout_sec = float(timeout_sec)
        self.maximum_process_uses = maximum_process_uses
        self.max_worker_rss_mb = max_worker_rss_mb
        self.builds = 0
        self.batches = 0
        self.recycled_for_memory = 0
        self._pool: Optional[PopenPoolExecutor] = None
        self._warm_futures: list = []
        if warm:
            self.warm_up()

    # -- pool ------------------------------------------------------------------------------
    def _get_pool(self) -> PopenPoolExecutor:
        if self._pool is None:
            self._pool = PopenPoolExecutor(
                max_workers=self.max_workers, timeout=self.timeout_sec,
                initializer=_workers.init_builder_worker, maximum_process_uses=self.maximum_process_uses)
        return self._pool

    def warm_up(self, wait: bool = False) -> None:
        """Start every worker now (in the background unless `wait`)."""
        pool = self._get_pool()
        self._warm_futures = [pool.submit(_workers.ping) for _ in range(self.max_workers)]
        if wait:
            for f in self._warm_futures:
                f.result()

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes."""
        if self._pool is None:
            return []
        return [w._proc.pid for w in list(self._pool._worker_map.values())  # noqa: SLF001
                if getattr(w, "_proc", None) is not None and w.is_alive()]

    def _recycle_fat_workers(self) -> None:
        if self.max_worker_rss_mb is None or self._pool is None:
            return
        import psutil

        for worker in list(self._pool._worker_map.values()):  # noqa: SLF001 - the pool has no public API for this
            proc = getattr(worker, "_proc", None)
            if proc is None or not worker.is_alive():
                continue
            try:
                rss = psutil.Process(proc.pid).memory_info().rss / 2**20
            except psutil.Error:
                continue
            if rss > self.max_worker_rss_mb:
                logger.info("WarmBuilder: recycling worker %d (%.0f MiB)", proc.pid, rss)
                worker.kill()  # restarts lazily (warm again via the initializer) on its next build
                self.recycled_for_memory += 1

    # -- Builder interface -----------------------------------------------------------------
    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        pool = self._get_pool()
        jobs = [(inp.mod, inp.target, None if inp.params is None else save_param_dict(inp.params),
                 self.export, self.export_format) for inp in build_inputs]
        results: list[BuilderResult] = []
        for res in pool.map_with_error_catching(lambda job: _workers.build_one(*job), jobs):
            if res.status == StatusKind.COMPLETE:
                results.append(BuilderResult(str(res.value), None))
            elif res.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"WarmBuilder: timeout, killed after {self.timeout_sec:g} s"))
            else:
                results.append(BuilderResult(None, f"WarmBuilder: build failed\n{res.value}"))
        self.builds += len(build_inputs)
        self.batches += 1
        self._recycle_fat_workers()
        return results

    def close(self) -> None:
        """Stop the workers (also done when the builder is garbage-collected)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


__all__ = ["WarmBuilder"]
