"""Issue 14: one database per run, per-task budgets, a measurement a user can trust.

The database properties (which workloads get records, how many) are checked on a real, tiny
MetaSchedule tuning into a real JSON database on this host; the search-logic properties (no
second model tuning when nothing is replaced, the budget the adapted model is given, resume with a
larger budget) on the fake device."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gos_tvm import graph
from gos_tvm.hw import LatencyStats, LocalDevicePool, TrackerRunner, WarmBuilder, open_database
from gos_tvm.hw.tuning import GuardedRoundRobin, measured_trials, prepare_relax, task_budgets, tune_module_per_task
from gos_tvm.search import FakeMeasurer, GOSearch, SearchOptions
from gos_tvm.search.measurer import measure_until_stable, relative_spread


def _net(second: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), second, torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()


def _relax(net: torch.nn.Module):
    return graph.from_torch(net, torch.zeros(1, 1, 8, 8))


def _tasks(model) -> dict[int, object]:
    """{structural hash of the workload: extracted task} of a model's tuning tasks (task names are
    per model: two models' 'fused_conv2d1_add1_relu1' can be different computations)."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from gos_tvm.hw import resolve_preset

    target = resolve_preset("local").target
    return {int(tvm_ffi.structural_hash(t.dispatched[0])): t
            for t in ms.relax_integration.extract_tasks(prepare_relax(*model, target), target)}


def _records_per_workload(db, model) -> dict[int, int]:
    return {h: measured_trials(db, t.dispatched[0]) for h, t in _tasks(model).items()}


def _traces(db, model) -> dict[int, set[str]]:
    """The schedules (traces) in `db` of each of `model`'s workloads."""
    from gos_tvm.hw.tuning import database_records

    return {h: {str(r.trace) for r in database_records(db, t.dispatched[0])} for h, t in _tasks(model).items()}


def _tuned(info: dict, model) -> set[int]:
    return {h for h, t in _tasks(model).items() if t.task_name in info["tuned"]}


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    builder = WarmBuilder("local")
    with LocalDevicePool("gos-budgets", n_servers=1) as pool:
        runner = TrackerRunner(pool.tracker, pool.key)
        try:
            yield builder, runner
        finally:
            runner.close()
            builder.close()


def test_adapted_model_tunes_only_its_new_tasks_and_a_larger_budget_continues(device, tmp_path):
    """One database for two models that share their first convolution: the second model's
    shared task keeps exactly the first model's records, only its new tasks are tuned; a larger
    per-task budget then tunes every task on from the records already there."""
    builder, runner = device
    original = _relax(_net(torch.nn.Conv2d(4, 8, 3, padding=1)))
    adapted = _relax(_net(torch.nn.Conv2d(4, 8, 1)))  # a "replaced" second convolution
    db = open_database(tmp_path / "database")
    kw = dict(database=db, builder=builder, runner=runner, seed=0, trials_per_iter=2)

    info = tune_module_per_task(*original, "local", 2, work_dir=str(tmp_path / "logs" / "original"), **kw)
    first = _records_per_workload(db, original)
    assert _tuned(info, original) == set(first)
    # A reshape's or layout transpose's design space can hold a single schedule: it is exhausted
    # below the budget (and the scheduler stopped it instead of looping); every computing kernel
    # got its 2 trials.
    names = {h: t.task_name for h, t in {**_tasks(original), **_tasks(adapted)}.items()}
    exhausted = {h for h, n in first.items() if n < 2}
    assert all(_moves_data(names[h]) for h in exhausted) and all(n >= 1 for n in first.values()), (first, names)
    traces = _traces(db, original)

    info = tune_module_per_task(*adapted, "local", 2, work_dir=str(tmp_path / "logs" / "adapted"), **kw)
    second = _records_per_workload(db, adapted)
    shared, new = set(first) & set(second), set(second) - set(first)
    assert shared - exhausted and new, ({names[h] for h in shared}, {names[h] for h in new})
    # Only the new tasks (and an exhausted one, which yields nothing) were tuned ...
    assert new <= _tuned(info, adapted) <= new | exhausted
    assert all(second[h] == 2 for h in new if not _moves_data(names[h])), second
    # ... and the original's tasks have exactly the records they had.
    assert _records_per_workload(db, original) == first and _traces(db, original) == traces

    # Resume with a larger per-task budget: every computing task continues from its 2 records to 3.
    # (An exhausted task is tried again on each call -- it is below its budget -- and may re-time
    # its one schedule; records are counted on the computing tasks.)
    n_records = _raw_records(db, original, exhausted)
    info = tune_module_per_task(*original, "local", 3, work_dir=str(tmp_path / "logs" / "original"), **kw)
    assert _tuned(info, original) == set(first)
    again = _records_per_workload(db, original)
    # A small task's random search can come back twice without a new candidate, or keep drawing
    # schedules already measured: the scheduler stops it (and says so) rather than looping.
    stopped = {h for h in first if names[h] in info["exhausted"]} | exhausted
    assert all(again[h] == 3 for h in first if h not in stopped), (again, info["exhausted"])
    assert all(again[h] >= first[h] for h in first)
    now = _traces(db, original)
    assert all(traces[h] <= now[h] for h in first)  # continued from the records, nothing dropped
    # Each new distinct schedule is one more record; MetaSchedule may also have measured a repeat
    # of a schedule already there (the scheduler then tops the task up), never fewer.
    assert _raw_records(db, original, exhausted) >= n_records + sum(again[h] - first[h] for h in first
                                                                    if h not in exhausted)
    # The same budget again tunes no computing task and adds no record to one.
    n_records = _raw_records(db, original, stopped)
    info = tune_module_per_task(*original, "local", 3, work_dir=str(tmp_path / "logs" / "o2"), **kw)
    assert _tuned(info, original) <= stopped and _raw_records(db, original, stopped) == n_records

    # A warm start: a new run's database seeded with these records has nothing left to tune.
    from gos_tvm.hw import resolve_preset
    from gos_tvm.hw.tuning import copy_records

    warm = open_database(tmp_path / "warm")
    assert copy_records(db, warm) == len(db.get_all_tuning_records())
    target = resolve_preset("local").target
    left = {t.task_name: n for t, _, n in task_budgets(prepare_relax(*original, target), target, warm, 3)}
    assert all(n == 0 for name, n in left.items() if not _moves_data(name) and name not in
               {names[h] for h in stopped}), left


