"""Faults with real processes: an unreachable tracker, an empty key, a server killed in the middle
of a tuning batch, kernels that fail to build or to run on the device."""
from __future__ import annotations

import math
import subprocess
import sys
import threading
import time

import pytest
from tvm import te, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule import search_strategy
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner

from gos_tvm.hw import (DeviceUnavailableError, LocalDevicePool, TrackerRunner, WarmBuilder, measure_module, preset,
                        request_session, tune_primfunc, tune_primfuncs)
from gos_tvm.hw.tracker import free_port
from gos_tvm.hw.tuning import database_records, record_latency
from gos_tvm.instructions import library, to_te


def _small_search():
    # The search's size is not under test here: keep the host's share of each batch small.
    return search_strategy.EvolutionarySearch(population_size=64, genetic_num_iters=1, init_min_unmeasured=16)


def test_unreachable_tracker_is_a_clear_error_within_bounded_time():
    port = free_port()                                  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DeviceUnavailableError, match=rf"127\.0\.0\.1:{port} is unreachable"):
        TrackerRunner(("127.0.0.1", port), "local", check_timeout=2)
    with pytest.raises(DeviceUnavailableError, match="unreachable"):
        tune_primfunc(to_te(library.dense((1, 8), 8)), "local", tracker=("127.0.0.1", port), key="local", trials=4)
    with pytest.raises(DeviceUnavailableError, match="unreachable"):
        measure_module(None, "local", ("127.0.0.1", port), library=__file__, queue_timeout=2)
    # Hang guards, not timing targets (the bounds are loose for a loaded CI machine): they fail only
    # when a timeout above is ignored and a call waits for a tracker that never answers.
    assert time.monotonic() - t0 < 180

    cli = [sys.executable, "-m", "gos_tvm.hw.rpc_cli"]
    t0 = time.monotonic()
    out = subprocess.run(cli + ["query", "--port", str(port), "--timeout", "2"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "unreachable" in out.stderr and "gos-tvm rpc tracker" in out.stderr
    out = subprocess.run(cli + ["server", "--tracker", f"127.0.0.1:{port}", "--key", "x", "--tracker-timeout", "2",
                                "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "unreachable" in out.stderr
    assert time.monotonic() - t0 < 300


@pytest.fixture(scope="module")
def pool():
    with LocalDevicePool("gos-faults", n_servers=1) as p:
        yield p


def test_tracker_without_a_server_under_the_key(pool):
    t0 = time.monotonic()
    with pytest.raises(DeviceUnavailableError, match="0 server.*'gos-empty'.*gos-faults \\(1\\).*gos-tvm rpc server"):
        TrackerRunner(pool.tracker, "gos-empty", check_timeout=1.5)
    with pytest.raises(DeviceUnavailableError, match="no server registered under key 'gos-empty'"):
        request_session(*pool.tracker, "gos-empty", queue_timeout=1.5)
    assert time.monotonic() - t0 < 120  # a hang guard, as above


@derived_object
class KillServerDuringBatch(PyRunner):
    """A real TrackerRunner; on its `batch`-th batch a real server process is SIGKILLed while the
    batch's measurements are in flight (test instrumentation, no measurement is faked)."""

    def __init__(self, inner, pool, db_file, batch: int, delay: float) -> None:
        super().__init__()
        self.inner, self.pool, self.db_file, self.batch, self.delay = inner, pool, db_file, batch, delay
        self.calls = 0
        self.records_before_kill: list[str] = []
        self.killed = threading.Event()

    def _kill(self) -> None:
        self.records_before_kill = self.db_file.read_text().splitlines()
        self.pool.kill_server(0)
        self.killed.set()

    def run(self, runner_inputs):
        futures = self.inner.run(runner_inputs)
        self.calls += 1
        if self.calls == self.batch:
            threading.Timer(self.delay, self._kill).start()
        return futures


def test_server_killed_mid_batch_batch_completes_and_records_are_kept(tmp_path):
    func = to_te(library.conv2d((1, 8, 16, 16), 16, 3, padding=1))
    builder = WarmBuilder("local")
    with LocalDevicePool("gos-kill", n_servers=2) as pool:
        # Each measurement lasts >= 0.4 s, so the kill lands while the batch is on both servers.
        inner = TrackerRunner(pool.tracker, pool.key, max_retries=2,
                              evaluator_config=EvaluatorConfig(number=1, repeat=1, min_repeat_ms=400))
        runner = KillServerDuringBatch(inner, pool, tmp_path / "database_tuning_record.json", batch=2, delay=0.7)
        try:
            res = tune_primfunc(func, "local", runner=runner, builder=builder, trials=12, trials_per_iter=6,
                                work_dir=str(tmp_path), strategy=_small_search(), cost_model="random", seed=0)
        finally:
            inner.close()
            builder.close()
        assert runner.killed.is_set()
        assert pool.status().count(pool.key) == 1          # the killed server is gone from the pool
    final = (tmp_path / "database_tuning_record.json").read_text().splitlines()
    before = runner.records_before_kill
    assert len(before) == 6                                 # batch 1 done, batch 2 in flight at the kill
    assert final[:len(before)] == before                    # every record completed before the kill is kept
    assert len(final) == 12 and res.trials == 12            # the batch completed: every candidate recorded
    lat = [record_latency(r) for r in database_records(res.database, func)]
    # measurements on the dead server were retried on the other one
    assert res.failed == 0 and all(math.isfinite(x) and x > 0 for x in lat), lat
    # the dead server's share went on in a session on the other server
    assert any(len(set(s)) == 2 for s in inner.share_sessions), inner.share_sessions


def _bad_build():
    a = te.placeholder((64,), name="a")
    b = te.compute((64,), lambda i: tirx.call_intrin("float32", "tirx.tvm_warp_shuffle", tirx.const(0, "uint32"),
                                                     a[i], 0, 32, 32), name="b")  # no CPU lowering
    return te.create_prim_func([a, b])


def _bad_run():
    a = te.placeholder((64,), name="a")
    b = te.compute((64,), lambda i: tirx.call_extern("float32", "gos_no_such_symbol", a[i]), name="b")
    return te.create_prim_func([a, b])                   # builds; the device cannot load it


def test_kernels_failing_to_build_or_run_are_recorded_and_tuning_goes_on(pool, tmp_path):
    good = to_te(library.conv2d((1, 4, 8, 8), 8, 3, padding=1))
    builder = WarmBuilder("local")
    runner = TrackerRunner(pool.tracker, pool.key)
    try:
        t0 = time.monotonic()
        # bad_run crashes the session process on the only server: the server must survive it.
        res = tune_primfuncs({"bad_build": _bad_build(), "bad_run": _bad_run(), "good": good}, "local",
                             runner=runner, builder=builder, trials_per_task=8, trials_per_iter=8,
                             work_dir=str(tmp_path), strategy=_small_search(), cost_model="random", seed=0)
        assert time.monotonic() - t0 < 900  # a hang guard: no endless retry of failing kernels
    finally:
        runner.close()
        builder.close()
    # the only server survived the crashed session: it measured "good" (tuned after "bad_run")
    assert pool.status().count(pool.key) == 1
    assert res["bad_build"].trials >= 1 and res["bad_build"].failed == res["bad_build"].trials
    assert res["bad_run"].trials >= 1 and res["bad_run"].failed == res["bad_run"].trials
    assert not res["bad_build"].ok and res["bad_build"].latency_s == math.inf and res["bad_build"].record is None
    assert res["good"].ok and res["good"].trials == 8 and res["good"].failed == 0 and res["good"].latency_s > 0


def test_one_session_per_share_and_faults_inside_a_share(pool):
    """A batch on the only server is one share: its kernels are measured in one RPC session.  A
    kernel that fails on a live session fails alone; one that crashes the session fails alone
    too, and the kernels after it are measured in a new session on the same (surviving) server."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo, TensorInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    good, bad_run = to_te(library.conv2d((1, 4, 8, 8), 8, 3, padding=1)), _bad_run()
    builder = WarmBuilder("local")
    runner = TrackerRunner(pool.tracker, pool.key, max_per_session=8)
    try:
        built = builder.build([BuilderInput(tvm.IRModule({"main": f}), preset("local").target)
                               for f in (good, good, bad_run)])
        assert all(b.error_msg is None for b in built), [b.error_msg for b in built]
        good_args = ArgInfo.from_prim_func(good)
        wrong_args = [TensorInfo("float32", [1, 4, 9, 9])] + list(good_args[1:])  # the kernel rejects them

        def inp(b, args):
            return RunnerInput(b.artifact_path, "cpu", args)

        assert runner.shares(5) == [range(0, 5)]
        batch = [inp(built[0], good_args), inp(built[1], wrong_args), inp(built[0], good_args),
                 inp(built[2], ArgInfo.from_prim_func(bad_run)), inp(built[1], good_args)]
        results = [f.result() for f in runner.run(batch)]
    finally:
        runner.close()
        builder.close()
    errors = [r.error_msg for r in results]
    assert [e is None for e in errors] == [True, False, True, False, True], errors
    assert all(0 < s < 1 for i in (0, 2, 4) for s in results[i].run_secs)
    assert "broke the RPC session" not in errors[1]                 # failed on a live session
    assert "broke the RPC session" in errors[3] and "survived" in errors[3]
    # two sessions: the first until the crash (kernels 0-3), a new one for kernel 4, same server
    assert len(runner.share_sessions) == 1 and len(runner.share_sessions[0]) == 2
    assert len(set(runner.share_sessions[0])) == 1
    assert pool.status().count(pool.key) == 1
