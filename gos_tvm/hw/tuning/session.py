"""Per-kernel and whole-module MetaSchedule tuning on devices reached through the RPC tracker.

    with LocalDevicePool("local", 2) as pool:
        builder = WarmBuilder("local")
        res = tune_primfunc(to_te(program), "local", tracker=pool.tracker, key=pool.key,
                            trials=32, builder=builder, work_dir="runs/conv")
        latency_s, record = res          # best measured mean latency (s), its TuningRecord

The XGBoost cost model is on by default (`default_cost_model`).  Records go to a JSON database (one line per measured
candidate, appended as each batch completes), so a crash or a dead device never loses the records
already measured, and a later call with the same database warm-starts from them.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

from ..metaschedule._fastimport import import_tensor_intrin
from ..metaschedule.ms_logging import metaschedule_logging
# Database queries and record verification live in their own modules; re-exported here for callers
# that import them from `gos_tvm.hw.tuning` (the package re-exports this module).
from .database import (FAILED_RUN_SECS, _workload_mod, best_record, database_records,  # noqa: F401
                       open_database, record_latency)
from .verify import best_correct_record, schedule_is_correct, verified_database  # noqa: F401
from ..presets import Preset, resolve_target

if TYPE_CHECKING:  # pragma: no cover
    from ..metaschedule.builder import WarmBuilder

@dataclass
class KernelTuneResult:
    """Outcome of tuning one kernel.  Unpacks as `(latency_s, record)`.

    latency_s: best measured mean latency in seconds (inf if every candidate failed);
    record: its `TuningRecord` (None if none succeeded); trials / failed: candidates measured for
    this kernel in the database (all sessions) and how many of them failed.
    """

    name: str
    latency_s: float
    record: Any
    database: Any = field(repr=False)
    trials: int = 0
    failed: int = 0

    def __iter__(self) -> Iterator:
        return iter((self.latency_s, self.record))

    @property
    def ok(self) -> bool:
        return self.record is not None and math.isfinite(self.latency_s)

    def schedule(self, func: tirx.PrimFunc) -> Optional[tvm.IRModule]:
        """`func` with the best schedule applied (None if nothing succeeded)."""
        if self.record is None:
            return None
        from tvm.s_tir import Schedule

        sch = Schedule(_workload_mod(func))
        self.record.trace.apply_to_schedule(sch, remove_postproc=False)
        return sch.mod


@derived_object
class GuardedRoundRobin(PyTaskScheduler):
    """Round-robin over the tasks, guarded against MetaSchedule's endless loop.

    MetaSchedule's schedulers loop while the global trial count is below budget, and a batch only
    counts the candidates it contained: when a task's search space is exhausted (a small kernel
    whose few distinct schedules were all measured, or all failed), its search returns an *empty*
    batch, nothing counts, and the stock schedulers pick it again forever.  Here a task whose
    batches come back empty `max_empty_batches` times in a row is terminated.  `max_seconds`
    optionally bounds the whole session (the batch in flight is finished and recorded first).

    `budgets` (one per task, in task order) gives each task its own trial budget: a task is
    terminated once the batches it got back hold that many candidates (the last batch may overshoot
    by less than one batch; pass the session's `max_trials_per_task` >= every budget).  Used to
    give every task of a model the same per-task budget when some of them already hold records.
    """

    def __init__(self, max_empty_batches: int = 2, max_seconds: Optional[float] = None,
                 budgets: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.max_empty_batches = int(max_empty_batches)
        self.max_seconds = max_seconds
        self.budgets = None if budgets is None else [int(b) for b in budgets]
        self.trials: dict[int, int] = {}  # candidates measured per task in this session
        self._last = -1
        self._empty: dict[int, int] = {}
        self._start: Optional[float] = None
        self.terminated_empty: list[int] = []

    def next_task_id(self) -> int:
        import time

        outer = self._outer()
        tasks = outer.tasks_
        if self._start is None:
            self._start = time.monotonic()
        last = self._last
        if 0 <= last < len(tasks) and not tasks[last].is_terminated:
            results = outer.join_running_task(last)   # records the batch (database, cost model)
            self._empty[last] = 0 if len(results) else self._empty.get(last, 0) + 1
            self.trials[last] = self.trials.get(last, 0) + len(results)
            if self._empty[last] >= self.max_empty_batches:
                outer.terminate_task(last)
                self.terminated_empty.append(last)
            elif self.budgets is not None and self.trials[last] >= self.budgets[last]:
                outer.terminate_task(last)  # its own budget is spent
        if self.max_seconds is not None and time.monotonic() - self._start > self.max_seconds:
            return -1
        n = len(tasks)
        for step in range(1, n + 1):
            i = (last + step) % n
            if not tasks[i].is_terminated:
                self._last = i
                return i
        self._last = -1
        return -1


def default_strategy(evolve: bool = True, trials_per_iter: int = 16) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search sized for small hosts.

    evolve=True: population 128 and 2 genetic iterations (stock: 512 and 4).  On 2 cores choosing
    a batch, not building or measuring it, bounded the rate: tuning resnet18-style to 64 trials per
    task took 768 s at 256 / 3 (63% of it choosing) and 398 s at 128 / 2, with the same schedule
    quality (database kernel sums 0.342 and 0.339 ms; benchmarks/bench_search_cost.py).  The
    XGBoost model still ranks every candidate.

    evolve=False, for a session whose cost model cannot predict: MetaSchedule's XGBoost model
    scores candidates *at random* until it holds `num_warmup_samples` (100) measurements, so
    mutating a population towards its scores is a random walk that costs host time (45% of a
    64-trial session's wall time here, by MetaSchedule's profiler) and buys nothing over random
    sampling.  Then the search samples a random population of the design space twice the batch
    (at least 32), enough for a batch of unmeasured candidates, and measures from it (no genetic
    iterations); database records still seed it.

    Pass strategy='evolutionary' to the tuning functions for the stock configuration.
    """
    if evolve:
        return ms.search_strategy.EvolutionarySearch(population_size=128, genetic_num_iters=2)
    population = max(32, 2 * trials_per_iter)
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=population * 3 // 4,
                                                 genetic_num_iters=0)