def _moves_data(task_name: str) -> bool:
    """A task that only moves data (a reshape, or the NCHW <-> NHWC transposes of `conv_layout`)."""
    return any(word in task_name for word in ("reshape", "transpose", "layout_transform"))


def _raw_records(db, model, leave_out: set[int]) -> int:
    """Every record (re-timings included) of `model`'s workloads but those in `leave_out`."""
    from gos_tvm.hw.tuning import database_records

    return sum(len(database_records(db, t.dispatched[0])) for h, t in _tasks(model).items() if h not in leave_out)


def test_measured_trials_does_not_count_re_timings(device, tmp_path):
    """`remeasure_best` commits the winner again; a per-task budget counts candidates, not timings."""
    from gos_tvm.hw.tuning import remeasure_best

    builder, runner = device
    mod, params = _relax(_net(torch.nn.Conv2d(4, 8, 1)))
    db = open_database(tmp_path / "database")
    tune_module_per_task(mod, params, "local", 2, database=db, work_dir=str(tmp_path / "logs"), builder=builder,
                         runner=runner, seed=0, trials_per_iter=2)
    from gos_tvm.hw import resolve_preset
    from tvm.s_tir import meta_schedule as ms

    target = resolve_preset("local").target
    tasks = ms.relax_integration.extract_tasks(prepare_relax(mod, params, target), target)
    before = len(db.get_all_tuning_records())
    trials = [measured_trials(db, t.dispatched[0]) for t in tasks]
    assert all(n == 2 for t, n in zip(tasks, trials) if not _moves_data(t.task_name)), trials
    assert remeasure_best(db, [t.dispatched[0] for t in tasks], target, builder, runner) == len(tasks)
    assert len(db.get_all_tuning_records()) == before + len(tasks)
    assert [measured_trials(db, t.dispatched[0]) for t in tasks] == trials


def _replaced(model, site_id: str, program=None, seed: int = 0):
    """`model` with one site replaced: by `program` with random weights, or by the site's own program."""
    mod, params = model
    site = {s.id: s for s in graph.find_sites(mod, params)}[site_id]
    if program is None:  # as the search prices a site: its program as kernels of ours, a task of its own
        return graph.substitute(mod, params, {site_id: (site.program, site.weights)}, relax_operators=False)
    rng = np.random.default_rng(seed)
    weights = {k: rng.standard_normal(shape).astype("float32") for k, shape in program.weights.items()}
    return graph.substitute(mod, params, {site_id: (program, weights)})


