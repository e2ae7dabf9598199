"""`TrackerRunner`: MetaSchedule's runner for devices behind an RPC tracker, made fault tolerant.

It does what the stock `RPCRunner` does (upload the built library to a server under the key, fill
the arguments at random on the device, `time_evaluator`), with persistent worker processes (one
per server by default, so several servers under one key measure in parallel) and these additions:

* at construction, the tracker must be reachable and hold a server under the key, or
  `DeviceUnavailableError` is raised within `check_timeout` s (the stock runner hangs or waits 60 s);
* waiting for a free server is bounded (`queue_timeout_sec`), and every measurement has an overall
  wall-clock bound, after which it is recorded as failed (the stock future waits forever);
* a measurement whose session breaks (its server died mid-batch) is retried on another server up to
  `max_retries` times, then recorded as failed; a kernel that fails to load or run on a live server
  is recorded as failed at once.  Either way the batch completes and tuning goes on.
"""
from __future__ import annotations

import concurrent.futures
from typing import Optional

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner, PyRunnerFuture, RunnerInput, RunnerResult
from tvm.support.popen_pool import PopenPoolExecutor

from . import _workers
from .tracker import require_servers


@derived_object
class TrackerRunnerFuture(PyRunnerFuture):
    """The pending measurement of one candidate."""

    def __init__(self, future: concurrent.futures.Future, timeout_sec: float) -> None:
        super().__init__()
        self.future = future
        self.timeout_sec = timeout_sec

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> RunnerResult:
        try:
            run_secs = self.future.result()
        except TimeoutError:
            return RunnerResult(None, f"TrackerRunner: timeout, measurement killed after {self.timeout_sec:g} s")
        except Exception as err:  # noqa: BLE001 - every failure becomes a failed record
            return RunnerResult(None, f"TrackerRunner: {type(err).__name__}: {err}")
        return RunnerResult(run_secs, None)


@derived_object
class TrackerRunner(PyRunner):
    """Measure built candidates on the servers registered under `key` at `tracker`.

    Parameters
    ----------
    tracker, key:
        (host, port) of the RPC tracker and the device key.
    evaluator_config:
        number / repeat / min_repeat_ms / cache flush of `time_evaluator`
        (default: number=3, repeat=1, min_repeat_ms=50).
    max_workers:
        Measurements in flight at once (default: the number of servers under the key now).
    session_timeout_sec:
        The server ends a session running longer than this (a kernel that hangs).
    queue_timeout_sec:
        Longest wait for a free server before the measurement is recorded as failed.
    max_retries:
        Re-measurements on another server after a broken session.
    check_timeout:
        Seconds to wait at construction for the tracker and a server under the key.
    """

    def __init__(self, tracker: tuple[str, int], key: str, *, evaluator_config: Optional[EvaluatorConfig] = None,
                 max_workers: Optional[int] = None, session_timeout_sec: float = 60.0,
                 queue_timeout_sec: float = 120.0, max_retries: int = 2, check_timeout: float = 10.0,
                 alloc_repeat: int = 1, maximum_process_uses: Optional[int] = None) -> None:
        super().__init__()
        self.tracker = (str(tracker[0]), int(tracker[1]))
        self.key = key
        status = require_servers(self.tracker[0], self.tracker[1], key, 1, timeout=check_timeout)
        self.n_servers = status.count(key)
        self.evaluator_config = evaluator_config or EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50)
        self.session_timeout_sec = float(session_timeout_sec)
        self.queue_timeout_sec = float(queue_timeout_sec)
        self.max_retries = int(max_retries)
        self.alloc_repeat = int(alloc_repeat)
        self.max_workers = int(max_workers or self.n_servers)
        # Overall bound of one measurement: the queue wait plus every attempt's session.
        self.timeout_sec = self.queue_timeout_sec + (self.max_retries + 1) * (self.session_timeout_sec + 15.0)
        self.pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec,
                                      maximum_process_uses=maximum_process_uses)
        self.measured = 0

    def warm_up(self, wait: bool = False) -> None:
        """Start the worker processes now (they import TVM once)."""
        futures = [self.pool.submit(_workers.ping) for _ in range(self.max_workers)]
        if wait:
            for f in futures:
                f.result()

    def run(self, runner_inputs: list[RunnerInput]) -> list[TrackerRunnerFuture]:
        ev = self.evaluator_config
        evaluator = (int(ev.number), int(ev.repeat), int(ev.min_repeat_ms), bool(ev.enable_cpu_cache_flush))
        futures = []
        for inp in runner_inputs:
            fut = self.pool.submit(
                _workers.measure_one, self.tracker, self.key, str(inp.artifact_path), str(inp.device_type),
                tuple(arg.as_json() for arg in inp.args_info), evaluator, self.alloc_repeat,
                self.session_timeout_sec, self.queue_timeout_sec, self.max_retries)
            futures.append(TrackerRunnerFuture(fut, self.timeout_sec))
        self.measured += len(runner_inputs)
        return futures

    def close(self) -> None:
        self.pool.shutdown(wait=False)


def make_runner(tracker: tuple[str, int], key: str, **kwargs) -> TrackerRunner:
    """A `TrackerRunner` (DeviceUnavailableError at once if the tracker or the key is missing)."""
    return TrackerRunner(tracker, key, **kwargs)


__all__ = ["TrackerRunner", "TrackerRunnerFuture", "make_runner"]
