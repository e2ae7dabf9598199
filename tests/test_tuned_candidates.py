"""Tuned schedules of replacement operators, checked against torch.

Tuning only times kernels; with TVM 0.27 a small share of the schedules MetaSchedule samples
compute wrong values (a recorded one is in data/wrong_schedule.json).  `schedule_is_correct`
(the unscheduled kernel as the reference) must tell them apart exactly as the torch lowering
does, and what gos_tvm builds from a database (`verified_database`, `compile_tuned`) must only
use correct ones."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm.s_tir import Schedule
from tvm.s_tir.meta_schedule.database import MemoryDatabase, TuningRecord
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.schedule import Trace

from gos_tvm.hw import preset, tune_primfuncs
from gos_tvm.hw.tuning import best_correct_record, schedule_is_correct, verified_database
from gos_tvm.instructions import OpProgram, library, to_te, to_torch
from gos_tvm.space import RULES, candidates

DATA = Path(__file__).parent / "data"


#: The families of the first release, tuned in the default tier; the rest are in the slow tier.
FIRST_FAMILIES = ("depthwise_separable", "spatially_separable", "low_rank", "grouped_shuffle", "shift_pointwise",
                  "channel_bottleneck")


def _pick():
    """One candidate of each first-release family on a dense 3x3 conv (compositions: the slow tier's
    `_pick_every_family`)."""
    conv = library.conv2d((1, 8, 10, 10), 16, 3, padding=1)
    cands = candidates(conv, depth=1, max_flops_ratio=0.9, include_original=False, families=FIRST_FAMILIES)
    chosen, seen = [], set()
    for c in cands:
        if c.rule not in seen:
            seen.add(c.rule)
            chosen.append(c)
    assert {c.rule for c in chosen} == set(FIRST_FAMILIES)
    return chosen


#: Sites of every grouping: depthwise (MobileNet's 3x3, stride 2), grouped, dense with a 5x5 window.
GROUPED_SITES = (library.depthwise_conv2d((1, 16, 10, 10), 3, stride=2, padding=1, bias=False),
                 library.conv2d((1, 8, 10, 10), 16, 3, padding=1, groups=2),
                 library.conv2d((1, 8, 10, 10), 8, 5, padding=2))


def _pick_every_family():
    """One candidate per family, on the first of `GROUPED_SITES` where it is legal (so the
    depthwise site gets every family it admits), plus the cheapest composition of each site."""
    chosen, seen = [], set()
    for program in GROUPED_SITES:
        cands = candidates(program, depth=2, max_flops_ratio=None, include_original=False)
        chosen += [c for c in cands if c.rule in RULES and c.rule not in seen and not seen.add(c.rule)]
        chosen += [c for c in cands if len(c.steps) == 2][:1]
    assert {c.rule for c in chosen} >= set(RULES)
    return chosen


def _torch_error(program: OpProgram, mod: tvm.IRModule, symbol: str = "main") -> float:
    """Relative error of a built kernel against the torch lowering of its program."""
    module = to_torch(program, generator=torch.Generator().manual_seed(1))
    weights = module.weight_arrays()
    x = np.random.default_rng(0).standard_normal(program.inputs["x"]).astype("float32")
    expected = module(torch.from_numpy(x)).detach().numpy()
    lib = tvm.compile(mod, target=preset("local").target)
    out = tvm.runtime.tensor(np.full(program.output_shape, np.nan, "float32"))
    lib[symbol](tvm.runtime.tensor(x), *[tvm.runtime.tensor(weights[k]) for k in program.weights], out)
    return float(np.linalg.norm(out.numpy() - expected) / np.linalg.norm(expected))


def _applied(wl: tvm.IRModule, trace) -> tvm.IRModule:
    sch = Schedule(wl)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod


def test_a_wrong_schedule_is_caught_and_never_used():
    """A real wrong schedule: torch sees it, `schedule_is_correct` sees it, and a database in
    which it is the fastest record yields the slower correct one instead."""
    data = json.loads((DATA / "wrong_schedule.json").read_text())
    program = OpProgram.from_json(data["program"])
    wl = tvm.IRModule({"main": to_te(program)})
    sch = Schedule(wl)
    Trace.apply_json_to_schedule(tvm.ir.load_json(data["trace"]), sch)
    assert _torch_error(program, sch.mod) > 1e-4                       # TVM computes it wrong
    assert not schedule_is_correct(wl, sch.trace)
    simple = Schedule(wl)                       # a plain correct schedule (records need a non-empty trace)
    simple.parallel(simple.get_loops(simple.get_sblock("contract"))[0])
    assert schedule_is_correct(wl, simple.trace) and _torch_error(program, simple.mod) < 1e-5

    db = MemoryDatabase()
    workload = db.commit_workload(wl)
    target = preset("local").target
    args = ArgInfo.from_prim_func(wl["main"])
    db.commit_tuning_record(TuningRecord(sch.trace, workload, [1e-6], target, args))       # fast, wrong
    db.commit_tuning_record(TuningRecord(simple.trace, workload, [1e-3], target, args))    # slow, right
    assert db.get_top_k(workload, 1)[0].run_secs[0].value == 1e-6      # what MetaSchedule would apply
    latency, record = best_correct_record(db, wl)
    assert latency == 1e-3 and _torch_error(program, _applied(wl, record.trace)) < 1e-5
    picked = verified_database(db, [wl]).query_tuning_record(wl, target, "main")
    assert picked is not None and _torch_error(program, _applied(wl, picked.trace)) < 1e-5


def _check_tuned_records(chosen, tmp_path) -> None:
    funcs = {f"c{i}": to_te(c.program) for i, c in enumerate(chosen)}
    results = tune_primfuncs(funcs, "local", runner="local", trials_per_task=4, trials_per_iter=4,
                             work_dir=str(tmp_path), seed=0)
    checked = wrong = 0
    for (name, func), cand in zip(funcs.items(), chosen):
        db = results[name].database
        wl = tvm.IRModule({"main": func.with_attr("global_symbol", name)})
        records = db.get_top_k(db.commit_workload(wl), 100)
        assert records, f"{cand.rule}: no successful record"
        for rec in records:
            right = _torch_error(cand.program, _applied(wl, rec.trace), name) < 1e-4
            assert schedule_is_correct(wl, rec.trace) == right, f"{cand.rule} {cand.rule_params}"
            checked += 1
            wrong += not right
        _, best = best_correct_record(db, wl)
        assert best is not None and _torch_error(cand.program, _applied(wl, best.trace), name) < 1e-4
    print(f"checked {checked} tuned schedules of {len(chosen)} candidates, {wrong} computed wrong values")


def test_every_tuned_record_of_every_family_is_judged_like_torch(tmp_path):
    """Tune one candidate of every first-release family of a dense conv; for
    every record in the database, `schedule_is_correct` agrees with the torch lowering, and each
    kernel's pick is correct."""
    _check_tuned_records(_pick(), tmp_path)