def test_task_delta_counts_each_workload_with_its_weight():
    """Two identical conv + ReLU layers are one task run twice: replacing one of them removes one
    call of it (the other layer still runs it) and adds the replacement's own fused task."""
    from gos_tvm.hw.tuning import task_delta

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()).eval()
    original = graph.from_torch(net, torch.zeros(1, 4, 8, 8))
    before = list(_tasks(original).values())
    (twice,) = [t for t in before if "conv2d" in t.task_name]
    assert int(twice.weight) == 2
    delta = task_delta(before, list(_tasks(_replaced(original, "0")).values()))
    assert [(t.task_name, n) for t, n in delta.removed] == [(twice.task_name, 1)]
    assert len(delta.added) == 1 and delta.added[0][1] == 1 and "gos_" in delta.added[0][0].task_name
    assert task_delta(before, before).removed == [] and task_delta(before, before).added == []
    # Written as Relax's operators (`graph.operators`), the site's own program is the original's task.
    mod, params = original
    site = graph.find_sites(mod, params)[0]
    same = graph.substitute(mod, params, {site.id: (site.program, site.weights)})
    assert same[0]["main"].params != mod["main"].params  # the weights are the replacement's parameters
    delta = task_delta(before, list(_tasks(same).values()))
    assert delta.removed == [] and delta.added == []


def test_a_site_and_its_candidate_are_priced_by_the_models_own_tasks(device, tmp_path):
    """`TunedMeasurer.replacements`: a site costs what the original's tuned task that replacing it
    removes costs (nothing is tuned for it); a candidate's new fused task is tuned into the run's
    one database with the per-task budget, the original's tasks keep their records, and asking
    again tunes nothing."""
    from gos_tvm.hw import resolve_preset
    from gos_tvm.hw.tuning import best_correct_record
    from gos_tvm.search.measurer import TunedMeasurer, TuningParts
    from gos_tvm.space import candidates

    builder, runner = device
    original = _relax(_net(torch.nn.Conv2d(4, 8, 3, padding=1)))
    measurer = TunedMeasurer(resolve_preset("local"), None, None, tmp_path / "database",
                             SearchOptions(trials_per_task=2), TuningParts(builder=lambda _: builder,
                                                                           runner=lambda *_: runner))
    db = measurer.database()
    tune_module_per_task(*original, "local", 2, database=db, work_dir=str(tmp_path / "logs"), builder=builder,
                         runner=runner, seed=0, trials_per_iter=2)
    records = _records_per_workload(db, original)
    n_records = len(db.get_all_tuning_records())
    site = {s.id: s for s in graph.find_sites(*original)}["2"]

    own = measurer.replacements(original, {"2": _replaced(original, "2")}, trials_per_task=None)["2"]
    (removed,) = [t for h, t in _tasks(original).items() if t.task_name in own["removed"]]
    assert "conv2d" in removed.task_name and own["added_s"] is None
    assert own["removed_s"] == best_correct_record(db, removed.dispatched[0])[0] > 0
    assert len(db.get_all_tuning_records()) == n_records  # nothing tuned for a site

    program = candidates(site.program, depth=1, max_flops_ratio=0.6, include_original=False)[0].program
    variant = _replaced(original, "2", program)
    row = measurer.replacements(original, {"cand": variant}, trials_per_task=2)["cand"]
    assert row["removed"] == own["removed"] and row["removed_s"] == own["removed_s"]
    new = [t for h, t in _tasks(variant).items() if h not in records]
    assert [t.task_name for t in new] == row["added"]
    assert all(measured_trials(db, t.dispatched[0]) == 2 for t in new)
    assert row["added_s"] == pytest.approx(sum(best_correct_record(db, t.dispatched[0])[0] for t in new))
    assert 0 < row["added_s"] < float("inf")
    assert _records_per_workload(db, original) == records  # the original's tasks were not tuned again
    n_records = len(db.get_all_tuning_records())
    assert measurer.replacements(original, {"cand": variant}, trials_per_task=2) == {"cand": row}
    assert len(db.get_all_tuning_records()) == n_records
    # every session of the run feeds one cost model, so candidates' searches learn from earlier ones
    assert measurer._cost_model() is measurer._cost_model() and measurer._cost_model().data_size >= 2 * len(new)


