"""Distillation inside the search, on the fake device (latencies from a formula; fitting, distillation
and every accuracy check are real: TVM-compiled configurations scored on held-out digits)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from gos_tvm import graph, models
from gos_tvm.search import FakeMeasurer, GOSearch, SearchOptions
from gos_tvm.search.adapt import build_adapted, predictor
from gos_tvm.search.pareto import config_key
from gos_tvm.search.validate import classification_eval


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def trained():
    split = models.digits(size=8)
    torch.manual_seed(0)
    net = models.train(TinyNet(), split, epochs=6)
    mod, params = graph.from_torch(net, torch.from_numpy(split.x_train[:1]))
    return mod, params, split


def _search(trained, work, distill: bool, **options) -> GOSearch:
    mod, params, split = trained
    # Cheap candidates (<= 30% of a site's FLOPs) with a short layer-wise fit: some miss the budget.
    opts = SearchOptions(**{**dict(max_sites=2, tries_per_site=2, measure_per_site=1, fit_steps=10, calib_samples=192,
                                   generations=0, kernel_trials=1, trials=1, max_flops_ratio=0.3, distill=distill,
                                   distill_steps=40, final_distill_steps=80), **options})
    return GOSearch(mod, params, "local", calib_data=split.x_train,
                    evaluate=classification_eval(split.x_val, split.y_val), accuracy_budget=0.02, work_dir=work,
                    options=opts, measurer=FakeMeasurer())


def test_candidates_rejected_by_their_layerwise_fit_are_judged_after_distillation(trained, tmp_path):
    search = _search(trained, tmp_path, distill=True, distill_samples=800)
    out = search.run()
    tried = [t for d in out.decisions for t in d.tried]
    assert tried
    floor = out.original_score - 0.02
    for t in tried:  # the layer-wise fit is the proxy; only what it rejects is distilled
        expected = "layer-wise fit" if t["layerwise_score"] >= floor else "distillation (40 steps)"
        assert t["judged_by"] == expected, t
    judged = [t for t in tried if t["judged_by"].startswith("distillation")]
    assert judged, "no candidate missed the budget by its layer-wise fit: the test does not exercise distillation"
    assert any(t["score"] > t["layerwise_score"] for t in judged), judged  # distillation recovers accuracy
    assert out.distillation["enabled"] and out.distillation["task"] == "classification"
    # Layer-wise fits use the first calib_samples inputs, the judged candidates' distillations the first
    # distill_samples, the chosen configuration's all the inputs given.
    _, _, split = trained
    assert len(search.calib) == 192 and out.distillation["inputs"] == 800
    assert out.distillation["final_inputs"] == len(split.x_train) > 800
    runs = search.state["distilled"]  # keyed by the steps asked for, then the configuration
    assert {r["inputs"] for key, r in runs.items() if key.startswith("40:")} == {800}
    assert any(c for c in out.chosen.choices.values()), "nothing replaced: the final distillation is not exercised"
    assert [r["inputs"] for key, r in runs.items() if key.startswith("80:")] == [len(split.x_train)]
    # The final distillation is judged by its validation score, and kept when it is no worse.
    (final,) = [r["choices"] for key, r in runs.items() if key.startswith("80:")]
    final_score = search.state["scores"][config_key(final)]
    picked = out.distillation["final"]
    if picked is not None:
        assert picked["to"] == out.chosen.label and config_key(out.chosen.choices) == config_key(final)
        assert picked["score_after"] == final_score >= picked["score_before"]
    else:
        assert final_score < out.adapted_score
    assert out.distillation["candidates_judged_by_distillation"] == len(judged)
    # The score reported for the chosen configuration is the score of the weights handed back.
    chosen = [out.candidates[c] for c in out.chosen.choices.values() if c is not None]
    mod, params = build_adapted(search.mod, search.params, chosen)
    _, _, split = trained
    score = classification_eval(split.x_val, split.y_val)(predictor(graph.load_vm(graph.compile_module(mod, params))))
    assert score == pytest.approx(out.adapted_score)
    assert out.adapted_score >= floor
    for d in out.decisions:  # decisions name the keys of the chosen configuration
        if out.chosen.choices.get(d.site):
            assert d.choice == out.chosen.choices[d.site]


def test_distill_false_keeps_layerwise_fitting_only(trained, tmp_path):
    out = _search(trained, tmp_path, distill=False).run()
    assert all(t["judged_by"] == "layer-wise fit" for d in out.decisions for t in d.tried)
    assert not out.distillation["enabled"] and out.distillation["runs"] == 0
    assert not (tmp_path / "distill").exists()
    assert all("~" not in c for c in out.chosen.choices.values() if c)  # no distilled weight variants
    assert np.isfinite(out.adapted_score)


def test_the_inputs_distillation_trains_on_are_part_of_the_work_directorys_identity(trained, tmp_path):
    """A rerun with other inputs beyond the first calib_samples distils on other data: not the same run."""
    mod, params, split = trained
    first = _search(trained, tmp_path, distill=True)
    first.save()
    changed = split.x_train.copy()
    changed[-1] += 1.0
    with pytest.raises(ValueError, match="calib_data"):
        GOSearch(mod, params, "local", calib_data=changed, evaluate=classification_eval(split.x_val, split.y_val),
                 accuracy_budget=0.02, work_dir=tmp_path, options=first.opt, measurer=FakeMeasurer())


def test_a_second_round_starts_from_the_final_distillation_on_the_sites_still_kept(trained, tmp_path):
    """rounds=2 resumes a finished one-round directory: the second round runs the strategies from the
    chosen, distilled configuration, on the sites it kept, and the choice stays within the budget."""
    first = _search(trained, tmp_path, distill=True, distill_samples=800, max_sites=None)
    one = first.run()
    (r1,) = first.state["rounds"]
    assert r1["chosen"] == one.chosen.label and r1["score"] == one.adapted_score
    kept = sorted(s for s, c in one.chosen.choices.items() if c is None)
    assert kept and one.adapted_score > one.original_score - 0.02, "no budget or site left: round 2 is not exercised"

    mod, params, split = trained
    second = GOSearch(mod, params, "local", calib_data=split.x_train,
                      evaluate=classification_eval(split.x_val, split.y_val), accuracy_budget=0.02,
                      work_dir=tmp_path, options=dataclasses.replace(first.opt, rounds=2), measurer=FakeMeasurer())
    two = second.run()
    rounds = second.state["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[0] == r1  # round 1 is not searched again
    assert second.state["greedy_done@round1"] == kept            # round 2 visits only the sites kept
    assert second.state["greedy_done"] == first.state["greedy_done"]
    assert two.chosen.label == rounds[1]["chosen"] and two.distillation["rounds"] == rounds
    assert two.adapted_score >= two.original_score - 0.02
    # Round 2 judged its candidates in the distilled configuration of round 1.
    replaced_before = {s: c for s, c in one.chosen.choices.items() if c is not None}
    extended = [c for c in map(json.loads, second.state["scores"])
                if set(c) - set(replaced_before) and all(c.get(s) == k for s, k in replaced_before.items())]
    assert extended, "round 2 scored no configuration that extends round 1's choice"
    assert all(set(c) - set(replaced_before) <= set(kept) for c in extended)


@pytest.mark.slow  # a whole search with a distillation per replaced site (~1 min); the option is off by default
def test_each_replaced_site_is_distilled_before_the_next_site_is_judged(trained, tmp_path):
    """recover_steps: after a site is replaced its configuration is distilled (on the final
    distillation's inputs), and the search goes on from the distilled one when it scores no worse."""
    _, _, split = trained
    search = _search(trained, tmp_path, distill=True, distill_samples=800, max_sites=2, recover_steps=30)
    out = search.run()
    decisions, scores = search.state["decisions"], search.state["scores"]
    recovered = {s: d["recovered"] for s, d in decisions.items() if "recovered" in d}
    assert recovered, "no site replaced: recovery is not exercised"
    assert set(recovered) == {s for s, d in decisions.items() if d.get("choice")}  # every replaced site, only those
    runs = [r for k, r in search.state["distilled"].items() if k.startswith(f"30:{len(split.x_train)}in:")]
    assert sorted(config_key(r["choices"]) for r in runs) == sorted(config_key(r["configuration"])
                                                                    for r in recovered.values())
    for r in recovered.values():
        assert r["steps"] == 30 and r["score_after"] == scores[config_key(r["configuration"])]
        assert r["kept"] == (r["score_after"] >= r["score_before"])
    # The next site the greedy search tried was judged in the recovered configuration: its tries extend it.
    order = sorted(search.sites, key=lambda s: -search.site_latency[s])
    exercised = 0
    for site, r in recovered.items():
        nxt = next((s for s in order[order.index(site) + 1:] if decisions[s].get("tried")), None)
        if not r["kept"] or nxt is None:
            continue
        base = r["configuration"]
        tried = [c for c in map(json.loads, scores) if all(c.get(s) == k for s, k in base.items()) and set(c) > set(base)]
        assert nxt in {s for c in tried for s in set(c) - set(base)}, (site, nxt)
        exercised += 1
    assert exercised, "no site was tried after a kept recovery: the test shows nothing"
    assert out.adapted_score >= out.original_score - 0.02
    assert json.loads((tmp_path / "run.json").read_text())["recover_steps"] == 30


def test_recovery_off_leaves_older_work_directories_identity_unchanged(trained, tmp_path):
    """recover_steps came after work directories were written: at 0 it is not part of run.json."""
    search = _search(trained, tmp_path, distill=True)
    search.save()
    assert search.opt.recover_steps == 0
    assert "recover_steps" not in json.loads((tmp_path / "run.json").read_text())