def _strategy_for(strategy: Any, cost_model: Any, session_trials: int, trials_per_iter: int) -> Any:
    """`strategy`, or the default one: evolving only if the cost model can predict during the session."""
    if strategy is not None:
        return strategy
    warm_up = getattr(cost_model, "num_warmup_samples", None)
    if warm_up is None:  # a cost model that predicts from the start (or a named stock one)
        return default_strategy(evolve=True)
    return default_strategy(evolve=getattr(cost_model, "data_size", 0) + session_trials > warm_up,
                            trials_per_iter=trials_per_iter)


def default_cost_model(num_tuning_cores: Optional[int] = None, num_warmup_samples: int = 100) -> Any:
    """MetaSchedule's XGBoost cost model, without the training that cannot be used.

    `XGBModel` predicts *random* scores until it holds `num_warmup_samples` (100) measured
    samples, yet it retrains its booster after every batch from the first one on: seconds of
    host time per batch, thrown away.  Here training is deferred until the model can predict
    with it (by starting its adaptive-training counter near the warm-up size), so the search
    behaves exactly as with the stock model, only faster.  Share one instance across calls (the
    `cost_model` argument) to let its samples accumulate past the warm-up.
    """
    from ..metaschedule.features import TolerantPerStoreFeature

    # One candidate whose features cannot be computed must not end the session (see features.py).
    model = ms.cost_model.XGBModel(extractor=TolerantPerStoreFeature(),
                                   num_tuning_cores=int(num_tuning_cores or os.cpu_count() or 1),
                                   num_warmup_samples=num_warmup_samples, adaptive_training=True)
    # XGBModel.update skips training while data_size - last_train_size < last_train_size / 5:
    # the first training then happens once data_size reaches ~num_warmup_samples.
    model.last_train_size = max(int(num_warmup_samples / 1.2), 1)
    return model


def _make_runner(tracker, key, runner):
    if runner is not None:
        if isinstance(runner, str) and runner == "local":
            return ms.runner.LocalRunner()
        return runner
    if tracker is None or key is None:
        raise ValueError("give tracker=(host, port) and key=... (or runner=...); to use this machine as the "
                         "device, start a gos_tvm.hw.LocalDevicePool or `gos-tvm rpc tracker` + `gos-tvm rpc server`")
    from ..metaschedule.runner import TrackerRunner

    return TrackerRunner(tuple(tracker), key)