def test_guarded_round_robin_budgets_are_per_task():
    sched = GuardedRoundRobin(budgets=[3, 1])
    assert sched.budgets == [3, 1] and sched.trials == {}


# ------------------------------------------------------------------------------ the search, fake device


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 8, 8)).astype("float32")
    net = Small().eval()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(-1).numpy()
    mod, params = graph.from_torch(net, torch.from_numpy(x[:1]))
    return mod, params, x, y


def _search(small, work_dir, fake, strategies=None, **opts):
    mod, params, x, y = small
    options = SearchOptions(fit_steps=5, calib_samples=8, tries_per_site=1, measure_per_site=1, generations=1,
                            population=2, kernel_trials=1, **opts)
    return GOSearch(mod, params, "local", calib_data=x, evaluate=lambda p: float((p(x).argmax(-1) == y).mean()),
                    accuracy_budget=1.0, work_dir=work_dir, options=options, measurer=fake, strategies=strategies)


def test_nothing_replaced_means_one_model_tuning_and_1x(small, tmp_path):
    import gos_tvm

    mod, params, x, y = small
    fake = FakeMeasurer()
    result = gos_tvm.tune(mod, "local", params=params, calib_data=x, val_data=(x, y), accuracy_budget=0.5,
                          work_dir=tmp_path, measurer=fake, strategies=[], trials_per_task=3, fit_steps=5,
                          calib_samples=8, kernel_trials=1)
    assert fake.model_calls == ["original"] and fake.model_trials == [3]
    assert result.speedup == 1.0 and result.adapted_latency == result.original_latency
    assert not any(result.chosen.choices.values())
    report = json.loads(result.report_path.read_text())
    assert report["speedup"] == 1.0 and report["trials_per_task"] == 3
    assert "nothing replaced" in result.summary()
    assert [k for k in result.new_measurements if k.startswith("model:")] == [next(
        k for k in result.new_measurements if k.startswith("model:original:"))]


def test_adapted_model_gets_the_originals_per_task_budget(small, tmp_path):
    fake = FakeMeasurer()
    search = _search(small, tmp_path, fake, trials_per_task=5)
    search.run()
    assert "adapted" in fake.model_calls, "the fake device should make a replacement pay off"
    assert fake.model_trials == [5] * len(fake.model_calls)


