"""Every schedule MetaSchedule measures for a replacement operator computes the operator.

Tuning does not check results; a schedule that drops part of the iteration space still gets
a (fast) time.  This tunes one candidate of every family, and compositions, and runs every
record in the database against the torch lowering."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm.s_tir import Schedule

from gos_tvm.hw import preset, tune_primfuncs
from gos_tvm.instructions import library, to_te, to_torch
from gos_tvm.space import RULES, candidates


def _pick():
    conv = library.conv2d((1, 8, 10, 10), 16, 3, padding=1)
    cands = candidates(conv, depth=2, max_flops_ratio=0.9, include_original=False)
    chosen, seen = [], set()
    for c in cands:  # one per family, then a few compositions
        if c.rule not in seen and (c.rule in RULES or len(chosen) < len(RULES) + 2):
            seen.add(c.rule)
            chosen.append(c)
    assert {c.rule for c in chosen} >= set(RULES)
    return chosen


def test_every_tuned_record_of_every_family_is_correct(tmp_path):
    chosen = _pick()
    funcs = {f"c{i}": to_te(c.program) for i, c in enumerate(chosen)}
    results = tune_primfuncs(funcs, "local", runner="local", trials_per_task=4, trials_per_iter=4,
                             work_dir=str(tmp_path), seed=0)
    target = preset("local").target
    rng = np.random.default_rng(0)
    checked = 0
    for (name, func), cand in zip(funcs.items(), chosen):
        module = to_torch(cand.program, generator=torch.Generator().manual_seed(1))
        weights = module.weight_arrays()
        x = rng.standard_normal(cand.program.inputs["x"]).astype("float32")
        expected = module(torch.from_numpy(x)).detach().numpy()
        db = results[name].database
        wl = tvm.IRModule({"main": func.with_attr("global_symbol", name)})
        records = db.get_top_k(db.commit_workload(wl), 100)
        assert records, f"{cand.rule}: no successful record"
        for rec in records:
            sch = Schedule(wl)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            lib = tvm.compile(sch.mod, target=target)
            out = tvm.runtime.tensor(np.full(cand.program.output_shape, np.nan, "float32"))
            lib[name](tvm.runtime.tensor(x), *[tvm.runtime.tensor(weights[k]) for k in cand.program.weights], out)
            err = np.linalg.norm(out.numpy() - expected) / np.linalg.norm(expected)
            assert err < 1e-4, f"{cand.rule} {cand.rule_params}: a tuned schedule is wrong (rel. error {err:.3g})"
            checked += 1
    print(f"checked {checked} tuned schedules of {len(chosen)} candidates")