def _make_builder(builder, device):
    if builder is not None:
        return builder
    from ..metaschedule.builder import WarmBuilder

    return WarmBuilder(device if isinstance(device, (Preset, str)) else None)


@contextlib.contextmanager
def builder_and_runner(device: Any = None, tracker: Optional[tuple[str, int]] = None, key: Optional[str] = None, *,
                       builder: Any = None, runner: Any = None) -> Iterator[tuple[Any, Any]]:
    """The (builder, runner) of a tuning session: the given ones, or a new `WarmBuilder` for
    `device` and a `TrackerRunner(tracker, key)` (`runner="local"`: MetaSchedule's LocalRunner).
    What this creates it also closes on exit (their worker processes); what it was given stays
    open for the caller's next session."""
    made_runner = runner is None or isinstance(runner, str)
    runner = _make_runner(tracker, key, runner)
    made_builder = builder is None
    builder = _make_builder(builder, _device_of(device))
    try:
        yield builder, runner
    finally:
        if made_builder:
            builder.close()
        if made_runner and hasattr(runner, "close"):
            runner.close()


def _device_of(target) -> Optional[Union[Preset, str]]:
    return target if isinstance(target, (Preset, str)) else None


def _prepare(work_dir, database):
    import_tensor_intrin()  # TuneContext imports it; do it the fast way first (1-2 s instead of 25-60 s)
    work_dir = str(work_dir or tempfile.mkdtemp(prefix="gos_tvm_tune_"))
    os.makedirs(work_dir, exist_ok=True)
    if database is None:
        database = open_database(work_dir)
    return work_dir, database


def tune_primfuncs(funcs: Union[Mapping[str, tirx.PrimFunc], Sequence[tirx.PrimFunc]],
                   target: Union[str, dict, Preset, tvm.target.Target], *,
                   tracker: Optional[tuple[str, int]] = None, key: Optional[str] = None,
                   trials_per_task: int = 32, trials_per_iter: int = 16,
                   work_dir: Optional[str] = None, database: Optional[ms.database.Database] = None,
                   builder: Optional[Any] = None, runner: Optional[Any] = None,
                   cost_model: Union[str, ms.cost_model.CostModel, None] = None,
                   task_scheduler: Any = None, strategy: Any = None, max_seconds: Optional[float] = None,
                   seed: Optional[int] = None, num_tuning_cores: Optional[int] = None) -> dict[str, KernelTuneResult]:
    """Tune several PrimFuncs (tasks) in one MetaSchedule session into one shared database.

    Parameters
    ----------
    funcs:
        {name: PrimFunc} (or a list, named task0, task1, ...); each is one task.
    target:
        A preset name ('local', 'rasp3b', ...), a Preset, a target dict or a Target (llvm with num-cores).
    tracker, key:
        The RPC tracker and device key the candidates are measured on (through a `TrackerRunner`).
    trials_per_task, trials_per_iter:
        Measured candidates per task, and per batch.
    work_dir, database:
        Where the JSON database and the logs go (a temporary directory if neither is given);
        pass `database` to share one between calls (then earlier records warm-start the search).
    builder, runner:
        Default: a new `WarmBuilder` for the target's preset and a `TrackerRunner(tracker, key)`.
        Pass them to reuse warm workers across calls (recommended); `runner="local"` measures on
        this host without RPC (MetaSchedule's LocalRunner).
    cost_model:
        Default `default_cost_model()` (MetaSchedule's XGBoost model, training deferred until it
        can predict); 'xgb' for the stock XGBModel, 'random', or a CostModel object (reuse one
        across calls to carry its samples).
    strategy:
        The search strategy; default `default_strategy()` (evolutionary, sized for small hosts;
        without genetic iterations when the cost model cannot predict within this session).
    task_scheduler, max_seconds:
        Default `GuardedRoundRobin(max_seconds=...)`: equal budgets, no endless loop on an exhausted
        task, and (optionally) a wall-clock bound on the session; 'gradient'/'round-robin' for stock.

    Returns {name: KernelTuneResult}.  Candidates that fail to build or run are stored as failed
    records and do not stop the tuning.
    """
    if not isinstance(funcs, Mapping):
        funcs = {f"task{i}": f for i, f in enumerate(funcs)}
    if not funcs:
        raise ValueError("no PrimFunc to tune")
    tgt = resolve_target(target)
    work_dir, database = _prepare(work_dir, database)
    cores = int(num_tuning_cores or os.cpu_count() or 1)
    cost_model = cost_model if cost_model is not None else default_cost_model(cores)
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    with builder_and_runner(target, tracker, key, builder=builder, runner=runner) as (builder, runner), \
            metaschedule_logging():
        ms.tir_integration.tune_tir(
            mod, tgt, work_dir, max_trials_global=trials_per_task * len(funcs),
            max_trials_per_task=trials_per_task, num_trials_per_iter=min(trials_per_iter, trials_per_task),
            builder=builder, runner=runner, database=database, cost_model=cost_model,
            task_scheduler=task_scheduler if task_scheduler is not None else GuardedRoundRobin(max_seconds=max_seconds),
            strategy=_strategy_for(strategy, cost_model, trials_per_task * len(funcs),
                                   min(trials_per_iter, trials_per_task)),
            num_tuning_cores=cores, seed=seed)
    results = {}
    for name, f in funcs.items():
        f = f.with_attr("global_symbol", name)
        recs = database_records(database, f)
        lat, rec = best_record(database, f)
        results[name] = KernelTuneResult(name, lat, rec, database, trials=len(recs),
                                         failed=sum(1 for r in recs if not math.isfinite(record_latency(r))))
    return results