@pytest.mark.slow
def test_every_family_on_depthwise_and_grouped_sites_is_judged_like_torch(tmp_path):
    """The same for every registered family (tap subsets, subsampling, the grouped forms of the
    channel families) on a depthwise, a grouped and a 5x5 dense site (slow tier: 14 kernels)."""
    _check_tuned_records(_pick_every_family(), tmp_path)


def _loop_and_axis_dtypes(func: tvm.tirx.PrimFunc) -> set[str]:
    """The integer types of every loop variable and block iterator of `func`."""
    sch = Schedule(tvm.IRModule({"main": func}))
    dtypes: set[str] = set()
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        dtypes.update(str(iv.var.ty) for iv in sch.get(block).iter_vars)
        dtypes.update(str(sch.get(loop).loop_var.ty) for loop in sch.get_loops(block))
    return dtypes


def test_a_candidate_lowered_for_relax_has_one_index_type_and_all_its_sampled_schedules_build():
    """Inside Relax a candidate's buffers are int64-shaped; its loops and reduction axes must be too.
    With int32 loops reading int64 buffers, 2 of these 16 sampled schedules failed to build in TVM
    0.27 ("mismatched types. int32 vs. int64"), and in the NHWC vgg-style model every schedule of
    one candidate's task did, so the candidate could not be priced."""
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from gos_tvm.instructions import to_te_tensors

    program = library.conv2d((1, 16, 16, 16), 12, 3, padding=1)
    cand = next(c for c in candidates(program, max_flops_ratio=None)
                if c.rule == "spatially_separable>depthwise_separable")
    args, out = to_te_tensors(cand.program, index_dtype="int64")
    func = te.create_prim_func(args + [out]).with_attr("global_symbol", "main")
    assert _loop_and_axis_dtypes(func) == {"int64"}
    assert _loop_and_axis_dtypes(to_te(cand.program)) == {"int32"}  # the stand-alone lowering: TE's default

    target = preset("local").target
    mod = tvm.IRModule({"main": func})
    ctx = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                         search_strategy=ms.search_strategy.ReplayTrace(), num_threads=1, rand_state=1)
    ctx.search_strategy.pre_tuning(max_trials=16, num_trials_per_iter=16,
                                   design_spaces=ctx.space_generator.generate_design_space(mod))
    for measured in ctx.search_strategy.generate_measure_candidates():
        tvm.compile(measured.sch.mod, target=target)  # raises on the mismatch
