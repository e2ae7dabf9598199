"""`TrackerRunner`: MetaSchedule's runner for devices behind an RPC tracker, made fault tolerant.

It does what the stock `RPCRunner` does (upload the built library to a server under the key, fill
the arguments at random on the device, `time_evaluator`), with persistent, pre-started worker
processes (one per server by default, so several servers under one key measure in parallel) and
these additions:

* a batch is split into shares (one per worker, at most `max_per_session` candidates each), and
  each share is measured in one RPC session (the stock runner opens a session per candidate: a
  tracker round trip, a server fork and a thread-pool start each time); the session ends with
  the share, so the server goes back to the tracker between batches, free for anyone else's
  measurements;
* at construction, the tracker must be reachable and hold a server under the key, or
  `DeviceUnavailableError` is raised within `check_timeout` s (the stock runner hangs or waits 60 s);
* waiting for a free server is bounded (`queue_timeout_sec`), and every share has an overall
  wall-clock bound, after which its measurements are recorded as failed (the stock future waits
  forever);
* a measurement whose session breaks (its server died mid-batch) is retried, with the rest of its
  share, on another server up to `max_retries` times, then recorded as failed; a kernel that fails
  to load or run on a live server is recorded as failed at once and the session goes on.  Either
  way the batch completes and tuning goes on.
"""
from __future__ import annotations

import concurrent.futures
from typing import Optional

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner, PyRunnerFuture, RunnerInput, RunnerResult
from tvm.support.popen_pool import PopenPoolExecutor

from . import _workers
from ..tracker import require_servers


@derived_object
class TrackerRunnerFuture(PyRunnerFuture):
    """The pending measurement of one candidate."""

    def __init__(self, future: concurrent.futures.Future, index: int, timeout_sec: float) -> None:
        super().__init__()
        self.future = future      # the measurement of the share this candidate is in
        self.index = index        # its place in that share
        self.timeout_sec = timeout_sec

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> RunnerResult:
        try:
            ok, value = self.future.result()[0][self.index]
        except TimeoutError:
            return RunnerResult(None, f"TrackerRunner: timeout, measurement killed after {self.timeout_sec:g} s")
        except Exception as err:  # noqa: BLE001 - every failure becomes a failed record
            return RunnerResult(None, f"TrackerRunner: {type(err).__name__}: {err}")
        return RunnerResult(value, None) if ok else RunnerResult(None, f"TrackerRunner: {value}")


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
        Sessions in flight at once (default: the number of servers under the key now).
    max_per_session:
        Most candidates measured in one session (a batch is split into at least `max_workers`
        shares of at most this many); 1 opens a session per candidate, as the stock runner does.
    session_timeout_sec:
        Per candidate: the server ends a session running longer than this times the candidates
        it has left (a kernel that hangs).
    queue_timeout_sec:
        Longest wait for a free server before the measurement is recorded as failed.
    max_retries:
        Re-measurements on another server after a broken session.
    check_timeout:
        Seconds to wait at construction for the tracker and a server under the key.
    warm:
        Start the worker processes in the background right away (default True).
    """

    def __init__(self, tracker: tuple[str, int], key: str, *, evaluator_config: Optional[EvaluatorConfig] = None,
                 max_workers: Optional[int] = None, session_timeout_sec: float = 60.0,
                 queue_timeout_sec: float = 120.0, max_retries: int = 2, check_timeout: float = 10.0,
                 alloc_repeat: int = 1, maximum_process_uses: Optional[int] = None, max_per_session: int = 8,
                 warm: bool = True) -> None:
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
        if max_per_session < 1:
            raise ValueError(f"max_per_session must be >= 1, got {max_per_session}")
        self.max_per_session = int(max_per_session)
        # Overall bound of one share, kept by the client whatever the device does (one that vanishes
        # without closing its connection): the queue wait plus a full-length session per attempt.
        # Sessions that a crashing kernel ends are short and do not count.
        self.timeout_sec = self.queue_timeout_sec + (self.max_retries + 1) * (
            self.max_per_session * self.session_timeout_sec + 15.0)
        self.pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec,
                                      initializer=_workers.init_runner_worker,
                                      maximum_process_uses=maximum_process_uses)
        self.measured = 0
        #: Per share measured, the server address of each RPC session it took (appended as shares
        #: complete; more than one session means a fault moved the share on).
        self.share_sessions: list[list[str]] = []
        if warm:
            self.warm_up()

    def warm_up(self, wait: bool = False) -> None:
        """Start the worker processes now (they import TVM once), in the background unless `wait`."""
        futures = [self.pool.submit(_workers.ping) for _ in range(self.max_workers)]
        if wait:
            for f in futures:
                f.result()

    def shares(self, n: int) -> list[range]:
        """How a batch of `n` candidates is split into sessions: contiguous, near-equal shares."""
        k = min(n, max(self.max_workers, -(-n // self.max_per_session)))
        bounds = [round(i * n / k) for i in range(k + 1)] if k else [0]
        return [range(bounds[i], bounds[i + 1]) for i in range(k)]

    def _logged(self, fut: concurrent.futures.Future) -> concurrent.futures.Future:
        """A future of `fut`'s result that completes only after its sessions are logged."""
        out: concurrent.futures.Future = concurrent.futures.Future()

        def done(f: concurrent.futures.Future) -> None:
            err = f.exception()
            if err is not None:
                out.set_exception(err)
                return
            self.share_sessions.append(list(f.result()[1]))
            out.set_result(f.result())

        fut.add_done_callback(done)
        return out

    def run(self, runner_inputs: list[RunnerInput]) -> list[TrackerRunnerFuture]:
        ev = self.evaluator_config
        evaluator = (int(ev.number), int(ev.repeat), int(ev.min_repeat_ms), bool(ev.enable_cpu_cache_flush))
        futures: list[TrackerRunnerFuture] = []
        shares = self.shares(len(runner_inputs))
        for share in shares:
            kernels = [(str(runner_inputs[i].artifact_path), str(runner_inputs[i].device_type),
                        tuple(arg.as_json() for arg in runner_inputs[i].args_info)) for i in share]
            fut = self._logged(self.pool.submit(
                _workers.measure_batch, self.tracker, self.key, kernels, evaluator, self.alloc_repeat,
                self.session_timeout_sec, self.queue_timeout_sec, self.max_retries))
            futures += [TrackerRunnerFuture(fut, index, self.timeout_sec) for index in range(len(kernels))]
        self.measured += len(runner_inputs)
        return futures

    def close(self) -> None:
        self.pool.shutdown(wait=False)


def make_runner(tracker: tuple[str, int], key: str, **kwargs) -> TrackerRunner:
    """A `TrackerRunner` (DeviceUnavailableError at once if the tracker or the key is missing)."""
    return TrackerRunner(tracker, key, **kwargs)


__all__ = ["TrackerRunner", "TrackerRunnerFuture", "make_runner"]