def tune_primfunc(func: tirx.PrimFunc, target: Union[str, dict, Preset, tvm.target.Target], *,
                  tracker: Optional[tuple[str, int]] = None, key: Optional[str] = None,
                  trials: int = 32, trials_per_iter: int = 16, work_dir: Optional[str] = None,
                  database: Optional[ms.database.Database] = None, builder: Optional[Any] = None,
                  runner: Optional[Any] = None, cost_model: Union[str, ms.cost_model.CostModel, None] = None,
                  strategy: Any = None, seed: Optional[int] = None, num_tuning_cores: Optional[int] = None,
                  task_scheduler: Any = None, max_seconds: Optional[float] = None) -> KernelTuneResult:
    """Tune one PrimFunc with MetaSchedule, measuring candidates on the device behind the tracker.

    Returns a `KernelTuneResult` that unpacks as `(best_latency_seconds, record)`.  See
    `tune_primfuncs` for the parameters.
    """
    name = "main"
    res = tune_primfuncs({name: func}, target, tracker=tracker, key=key, trials_per_task=trials,
                         trials_per_iter=trials_per_iter, work_dir=work_dir, database=database, builder=builder,
                         runner=runner, cost_model=cost_model, strategy=strategy, seed=seed,
                         num_tuning_cores=num_tuning_cores, task_scheduler=task_scheduler, max_seconds=max_seconds)
    return res[name]


# ---------------------------------------------------------------------------------------------
# Whole Relax modules
# ---------------------------------------------------------------------------------------------

def prepare_relax(mod: tvm.IRModule, params: Optional[Mapping[str, Any]],
                  target: Union[str, dict, Preset, tvm.target.Target]) -> tvm.IRModule:
    """Bind `params`, then legalize and fuse under `target` (`gos_tvm.graph.legalize`): the module
    that MetaSchedule extracts tasks from and that the tuned database is applied to."""
    from ...graph import legalize

    return legalize(mod, params, resolve_target(target))


