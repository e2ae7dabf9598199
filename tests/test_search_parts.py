"""The search's parts, unit-tested on a fake device (`FakeMeasurer`: latencies from a formula, no
tuning, no tracker): the bisection, the Pareto front, the strategies, the fall-back and resume.
Accuracy is real: every configuration is built (in its torch form, checked here against its TVM
build) and scored on the calibration data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gos_tvm import graph, models
from gos_tvm.search import (Evolution, FakeMeasurer, GOSearch, GreedyLeastEfficientFirst, SearchOptions,
                            SearchStrategy)
from gos_tvm.search.pareto import Configuration, choose, config_key, pareto_front
from gos_tvm.search.strategies import bisect_cheapest, screened_front, spread

OPTIONS = dict(max_sites=2, tries_per_site=3, measure_per_site=2, fit_steps=20, calib_samples=16, generations=1,
               population=2, kernel_trials=1, trials=1)


# ------------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("n,cheapest", [(8, 0), (8, 3), (8, 7), (5, 2), (1, 0)])
def test_bisection_finds_the_cheapest_accepted_position(n, cheapest):
    calls = []

    def accept(pos):
        calls.append(pos)
        return pos >= cheapest  # accuracy grows with cost

    bisect_cheapest(n, accept, max_tries=10)
    assert calls[0] == n - 1, "the most capable candidate is tried first"
    assert min(p for p in calls if p >= cheapest) == cheapest
    assert len(calls) <= 1 + int(np.ceil(np.log2(n))) if n > 1 else len(calls) == 1


def test_bisection_walks_down_from_a_rejected_top_then_stops_when_tries_run_out():
    calls = []
    bisect_cheapest(8, lambda p: calls.append(p) or False, max_tries=6)
    assert calls == [7, 6, 5]  # the most capable ones, half the tries; then the site is given up
    calls.clear()
    bisect_cheapest(8, lambda p: calls.append(p) or 2 <= p <= 6, max_tries=6)
    assert calls == [7, 6, 3, 1, 2]  # accepted at 6: the cheaper part below it is bisected
    calls.clear()
    bisect_cheapest(2, lambda p: calls.append(p) or False, max_tries=1)
    assert calls == [1]
    calls.clear()
    bisect_cheapest(64, lambda p: calls.append(p) or True, max_tries=3)
    assert calls == [63, 31, 15]
    bisect_cheapest(0, lambda p: pytest.fail("nothing to try"), max_tries=3)


def test_the_screened_front_falls_in_error_as_the_cost_grows():
    ranking = [4, 0, 3, 1, 2, 5]                       # candidate indices, cheapest predicted first
    errors = {4: 0.9, 3: 0.5, 1: 0.6, 2: 0.2, 5: 0.2}  # candidate 0 was not screened
    assert screened_front(ranking, errors) == [4, 3, 2]  # 1 fits worse than the cheaper 3; 5 no better than 2
    assert screened_front(ranking, {}) == []
    assert spread(300, 4) == [0, 100, 199, 299] and spread(3, 32) == [0, 1, 2] and spread(9, 1) == [8]


def test_pareto_front_and_choice_within_budget():
    c = lambda lat, acc, site=None: Configuration({"a": site}, lat, acc)  # noqa: E731
    original = c(1.0, 0.90)
    fast_bad, mid, dominated, slow_good = c(0.3, 0.70, "x"), c(0.6, 0.89, "y"), c(0.7, 0.85, "z"), c(1.2, 0.95, "w")
    front = pareto_front([original, fast_bad, mid, dominated, slow_good, mid])
    assert [f.key for f in front] == [fast_bad.key, mid.key, original.key, slow_good.key]  # fastest first, unique
    assert choose(front, floor=0.88) is mid
    assert choose(front, floor=0.90) is original
    assert choose(front, floor=0.0) is fast_bad
    # One identity per configuration, whatever lists its kept sites; the label is for people only.
    listed, unlisted = Configuration({"a": "x", "b": None}, 1.0, 0.9), Configuration({"a": "x"}, 1.0, 0.9)
    assert listed.key == unlisted.key == config_key({"a": "x"}) and listed.label == "a=x,b=-"
    assert len(pareto_front([listed, unlisted])) == 1


# ------------------------------------------------------------------------------------ the loop on a fake device


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    x = torch.randn(24, 1, 16, 16)
    net = models.DigitsCNN(width=4).eval()
    mod, params = graph.from_torch(net, x[:1])
    with torch.no_grad():
        reference = net(x).numpy()
    return mod, params, x.numpy(), reference


def _evaluate(x, reference):
    """Minus the relative error of the model's outputs against the original network's."""
    def evaluate(predict):
        return -float(np.linalg.norm(predict(x) - reference) / np.linalg.norm(reference))
    return evaluate


#: A smaller search for the tests that only need one replaced site.
ONE_SITE = dict(max_sites=1, tries_per_site=2, measure_per_site=1, generations=0)


def _search(model, work_dir, measurer, budget=0.5, options=None, **kw):
    mod, params, x, reference = model
    return GOSearch(mod, params, "local", calib_data=x, evaluate=_evaluate(x, reference), accuracy_budget=budget,
                    work_dir=work_dir, options=SearchOptions(**{**OPTIONS, **(options or {})}), measurer=measurer,
                    **kw)


@pytest.fixture(scope="module")
def finished(model, tmp_path_factory):
    """One whole search on the fake device."""
    work = tmp_path_factory.mktemp("fake")
    fake = FakeMeasurer()
    search = _search(model, work, fake)
    return search, search.run(), fake, work


def test_search_on_the_fake_device_replaces_the_least_efficient_sites(finished):
    search, out, fake, _ = finished
    lat = out.site_latency
    slowest = sorted(lat, key=lambda s: -lat[s])[:2]
    tried = {d.site for d in out.decisions if d.tried}
    assert tried and tried <= set(slowest), (tried, slowest)  # greedy: least efficient first, max_sites=2
    assert out.chosen.key in {c.key for c in out.front}
    assert out.adapted_score >= out.original_score - 0.5
    replaced = [d for d in out.decisions if d.choice]
    assert replaced, [d.reason for d in out.decisions]
    for d in replaced:
        assert d.choice in out.candidates and out.candidates[d.choice].site == d.site
        # a replacement is chosen only if, as the model runs it, it costs less than the site did
        row = search.candidate_measurement(d.choice)
        assert row["latency_s"] < lat[d.site] and row["removed_s"] == pytest.approx(lat[d.site])
    assert out.adapted["median_s"] < out.baseline["median_s"]
    assert fake.model_calls == ["original", "adapted"]
    # the speed-up comes from the two models timed alternately, once
    assert fake.paired_calls == [["adapted", "original"]]
    assert out.baseline["timed"] == out.adapted["timed"] and out.baseline["rounds"] == search.opt.max_rounds
    # every site and candidate was asked about once (distilled variants share their measurement)
    assert fake.replacement_calls and len(fake.replacement_calls) == len(set(fake.replacement_calls))


def test_each_site_bisects_its_screened_front_from_the_best_fitting_end(finished):
    search, _, _, _ = finished
    sites = [(site, d) for site, d in search.state["decisions"].items() if d["tried"]]
    assert sites
    for site, d in sites:
        (errors,) = [e for key, e in search.state["screens"].items() if key.startswith(f"{site}@")]
        assert d["screened"]["candidates"] == len(errors) <= search.opt.screen_per_site
        assert d["tried"][0]["screen_rel_error"] == min(errors.values())  # the most capable point first
        assert all(t["screen_rel_error"] in errors.values() for t in d["tried"])


def test_configurations_score_the_same_in_torch_form_and_as_tvm_builds(finished):
    search, out, _, _ = finished
    assert not search.state.get("no_torch_form")
    replaced = [c for c in search.configurations() if any(c.choices.values())]
    assert replaced
    x = search.calib
    for config in replaced[:3]:
        torch_out, tvm_out = search.predict(config.choices)(x), search.predict(config.choices, form="tvm")(x)
        np.testing.assert_allclose(torch_out, tvm_out, rtol=1e-4, atol=1e-4)
        assert search.score(config.choices) == pytest.approx(search.evaluate_fn(search.predict(config.choices, "tvm")),
                                                              abs=1e-5)


def test_evolution_scores_new_configurations_and_keeps_its_population(finished):
    search, out, _, _ = finished
    assert "0" in search.state["generations"]
    population = search.state["generations"]["0"]
    assert 1 <= len(population) <= max(2, OPTIONS["population"] // 2)
    fitness = [Evolution.fitness(search, c) for c in population]
    assert fitness == sorted(fitness)


def test_resumed_search_measures_nothing_again_and_agrees(model, finished):
    _, out, _, work = finished
    fake = FakeMeasurer()
    again = _search(model, work, fake).run()
    assert fake.replacement_calls == [] and fake.model_calls == [] and again.new_measurements == []
    assert again.chosen.key == out.chosen.key and again.adapted == out.adapted


class _Killed(Exception):
    pass


class _KillAfterGreedy(SearchStrategy):
    name = "kill"

    def run(self, search, choices):
        raise _Killed


def test_run_killed_between_strategies_resumes_from_its_state(model, tmp_path):
    first = FakeMeasurer()
    with pytest.raises(_Killed):
        _search(model, tmp_path, first, options=ONE_SITE,
                strategies=[GreedyLeastEfficientFirst(), _KillAfterGreedy()]).run()
    assert first.replacement_calls
    second = FakeMeasurer()
    out = _search(model, tmp_path, second, options=ONE_SITE).run()
    assert not set(second.replacement_calls) & set(first.replacement_calls)
    assert second.model_calls in ([], ["adapted"])  # the original was measured before the kill
    assert out.chosen.key in {c.key for c in out.front}


def test_a_slower_end_to_end_measurement_falls_back_to_the_original(model, tmp_path):
    fake = FakeMeasurer(slowdown={"adapted": 10.0})  # kernels promise a gain the whole model does not show
    out = _search(model, tmp_path, fake, options=ONE_SITE).run()
    assert fake.model_calls == ["original", "adapted"]
    assert not any(out.chosen.choices.values()) and out.adapted is out.baseline
    assert out.fallback and out.fallback["rejected"]
    assert all(d.choice is None for d in out.decisions)
    assert any("not faster than the original" in d.reason for d in out.decisions)
    # Resumed with a larger budget, the configuration is tuned and timed again; now it is faster,
    # and its sites get their replacements back.
    out = _search(model, tmp_path, FakeMeasurer(), options={**ONE_SITE, "trials_per_task": 2}).run()
    assert any(out.chosen.choices.values()) and out.fallback is None
    replaced = [d for d in out.decisions if d.choice]
    assert replaced and all(d.rule != "original" and "not faster" not in d.reason for d in replaced)


def test_strategies_are_swappable(model, tmp_path):
    """No strategy: only the original configuration exists, and it is returned unmeasured twice."""
    fake = FakeMeasurer()
    out = _search(model, tmp_path, fake, options=ONE_SITE, strategies=[]).run()
    assert [c.key for c in out.configurations] == [out.chosen.key] and not any(out.chosen.choices.values())
    assert fake.model_calls == ["original"] and out.adapted is out.baseline


def test_tune_result_is_built_from_the_outcome_alone(model, tmp_path):
    """`tune` on the fake device: the result builds any configuration from its own fields (the
    candidates' programs and fitted weights), and the report says the latencies are not measured."""
    import json

    import gos_tvm

    mod, params, x, reference = model
    result = gos_tvm.tune(mod, "local", params=params, calib_data=x, eval_fn=_evaluate(x, reference),
                          accuracy_budget=0.5, work_dir=tmp_path, measurer=FakeMeasurer(),
                          **{**OPTIONS, **ONE_SITE})
    assert not hasattr(result, "_search")
    report = json.loads(result.report_path.read_text())
    assert report["measured_by"] == "FakeMeasurer" and report["original"]["latency"]["device"] == "fake"
    replaced = [d for d in result.decisions if d.choice]
    assert replaced and result.speedup > 1
    for d in replaced:
        # A distilled variant's key is the candidate's, with its weights' tag after "~".
        assert result.program(d.choice).structural_hash == d.choice.split(":")[1].split("~")[0]
    mod2, params2 = result.build()
    y = graph.run(graph.compile_module(mod2, params2), x[:1])[0]
    y_adapted = graph.run(graph.compile_module(result.mod, result.params), x[:1])[0]
    np.testing.assert_allclose(y, y_adapted, rtol=1e-5, atol=1e-6)
    original = next(c for c in result.configurations if not any(c.choices.values()))
    mod0, params0 = result.build(original)
    assert mod0 is result.original_mod
