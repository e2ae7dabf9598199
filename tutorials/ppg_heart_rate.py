"""
Pulse rate from wrist PPG: adapt a TCN with Grassroots Operator Search
======================================================================

This tutorial takes the use case of the GOS paper, heart-rate estimation on a
wristband from photoplethysmography (PPG) plus 3-axis acceleration, end to end:

1. generate 8 s windows at 32 Hz (PPG + acc x/y/z) with known heart rate, from
   neurokit2's PPG simulator with motion artefacts correlated with the accelerometer,
   for several simulated subjects, split subject-wise (train / validation / test);
2. train a small temporal convolutional network (dilated 1-D convolutions, the kind of
   model used on PPG-DaLiA) on the CPU, with the L1 loss (MAE in BPM);
3. adapt it to this machine with ``gos_tvm.tune``, allowing it to lose at most
   ``--budget`` BPM of validation MAE;
4. report MAE on the held-out test subjects, latency on this machine, FLOPs and
   parameters of the convolution / dense sites, and what was replaced;
5. cross-compile the adapted model for the Raspberry Pi 3 preset (``rasp3b``, armv7
   hard-float): no board is attached, so *no latency is measured on a board*;
6. check the model on the real PPG recordings that heartpy ships, against heartpy's own
   peak-based estimate;
7. evaluate on a real wrist recording: the PPG-DaLiA excerpt of subject S6 climbing stairs
   (215 windows, ECG heart rate 118-170 BPM; ``pip install --no-deps --ignore-requires-python
   kid-ppg==0.0.4``).  The recording is split by time: the first ``--real-adapt`` of it adapts
   the simulator-trained TCN (fine-tuning on those windows mixed with simulated ones, early
   stopping on the last quarter of that part), then 3 windows (6 s) are dropped so that no
   sample is shared, and the rest is the test.  The TCN trained on simulation only, the
   fine-tuned TCN (the model GOS then adapts) and its GOS-adapted version are compared with
   the spectral and motion-compensated spectral baselines and with the mean heart rate of the
   adaptation part, on the same test windows.  ``--real-adapt 0`` skips the fine-tuning (GOS
   then adapts the simulator-trained model and the test is the whole recording).

Run it (a few minutes at reduced size, longer at full size)::

    pip install neurokit2 heartpy
    python tutorials/ppg_heart_rate.py --small --work-dir ppg_work_small
    python tutorials/ppg_heart_rate.py --work-dir ppg_work
    pip install --no-deps --ignore-requires-python kid-ppg==0.0.4   # the real PPG-DaLiA excerpt (step 7)

Rerunning with the same ``--work-dir`` reuses the cached data, the trained weights and
the search state.  The numbers are written to ``<work-dir>/ppg_results.json``.

**Simulated data is not PPG-DaLiA, and one subject's 7 minutes of stairs are not PPG-DaLiA
either.**  For context only: on PPG-DaLiA (15 real subjects, 2.5 h each, leave-one-subject-out),
a NAS-derived TCN of the TimePPG family reports 3.84 BPM MAE (Burrello et al. 2022) and the
Deep PPG CNN 7.65 BPM (Reiss et al. 2019).  The MAEs printed here cannot be compared with those
figures.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import gos_tvm
from gos_tvm import graph
from gos_tvm.ppg import dalia
from gos_tvm.ppg import data as ppg_data
from gos_tvm.ppg.model import TCN, fine_tune, mae, predict_torch, train

PUBLISHED = ("PPG-DaLiA reference (real data, not comparable): NAS-derived TCN of the TimePPG family "
             "3.84 BPM MAE (Burrello et al., TimePPG, 2022)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", action="store_true", help="reduced size (fewer subjects, epochs and trials)")
    p.add_argument("--work-dir", default="ppg_work", help="data cache, trained model, search state, libraries")
    p.add_argument("--budget", type=float, default=1.0, help="BPM of validation MAE the adapted model may lose")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--trials-per-task", type=int, default=None,
                   help="MetaSchedule trials for every task of the original and of the adapted model, in one "
                        "database (default: gos_tvm's, converged)")
    p.add_argument("--trials", type=int, default=None,
                   help="the former whole-model budget: ceil(trials / tasks) per task when --trials-per-task is "
                        "not given (--small: 16)")
    p.add_argument("--kernel-trials", type=int, default=None,
                   help="MetaSchedule trials per new task of a candidate (default: the per-task budget; --small: 4)")
    p.add_argument("--max-sites", type=int, default=2, help="replace at most this many operator sites")
    p.add_argument("--real-adapt", type=float, default=0.5,
                   help="fraction of the PPG-DaLiA excerpt (from its start) the TCN is fine-tuned on; the rest, "
                        "after a 6 s gap, is the real test (0: no fine-tuning, the whole recording is the test)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0.0 <= args.real_adapt < 1.0:
        p.error(f"--real-adapt must be in [0, 1), got {args.real_adapt}")
    return args


def real_recording(fraction: float) -> dict | None:
    """The PPG-DaLiA excerpt and its time split, or None (with the reason printed) when it is absent."""
    try:
        ex = dalia.load_excerpt()
    except dalia.ExcerptNotFound as err:
        print(f"[real] skipped: {err}")
        return None
    if fraction > 0:
        early, test = dalia.time_split(len(ex), fraction)
        fit, val = dalia.time_split(len(early), 0.75)        # early stopping on the last quarter of the early part
    else:
        fit = val = np.arange(0)
        test = np.arange(len(ex))
    return {"excerpt": ex, "fit": fit, "val": val, "test": test}


def _span(ex: dalia.Excerpt, idx: np.ndarray) -> dict:
    if not len(idx):
        return {"windows": 0}
    return {"windows": int(len(idx)), "first_window": int(idx[0]), "last_window": int(idx[-1]),
            "seconds": [float(ex.start_s[idx[0]]), float(ex.start_s[idx[-1]] + ppg_data.WINDOW_S)],
            "hr_bpm": [float(ex.y[idx].min()), float(ex.y[idx].max())]}


def site_costs(mod, params) -> dict[str, dict]:
    """FLOPs and parameters of each replaceable site (conv1d / dense) of a Relax module."""
    return {s.id: {"kind": s.kind, "flops": int(s.flops), "params": int(s.program.params)}
            for s in graph.find_sites(mod, params)}


def vm_predictor(mod, params):
    """predict(x) -> (N,) BPM with the Relax module compiled for this machine (batch-1 calls)."""
    import tvm

    vm = graph.load_vm(graph.compile_module(mod, params))

    def predict(x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(len(x)):
            y = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[i:i + 1], dtype="float32")))
            out.append((y if hasattr(y, "numpy") else y[0]).numpy())  # the module returns a tuple
        return np.concatenate(out).reshape(-1)

    return predict


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or (20 if args.small else 24)
    # The full run tunes to gos_tvm's converged per-task default; --small keeps a quick whole-model budget.
    trials = args.trials or (16 if args.small and args.trials_per_task is None else None)
    kernel_trials = args.kernel_trials or (4 if args.small else None)
    torch.manual_seed(args.seed)

    # ------------------------------------------------------------------------------------------
    # 1. Data: simulated subjects, subject-wise split (cached as .npz under the work dir)
    # ------------------------------------------------------------------------------------------
    cfg = ppg_data.DataConfig.small(args.seed) if args.small else ppg_data.DataConfig(seed=args.seed)
    t0 = time.time()
    data = ppg_data.generate(cfg, work / "data", workers=2)
    print(f"[data] {cfg} in {time.time() - t0:.1f} s: train {data.train.x.shape} "
          f"(subjects {sorted(set(data.train.subject.tolist()))}), val {data.val.x.shape} "
          f"(subjects {sorted(set(data.val.subject.tolist()))}), test {data.test.x.shape} "
          f"(subjects {sorted(set(data.test.subject.tolist()))})")
    # Two non-learned baselines: the spectral peak of the PPG, and the spectral peak of what is
    # left of the PPG after a least-squares regression on the acceleration (motion compensation).
    spectral = mae(ppg_data.spectral_hr(data.test.x[:, 0]), data.test.y)
    spectral_acc = mae(ppg_data.spectral_hr_acc(data.test.x), data.test.y)
    print(f"[data] non-learned baselines on the test subjects: spectral peak of the PPG {spectral:.2f} BPM MAE, "
          f"after regressing out the acceleration {spectral_acc:.2f} BPM MAE")

    # ------------------------------------------------------------------------------------------
    # 2. Train the TCN on the CPU (weights cached under the work dir)
    # ------------------------------------------------------------------------------------------
    model = TCN()
    weights = work / f"tcn_{cfg.key()}_e{epochs}_s{args.seed}.pt"
    if weights.exists():
        model.load_state_dict(torch.load(weights))
        train_s = None
    else:
        log = train(model, data.train.x, data.train.y, data.val.x, data.val.y, epochs=epochs, seed=args.seed,
                    verbose=True)
        torch.save(model.state_dict(), weights)
        train_s = log.seconds
        print(f"[train] {epochs} epochs in {log.seconds:.0f} s, best validation MAE "
              f"{min(log.val_mae):.2f} BPM at epoch {log.best_epoch + 1}")
    model.eval()

    # ------------------------------------------------------------------------------------------
    # 2b. The real recording (PPG-DaLiA, S6 on the stairs): baselines, the simulator-trained TCN,
    #     and, with --real-adapt > 0, the TCN fine-tuned on the first part of the recording
    # ------------------------------------------------------------------------------------------
    real = real_recording(args.real_adapt)
    real_out: dict = {"skipped": "PPG-DaLiA excerpt not installed"} if real is None else {}
    sim_only_test_mae = mae(predict_torch(model, data.test.x), data.test.y)
    if real is not None:
        ex, fit, val_r, test_r = real["excerpt"], real["fit"], real["val"], real["test"]
        x_rt, y_rt = ex.x[test_r], ex.y[test_r]
        reference = ex.y[np.concatenate([fit, val_r])] if len(fit) else None
        real_out = {
            "source": ex.source, "subject": ex.subject, "activity": ex.activity, "windows": len(ex),
            "split": {"fine_tune": _span(ex, fit), "early_stopping": _span(ex, val_r), "test": _span(ex, test_r),
                      "gap_windows": dalia.OVERLAP_WINDOWS if len(fit) else 0},
            "baselines_test_mae": {
                "spectral_peak": mae(ppg_data.spectral_hr(x_rt[:, 0]), y_rt),
                "spectral_peak_acc_regressed": mae(ppg_data.spectral_hr_acc(x_rt), y_rt),
                "mean_hr_of_adaptation_part": mae(np.full(len(y_rt), reference.mean()), y_rt)
                if reference is not None else None},
            "tcn_simulated_only_test_mae": mae(predict_torch(model, x_rt), y_rt),
            "tcn_simulated_only_all_mae": mae(predict_torch(model, ex.x), ex.y)}
        b = real_out["baselines_test_mae"]
        print(f"[real] {ex.subject} {ex.activity}, {len(ex)} windows; test windows {test_r[0]}-{test_r[-1]} "
              f"({len(test_r)}): spectral peak {b['spectral_peak']:.2f}, motion-compensated spectral peak "
              f"{b['spectral_peak_acc_regressed']:.2f}"
              + (f", mean HR of the adaptation part {b['mean_hr_of_adaptation_part']:.2f}" if reference is not None
                 else "") + f" BPM MAE; TCN trained on simulation only {real_out['tcn_simulated_only_test_mae']:.2f} "
              f"BPM MAE")
        if len(fit):
            # Fine-tune on windows fit (earlier than the early-stopping windows, earlier than the test
            # windows, no sample shared), mixed with 1,000 simulated training windows.
            tuned = work / f"tcn_{cfg.key()}_e{epochs}_s{args.seed}_dalia{args.real_adapt:g}.pt"
            sim_pick = np.random.default_rng(args.seed).choice(len(data.train.y), min(1000, len(data.train.y)),
                                                                 replace=False)
            model = copy.deepcopy(model)                      # the simulator-trained weights stay cached as they are
            if tuned.exists():
                model.load_state_dict(torch.load(tuned))
            else:
                flog = fine_tune(model, ex.x[fit], ex.y[fit], ex.x[val_r], ex.y[val_r],
                                 x_sim=data.train.x[sim_pick], y_sim=data.train.y[sim_pick], seed=args.seed,
                                 verbose=True)
                torch.save(model.state_dict(), tuned)
                real_out["fine_tune_seconds"] = flog.seconds
            model.eval()
            real_out["tcn_fine_tuned_torch_test_mae"] = mae(predict_torch(model, x_rt), y_rt)
            real_out["trained_on"] = (f"TCN: simulated training subjects ({len(data.train.y)} windows), then fine-tuned "
                                      f"on DaLiA {ex.subject} windows {fit[0]}-{fit[-1]} (x4) + 1,000 simulated "
                                      f"windows, early stopping on windows {val_r[0]}-{val_r[-1]}; tested on windows "
                                      f"{test_r[0]}-{test_r[-1]} (no sample shared)")
            print(f"[real] fine-tuned on windows {fit[0]}-{fit[-1]} (early stopping on {val_r[0]}-{val_r[-1]}): "
                  f"test MAE {real_out['tcn_fine_tuned_torch_test_mae']:.2f} BPM")
        else:
            real_out["trained_on"] = (f"TCN: simulated training subjects only; tested on all {len(ex)} DaLiA "
                                      f"windows")
    torch_test_mae = mae(predict_torch(model, data.test.x), data.test.y)
    print(f"[train] torch model: test MAE {torch_test_mae:.2f} BPM (receptive field {model.receptive_field()} "
          f"samples, {sum(p.numel() for p in model.parameters()):,} parameters)")

    # ------------------------------------------------------------------------------------------
    # 3. GOS on this machine: score = -MAE on the validation subjects, budget in BPM
    # ------------------------------------------------------------------------------------------
    mod, params = gos_tvm.from_torch(model, torch.from_numpy(data.train.x[:1]))
    x_val, y_val = data.val.x, data.val.y
    real_val = (real["excerpt"].x[real["val"]], real["excerpt"].y[real["val"]]) \
        if real is not None and len(real["val"]) else None

    def eval_fn(predict) -> float:
        # With a fine-tuned model the score also holds the real early-stopping windows: the mean of the
        # two MAEs (simulated validation subjects, real windows), so that neither is given up.
        if real_val is None:
            return -mae(predict(x_val), y_val)
        return -0.5 * (mae(predict(x_val), y_val) + mae(predict(real_val[0]), real_val[1]))

    result = gos_tvm.tune(mod, "local", params=params, calib_data=data.train.x, eval_fn=eval_fn,
                          accuracy_budget=args.budget, trials_per_task=args.trials_per_task, trials=trials,
                          kernel_trials=kernel_trials,
                          max_sites=args.max_sites, work_dir=work / "gos", seed=args.seed)
    print(result.summary())
    # What a user would run instead: onnxruntime and PyTorch on the original TCN, beside the tuned TVM models
    alternatives = result.compare_with_alternatives(data.test.x[:1], torch_model=model)
    print(alternatives["table"])

    # ------------------------------------------------------------------------------------------
    # 4. The table: held-out test subjects, latency on this machine, FLOPs / params of the sites
    # ------------------------------------------------------------------------------------------
    orig_predict = vm_predictor(result.original_mod, result.original_params)
    adapt_predict = vm_predictor(result.mod, result.params)
    test_orig = mae(orig_predict(data.test.x), data.test.y)
    test_adapt = mae(adapt_predict(data.test.x), data.test.y)
    if real is not None:
        x_rt, y_rt = real["excerpt"].x[real["test"]], real["excerpt"].y[real["test"]]
        real_out["test_mae"] = [mae(orig_predict(x_rt), y_rt), mae(adapt_predict(x_rt), y_rt)]

    orig_sites = site_costs(result.original_mod, result.original_params)
    adapt_sites = dict(orig_sites)
    replaced = []
    for d in result.decisions:
        if d.choice:
            prog = result.program(d.choice)  # the chosen replacement program of this site
            adapt_sites[d.site] = {"kind": d.rule, "flops": int(prog.flops), "params": int(prog.params)}
            replaced.append({"site": d.site, "kind": d.kind, "rule": d.rule, "reason": d.reason,
                             "flops": [orig_sites[d.site]["flops"], int(prog.flops)],
                             "params": [orig_sites[d.site]["params"], int(prog.params)]})
    flops = [sum(s["flops"] for s in orig_sites.values()), sum(s["flops"] for s in adapt_sites.values())]
    nparams = [sum(s["params"] for s in orig_sites.values()), sum(s["params"] for s in adapt_sites.values())]
    lat = [result.original_latency["median_s"], result.adapted_latency["median_s"]]
    val = [-result.original_score, -result.adapted_score]

    print()
    print(f"{'':28}{'original':>12}{'adapted':>12}")
    print(f"{'val MAE (BPM, searched on)':28}{val[0]:12.2f}{val[1]:12.2f}")
    print(f"{'test MAE (BPM, held out)':28}{test_orig:12.2f}{test_adapt:12.2f}")
    if real is not None:
        print(f"{'DaLiA S6 stairs test MAE':28}{real_out['test_mae'][0]:12.2f}{real_out['test_mae'][1]:12.2f}")
    print(f"{'latency local (ms, median)':28}{lat[0] * 1e3:12.3f}{lat[1] * 1e3:12.3f}")
    print(f"{'FLOPs (conv1d+dense sites)':28}{flops[0]:12,d}{flops[1]:12,d}")
    print(f"{'params (conv1d+dense sites)':28}{nparams[0]:12,d}{nparams[1]:12,d}")
    print(f"device: {result.device.label}; speedup {result.speedup:.2f}x; budget {args.budget} BPM")
    for r in replaced:
        print(f"  replaced {r['site']} ({r['kind']}) -> {r['rule']}: FLOPs {r['flops'][0]:,} -> {r['flops'][1]:,}, "
              f"params {r['params'][0]:,} -> {r['params'][1]:,}")
    if not replaced:
        print("  nothing replaced: no candidate kept the MAE within the budget and was faster")

    # Where the time goes: the search decides on stand-alone kernel latencies of each site; the
    # end-to-end latency also contains everything between the sites (pads, ReLUs, pooling, the
    # Relax VM's calls) and depends on how well `trials` tuned each kernel of the whole model.
    kernels = []
    for d in result.decisions:
        # The site's tries are keyed '<site>:<program hash>'; a distilled choice has a key of its own but
        # runs the same program, so it is found by its program.
        tried_as = f"{d.site}:{result.program(d.choice).structural_hash}" if d.choice else None
        chosen_lat = next((t.get("latency_s") for t in d.tried if t["candidate"] == tried_as), None) if d.choice \
            else d.latency_s
        kernels.append({"site": d.site, "kind": d.kind, "original_kernel_s": d.latency_s,
                        "adapted_kernel_s": chosen_lat, "share_of_original": d.share})
    site_sum = [sum(k["original_kernel_s"] or 0 for k in kernels), sum(k["adapted_kernel_s"] or 0 for k in kernels)]
    latency_detail = {
        "end_to_end_median_s": lat,
        "site_kernels_sum_s": site_sum,
        "database_kernel_sum_s": [result.original_latency.get("kernel_sum_s"),
                                  result.adapted_latency.get("kernel_sum_s")],
        "tasks": [result.original_latency.get("tasks"), result.adapted_latency.get("tasks")],
        "trials": [result.original_latency.get("trials"), result.adapted_latency.get("trials")],
        "kernels": kernels}
    print(f"[latency] end to end {lat[0] * 1e6:.0f} -> {lat[1] * 1e6:.0f} us; stand-alone site kernels "
          f"{site_sum[0] * 1e6:.0f} -> {site_sum[1] * 1e6:.0f} us; tuning tasks {latency_detail['tasks'][0]} -> "
          f"{latency_detail['tasks'][1]}, records {latency_detail['trials'][0]} -> {latency_detail['trials'][1]}")
    for k in kernels:
        o, a_ = k["original_kernel_s"], k["adapted_kernel_s"]
        print(f"  {k['site']:<14} {k['kind']:<7} kernel {o * 1e6 if o else float('nan'):8.1f} -> "
              f"{a_ * 1e6 if a_ else float('nan'):8.1f} us")

    # ------------------------------------------------------------------------------------------
    # 5. Cross-compile the adapted model for the Raspberry Pi 3 (armv7 hard-float)
    # ------------------------------------------------------------------------------------------
    # The schedules tuned above are for this x86 CPU; the ARM library is compiled with TVM's
    # default schedules.  No board is attached: nothing is measured on a Pi here.
    rasp = gos_tvm.preset("rasp3b")
    ex = graph.compile_module(result.mod, result.params, rasp)
    rasp_so = Path(graph.export_library(ex, work / "ppg_tcn_adapted_rasp3b.so", rasp))
    machine = graph.elf_machine(rasp_so)
    print(f"[rasp3b] cross-compiled {rasp_so} ({rasp_so.stat().st_size:,} bytes, ELF machine {machine}"
          f"{' = ARM' if machine == 40 else ''}); NOT run or timed: no Raspberry Pi 3 board is attached")
    local_so = result.export_library(work / "ppg_tcn_adapted_local.so")
    print(f"[local] tuned library {local_so}")

    # ------------------------------------------------------------------------------------------
    # 6. heartpy's real recordings: model vs heartpy's peak-based estimate
    # ------------------------------------------------------------------------------------------
    # These are finger/ear PPG recordings without accelerometer (acc channels are zero) and
    # with another sensor and amplitude scale than the simulation: a domain check, not a benchmark.
    heartpy = {}
    for example in (0, 1, 2):
        signal, fs = ppg_data.heartpy_recording(example)
        signal = signal[:int(120 * fs)]  # the first two minutes at most
        r = ppg_data.heartpy_compare(signal, fs, adapt_predict)
        heartpy[example] = {k: r[k] for k in ("windows", "mae_bpm")}
        heartpy[example].update(heartpy_mean_bpm=float(np.mean(r["heartpy_bpm"])) if r["windows"] else None,
                                model_mean_bpm=float(np.mean(r["model_bpm"])) if r["windows"] else None,
                                fs=fs)
        if not r["windows"]:
            print(f"[heartpy] example {example}: heartpy rejected every window; nothing to compare")
            continue
        print(f"[heartpy] example {example} ({fs:.0f} Hz): {r['windows']} windows, heartpy mean "
              f"{heartpy[example]['heartpy_mean_bpm']:.1f} BPM, adapted model mean "
              f"{heartpy[example]['model_mean_bpm']:.1f} BPM, mean |difference| {r['mae_bpm']:.1f} BPM")
    print("[heartpy] the recordings differ from the simulation (sensor, pulse shape, no accelerometer): "
          "large differences here mean domain shift, and say nothing about PPG-DaLiA.")

    # ------------------------------------------------------------------------------------------
    # 7. Context
    # ------------------------------------------------------------------------------------------
    print(f"[context] {PUBLISHED}. The simulated MAE is on SIMULATED subjects (neurokit2); the real one on 7 "
          "minutes of ONE PPG-DaLiA subject. Neither is comparable with a leave-one-subject-out result.")

    if real is not None:
        b = real_out["baselines_test_mae"]
        print(f"[real] {real_out['trained_on']}")
        print(f"[real] test MAE on the real windows: GOS-adapted TCN {real_out['test_mae'][1]:.2f}, original TCN "
              f"{real_out['test_mae'][0]:.2f}, motion-compensated spectral peak {b['spectral_peak_acc_regressed']:.2f}, "
              f"spectral peak {b['spectral_peak']:.2f} BPM")

    per_task = result.original_latency.get("trials_per_task")  # the budget the run used, defaults resolved
    out = {"config": vars(args) | {"epochs": epochs, "trials": trials, "kernel_trials": kernel_trials,
                                   "trials_per_task": per_task},
           "dataset": "simulated wrist PPG (neurokit2) + PPG-DaLiA S6 stairs excerpt" if real is not None
           else "simulated wrist PPG (neurokit2)",
           "dalia": real_out, "sim_only_torch_test_mae": sim_only_test_mae,
           "data": {"config": cfg.__dict__, "train": len(data.train.y), "val": len(data.val.y),
                    "test": len(data.test.y), "spectral_peak_test_mae": spectral,
                    "spectral_peak_acc_regressed_test_mae": spectral_acc},
           "model": {"receptive_field": model.receptive_field(),
                     "parameters": sum(p.numel() for p in model.parameters())},
           "latency_detail": latency_detail, "speedup": result.speedup, "tune_seconds": result.seconds,
           "train_seconds": train_s, "torch_test_mae": torch_test_mae,
           "val_mae": val, "test_mae": [test_orig, test_adapt], "latency_local_s": lat,
           "flops_sites": flops, "params_sites": nparams, "replaced": replaced, "budget": args.budget,
           "decisions": [{"site": d.site, "kind": d.kind, "choice": d.choice, "rule": d.rule, "reason": d.reason}
                         for d in result.decisions],
           "rasp3b_so": str(rasp_so), "rasp3b_elf_machine": machine, "local_so": str(local_so),
           "heartpy": heartpy, "report": str(result.report_path), "published_reference": PUBLISHED,
           "alternatives": {k: alternatives[k] for k in ("runtimes", "adapted_over_onnxruntime", "how")},
           "device": result.device.label}
    (work / "ppg_results.json").write_text(json.dumps(out, indent=2, default=float))
    print(f"[done] {work / 'ppg_results.json'}")
    return out


if __name__ == "__main__":
    main()