def tune_module(mod: tvm.IRModule, params: Optional[Mapping[str, Any]],
                target: Union[str, dict, Preset, tvm.target.Target], *,
                tracker: Optional[tuple[str, int]] = None, key: Optional[str] = None,
                runner: Optional[Any] = None, builder: Optional[Any] = None, trials: int = 64,
                trials_per_iter: int = 16, max_trials_per_task: Optional[int] = None,
                database: Optional[ms.database.Database] = None, work_dir: Optional[str] = None,
                cost_model: Union[str, ms.cost_model.CostModel, None] = None, op_names: Optional[list[str]] = None,
                strategy: Any = None, seed: Optional[int] = None, task_scheduler: Any = None,
                max_seconds: Optional[float] = None) -> ms.database.Database:
    """Tune every kernel of a Relax module (after `prepare_relax`) through the same builder and runner.

    `trials` is the global budget, shared round-robin by `GuardedRoundRobin` (pass
    task_scheduler='gradient' for MetaSchedule's gradient scheduler, which can loop forever on an
    exhausted task); `max_trials_per_task` caps each kernel.  Returns the database; compile with
    `compile_tuned(mod, params, target, database)`.
    """
    tgt = resolve_target(target)
    work_dir, database = _prepare(work_dir, database)
    prepared = prepare_relax(mod, params, tgt)
    cost_model = cost_model if cost_model is not None else default_cost_model()
    with builder_and_runner(target, tracker, key, builder=builder, runner=runner) as (builder, runner), \
            metaschedule_logging():
        ms.relax_integration.tune_relax(
            prepared, params={}, target=tgt, work_dir=work_dir, max_trials_global=trials,
            max_trials_per_task=max_trials_per_task, num_trials_per_iter=trials_per_iter, op_names=op_names,
            builder=builder, runner=runner, database=database, cost_model=cost_model,
            task_scheduler=task_scheduler if task_scheduler is not None else GuardedRoundRobin(max_seconds=max_seconds),
            strategy=_strategy_for(strategy, cost_model, trials, trials_per_iter), seed=seed)
    return database


def task_budgets(prepared: tvm.IRModule, target: Union[str, dict, Preset, tvm.target.Target],
                 database: ms.database.Database, trials_per_task: int) -> list[tuple[Any, int, int]]:
    """(extracted task, trials already in `database`, trials still to spend) for every tuning task
    of a prepared module, each task budgeted `trials_per_task` in all (`measured_trials` counts
    what the database holds: a workload another model or an earlier run tuned is not tuned again)."""
    return _budgets(ms.relax_integration.extract_tasks(prepared, resolve_target(target)), database, trials_per_task)


def _budgets(tasks: Sequence[Any], database: ms.database.Database, trials_per_task: int) -> list[tuple[Any, int, int]]:
    from .database import measured_trials

    out = []
    for task in tasks:
        done = measured_trials(database, task.dispatched[0])
        out.append((task, done, max(int(trials_per_task) - done, 0)))
    return out


def _batch_groups(plan: Sequence[tuple[Any, int]], trials_per_iter: int) -> list[list[tuple[Any, int]]]:
    """`plan` split into sessions whose batch size (`_per_iter`) suits every task in them: the tasks
    with at least a full batch left together, the others grouped by the trials they have left.

    One session batches every task at the smallest budget left in it, so a single task one trial
    short (left so by a repeated schedule, or by a top-up) made the whole adapted vgg-style
    model tune in batches of one: 2-8 s of evolutionary search per measured candidate, about 20
    trials/min for 15 minutes."""
    full = [(t, left) for t, left in plan if left >= trials_per_iter]
    groups = [full] if full else []
    for n in sorted({left for _, left in plan if left < trials_per_iter}, reverse=True):
        groups.append([(t, left) for t, left in plan if left == n])
    return groups


def _per_iter(plan: Sequence[tuple[Any, int]], trials_per_iter: int) -> int:
    """Candidates per batch: at most `trials_per_iter`, and no more than the smallest budget left."""
    return max(1, min(trials_per_iter, min(left for _, left in plan)))


def tune_module_per_task(mod: tvm.IRModule, params: Optional[Mapping[str, Any]],
                         target: Union[str, dict, Preset, tvm.target.Target], trials_per_task: int, *,
                         database: ms.database.Database, work_dir: str, **session: Any) -> dict:
    """Tune every task of a Relax module up to `trials_per_task` measured candidates, counting the
    records `database` already holds for it (`tune_tasks_per_task` on the module's extracted tasks).

    Returns {"tasks": n, "tuned": [task names tuned now], "planned": trials planned now,
    "seconds": wall time of the session}."""
    if trials_per_task < 1:
        raise ValueError(f"trials_per_task must be >= 1, got {trials_per_task}")
    tgt = resolve_target(target)
    work_dir, database = _prepare(work_dir, database)
    tasks = ms.relax_integration.extract_tasks(prepare_relax(mod, params, tgt), tgt)
    return tune_tasks_per_task(tasks, target, trials_per_task, database=database, work_dir=work_dir, **session)