def test_compat_total_trials_is_spread_over_the_originals_tasks(small, tmp_path):
    fake = FakeMeasurer()
    search = _search(small, tmp_path, fake, strategies=[], trials=10)
    search.run()
    from tvm.s_tir import meta_schedule as ms

    from gos_tvm.hw import resolve_preset

    target = resolve_preset("local").target
    mod, params, _, _ = small
    n = len(ms.relax_integration.extract_tasks(prepare_relax(mod, params, target), target))
    assert fake.model_trials == [-(-10 // n)]
    assert SearchOptions(trials=10, trials_per_task=4).model_trials_per_task(n) == 4  # per task wins


def test_resume_with_a_larger_per_task_budget_tunes_again_with_it(small, tmp_path):
    first = FakeMeasurer()
    _search(small, tmp_path, first, strategies=[], trials_per_task=2).run()
    again = FakeMeasurer()
    _search(small, tmp_path, again, strategies=[], trials_per_task=2).run()
    assert again.model_calls == []  # same budget: the logged measurement is reused
    more = FakeMeasurer()
    _search(small, tmp_path, more, strategies=[], trials_per_task=4).run()
    assert more.model_calls == ["original"] and more.model_trials == [4]


def test_bad_budgets_are_refused_clearly():
    with pytest.raises(ValueError, match="trials_per_task must be a positive integer"):
        SearchOptions(trials_per_task=0)
    with pytest.raises(ValueError, match="time_budget"):
        SearchOptions(time_budget=-1)


def test_a_work_dir_with_per_model_databases_is_refused_untouched(small, tmp_path):
    old = tmp_path / "database" / "original"
    old.mkdir(parents=True)
    (old / "database_tuning_record.json").write_text("")
    with pytest.raises(ValueError, match="one tuning database per model"):
        _search(small, tmp_path, FakeMeasurer(), trials_per_task=2)
    assert (old / "database_tuning_record.json").exists()


def test_a_warm_start_database_that_is_not_one_is_refused(small, tmp_path):
    mod, params, x, y = small
    with pytest.raises(ValueError, match="holds no MetaSchedule JSON database"):
        GOSearch(mod, params, "local", calib_data=x, evaluate=lambda p: 1.0, accuracy_budget=1.0,
                 work_dir=tmp_path / "w", options=SearchOptions(), measurer=FakeMeasurer(),
                 warm_start_database=tmp_path / "nowhere")


# ------------------------------------------------------------------------------ measuring until stable


def _rounds(*rounds):
    it = iter(rounds)
    return lambda rnd: LatencyStats.from_raw(next(it), number=5, device="local")


def test_measurement_stops_once_the_spread_is_small():
    first, stats = measure_until_stable(_rounds([1.0, 1.01, 0.99, 1.0], [9, 9, 9, 9]), max_spread=0.05, max_rounds=4)
    assert stats["rounds"] == 1 and stats["stable"] and stats["min_s"] == 0.99 and stats["median_s"] == 1.0
    assert first.raw == [1.0, 1.01, 0.99, 1.0]


def test_measurement_repeats_then_says_it_is_not_stable():
    noisy = [[1.0, 2.0, 3.0, 4.0]] * 3
    _, stats = measure_until_stable(_rounds(*noisy), max_spread=0.05, max_rounds=3)
    assert stats["rounds"] == 3 and not stats["stable"] and len(stats["raw_s"]) == 12
    assert stats["spread"] == pytest.approx(relative_spread(sum(noisy, [])))
    # A noisy first round that settles: more rounds, then stable.
    _, stats = measure_until_stable(_rounds([1.0, 1.3, 1.0, 1.0], [1.0] * 8), max_spread=0.05, max_rounds=4)
    assert stats["rounds"] == 2 and stats["stable"]


def test_default_budgets_tune_models_and_candidates_to_the_same_per_task_budget(small, tmp_path):
    """Defaults: both models of a speed-up at DEFAULT_TRIALS_PER_TASK per task, and candidates screened
    at the same budget as the original tasks they are compared with; an explicit value wins."""
    from gos_tvm.search.results import DEFAULT_TRIALS_PER_TASK

    mod, params, x, y = small

    def search(**opts) -> GOSearch:
        return GOSearch(mod, params, "local", calib_data=x, evaluate=lambda p: 1.0, accuracy_budget=1.0,
                        work_dir=tmp_path / str(len(list(tmp_path.iterdir()))), measurer=FakeMeasurer(),
                        options=SearchOptions(**opts))

    default = search()
    assert (default.trials_per_task, default.candidate_trials) == (DEFAULT_TRIALS_PER_TASK, DEFAULT_TRIALS_PER_TASK)
    assert search(trials_per_task=4).candidate_trials == 4
    whole_model = search(trials=1000)  # the former whole-model total, spread over the original's tasks
    assert whole_model.candidate_trials == whole_model.trials_per_task < 1000
    assert search(trials_per_task=32, kernel_trials=24).candidate_trials == 24


def test_speedup_compares_minima_when_a_timing_is_not_stable():
    """Timed alternately on a bimodal host, medians compare host modes: these are the rows of a
    resnet18-style run whose adapted model was faster in every mode but had the larger median."""
    from gos_tvm.search.measurer import speedup

    original = {"median_s": 0.413e-3, "min_s": 0.350e-3, "stable": False}
    adapted = {"median_s": 0.466e-3, "min_s": 0.285e-3, "stable": False}
    ratio, statistic = speedup(original, adapted)
    assert statistic == "min" and ratio == pytest.approx(0.350 / 0.285)
    ratio, statistic = speedup({**original, "stable": True}, {**adapted, "stable": True})
    assert statistic == "median" and ratio == pytest.approx(0.413 / 0.466)
    assert speedup({**original, "stable": True}, adapted)[1] == "min"


def test_tasks_are_batched_with_tasks_that_have_as_many_trials_left():
    """A session batches every task at the smallest budget left in it: one task a trial short must
    not make the others tune one candidate per batch (the adapted vgg-style model did, for 15 min)."""
    from gos_tvm.hw.tuning.session import _batch_groups, _per_iter

    plan = [("a", 64), ("b", 1), ("c", 48), ("d", 3), ("e", 1), ("f", 16)]
    groups = _batch_groups(plan, 16)
    assert groups == [[("a", 64), ("c", 48), ("f", 16)], [("d", 3)], [("b", 1), ("e", 1)]]
    assert [_per_iter(g, 16) for g in groups] == [16, 3, 1]
    assert sorted(sum(groups, [])) == sorted(plan)