def tune_tasks_per_task(tasks: Sequence[Any], target: Union[str, dict, Preset, tvm.target.Target],
                        trials_per_task: int, *, database: ms.database.Database, work_dir: str,
                        tracker: Optional[tuple[str, int]] = None, key: Optional[str] = None,
                        runner: Optional[Any] = None, builder: Optional[Any] = None, trials_per_iter: int = 16,
                        cost_model: Union[str, ms.cost_model.CostModel, None] = None, strategy: Any = None,
                        seed: Optional[int] = None, max_seconds: Optional[float] = None,
                        space: Any = "post-order-apply") -> dict:
    """Tune extracted tasks (`ms.relax_integration.extract_tasks`) up to `trials_per_task` measured
    candidates each, counting the records `database` already holds: a task already at its budget
    (tuned for another model in the same database, or by an earlier run) is not tuned again and
    keeps exactly its records; a resumed run with a larger budget continues from them.  One
    MetaSchedule session, `GuardedRoundRobin` with a budget per task (never looping on an exhausted
    task) and an optional wall-clock bound `max_seconds`.  `space`: MetaSchedule's design-space
    generator (e.g. a `PostOrderApply` with `RowSplit` among its postprocessors).

    Returns {"tasks": n, "tuned": [task names tuned now], "planned": trials planned now,
    "exhausted": [tasks stopped below their budget because their search found no new candidate],
    "seconds": wall time of the session}."""
    import time
    import warnings

    if trials_per_task < 1:
        raise ValueError(f"trials_per_task must be >= 1, got {trials_per_task}")
    work_dir, database = _prepare(work_dir, database)

    def budget_left() -> list[tuple[Any, int]]:
        return [(t, left) for t, _, left in _budgets(tasks, database, trials_per_task) if left > 0]

    plan = budget_left()
    info = {"tasks": len(tasks), "tuned": [t.task_name for t, _ in plan], "planned": sum(left for _, left in plan),
            "exhausted": [], "seconds": 0.0}
    if not plan:
        return info
    cost_model = cost_model if cost_model is not None else default_cost_model()
    t0 = time.perf_counter()

    def session(plan: list[tuple[Any, int]], attempt: int = 0) -> set[str]:
        """MetaSchedule sessions over `plan` (one per `_batch_groups` group); the names of the tasks
        they found exhausted.  A top-up (`attempt` > 0) samples with another seed: the same one can
        draw the same repeat again."""
        exhausted: set[str] = set()
        for group in _batch_groups(plan, trials_per_iter):
            if max_seconds and time.perf_counter() - t0 >= max_seconds:
                break  # the wall-clock bound holds for all the groups together
            exhausted |= searched(group, attempt)
        return exhausted

    def searched(plan: list[tuple[Any, int]], attempt: int) -> set[str]:
        def run(tasks: list[tuple[Any, int]], search: Any) -> set[str]:
            left_s = None if not max_seconds else max(1.0, max_seconds - (time.perf_counter() - t0))
            return set(_tune_plan(tasks, database, work_dir, builder, runner, cost_model, trials_per_iter, search,
                                  None if seed is None else seed + attempt, left_s, space))

        try:
            return run(plan, _strategy_for(strategy, cost_model, sum(left for _, left in plan),
                                           _per_iter(plan, trials_per_iter)))
        except RuntimeError as err:
            if strategy is not None or "mismatched types" not in str(err):
                raise
            # TVM 0.27's evolutionary search sometimes dies on an int32/int64 index mismatch while
            # mutating a fused replacement kernel's schedules (seen on vgg-style's channel-shuffle
            # candidates once the run's cost model could predict).  What it measured is in the
            # database; the rest of the budget is spent sampling at random, which never mutates.
            warnings.warn(f"MetaSchedule's evolutionary search failed ({str(err).splitlines()[-1][:120]}); "
                          "finishing these tasks with random sampling", RuntimeWarning, stacklevel=3)
            names = {t.task_name for t, _ in plan}
            rest = [(t, left) for t, left in budget_left() if t.task_name in names]
            return run(rest, default_strategy(evolve=False, trials_per_iter=_per_iter(rest, trials_per_iter))) \
                if rest else set()

    with builder_and_runner(target, tracker, key, builder=builder, runner=runner) as (builder, runner), \
            metaschedule_logging():
        exhausted = session(plan)
        # MetaSchedule's scheduler counts every measured candidate against a task's budget, the
        # budget counts distinct schedules (`measured_trials`): a candidate that repeats a schedule
        # already in the database (seen on a tiny convolution's small design space) left a task one
        # short.  Top such tasks up, a bounded number of times; a wall-clock bound stops where it is.
        for attempt in range(1, 1 + (0 if max_seconds else _TOP_UPS)):
            short = [(t, left) for t, left in budget_left() if t.task_name not in exhausted]
            if not short:
                break
            exhausted |= session(short, attempt)
        if not max_seconds:
            exhausted |= {t.task_name for t, _ in budget_left()}  # still short: say so
    info["exhausted"] = [t.task_name for t, _ in plan if t.task_name in exhausted]
    info["seconds"] = time.perf_counter() - t0
    return info


#: Extra sessions `tune_tasks_per_task` runs for tasks that a repeated schedule left below budget.
_TOP_UPS = 2


def _tune_plan(plan: list[tuple[Any, int]], database: Any, work_dir: str, builder: Any, runner: Any, cost_model: Any,
               trials_per_iter: int, strategy: Any, seed: Optional[int], max_seconds: Optional[float],
               space: Any = "post-order-apply") -> list[str]:
    """One MetaSchedule session over `plan` ((task, trials left)); returns the tasks stopped as
    exhausted (`GuardedRoundRobin.terminated_empty`)."""
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts
    from tvm.s_tir.meta_schedule.tune import tune_tasks

    per_iter = _per_iter(plan, trials_per_iter)
    planned = sum(left for _, left in plan)
    scheduler = GuardedRoundRobin(max_seconds=max_seconds, budgets=[left for _, left in plan])
    contexts, weights = extracted_tasks_to_tune_contexts([t for t, _ in plan], work_dir=work_dir, seed=seed,
                                                         strategy=strategy, space=space)
    tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=planned + per_iter * len(plan),
               max_trials_per_task=max(left for _, left in plan), num_trials_per_iter=per_iter,
               builder=builder, runner=runner, database=database, cost_model=cost_model, task_scheduler=scheduler)
    return [plan[i][0].task_name for i in scheduler.terminated_empty]


def compile_tuned(mod: tvm.IRModule, params: Optional[Mapping[str, Any]],
                  target: Union[str, dict, Preset, tvm.target.Target],
                  database: Optional[ms.database.Database] = None) -> Any:
    """Compile a Relax module for `target`, with the database's best schedules applied to its kernels
    (kernels without a record keep the default schedule).  Returns the executable (`export_library`-able).

    Each kernel gets its fastest record whose schedule computes the same as the unscheduled kernel
    (`verified_database`).  The database is applied explicitly (`gos_tvm.graph.compile_lowered`:
    `MetaScheduleApplyDatabase` on the legalized and fused module) rather than through
    `compile_relax`, which was seen to drop the tuned schedules.
    """
    from ...graph import compile_lowered

    tgt = resolve_target(target)
    lowered = prepare_relax(mod, params, tgt)
    if database is not None:
        import_tensor_intrin()  # records of tensorized schedules name TVM's registered intrinsics
        # Only schedules that compute the right thing (see `schedule_is_correct`).
        tasks = ms.relax_integration.extract_tasks(lowered, tgt)
        database = verified_database(database, [t.dispatched[0] for t in tasks])
    return compile_lowered(lowered, tgt, database)


__all__ = ["builder_and_runner", "GuardedRoundRobin", "default_strategy", "default_cost_model", "KernelTuneResult", "tune_primfunc", "tune_primfuncs", "tune_module", "tune_module_per_task", "tune_tasks_per_task", "task_budgets", "compile_tuned", "prepare_relax",
           "open_database", "best_record", "record_latency", "database_records", "FAILED_RUN_SECS",
           "schedule_is_correct", "best_correct_record", "verified_database"]
