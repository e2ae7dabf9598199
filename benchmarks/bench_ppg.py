"""PPG pulse-rate benchmark: the TCN of tutorials/ppg_heart_rate.py, original vs GOS-adapted.

Runs the tutorial end to end (simulated data, training, ``gos_tvm.tune`` on the local RPC
device with an accuracy budget in BPM of MAE, cross-compilation for ``rasp3b``, heartpy
check) and writes ``<out>/ppg.json`` (everything the tutorial measured, plus the machine)
and ``<out>/ppg.md`` (the table and the command that produced it).

    python benchmarks/bench_ppg.py --work-dir /work/ppg_bench
    python benchmarks/bench_ppg.py --small --work-dir /tmp/ppg_bench_small --out /tmp/ppg_small

Arguments after the known ones go to the tutorial (``--trials``, ``--kernel-trials``,
``--max-sites``, ``--budget``, ``--epochs``).  Latencies come from ONE run on whatever
machine runs this; on a shared, noisy 2-core machine they move by tens of percent between
runs.  The data is SIMULATED (neurokit2), not PPG-DaLiA.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_models import machine_info  # noqa: E402

# As reported by the papers (leave-one-subject-out on PPG-DaLiA); not re-run here.
REFERENCES = [
    ("NAS-derived TCN (TimePPG family, Burrello et al., 2022)", "PPG-DaLiA", 3.84),
    ("Deep PPG CNN (Reiss et al., Sensors 2019)", "PPG-DaLiA", 7.65),
]


def load_tutorial():
    spec = importlib.util.spec_from_file_location("ppg_heart_rate", ROOT / "tutorials" / "ppg_heart_rate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ms(s) -> str:
    return f"{s * 1e3:.3f}" if s is not None else "-"


def markdown(res: dict, command: str, machine: dict) -> str:
    o, a = res["latency_local_s"]
    det = res.get("latency_detail", {})
    replaced = ", ".join(f"{r['site']} ({r['kind']}) -> {r['rule']}" for r in res["replaced"]) or "none"
    hp = res["heartpy"]
    hp_cells = "; ".join(
        f"ex. {k}: {v['windows']} windows, heartpy {v['heartpy_mean_bpm']:.1f} vs model {v['model_mean_bpm']:.1f} BPM "
        f"(mean abs diff {v['mae_bpm']:.1f})" if v["windows"] else f"ex. {k}: heartpy rejected all windows"
        for k, v in hp.items())
    lines = [
        "# PPG pulse rate (simulated wrist PPG + acceleration): TCN original vs GOS-adapted",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores (shared with other jobs; load average "
        f"at start {', '.join(f'{x:.1f}' for x in machine.get('loadavg_at_start', []))}); device "
        f"`{res['device']}`; gos_tvm commit {machine.get('gos_tvm_commit', '?')[:10]}"
        f"{' (dirty)' if machine.get('gos_tvm_dirty') else ''}.",
        "",
        "| model | test MAE orig (BPM) | test MAE adapted (BPM) | val MAE orig / adapted (searched on) | "
        "latency orig (ms) | latency adapted (ms) | speedup | FLOPs orig / adapted | params orig / adapted | "
        "replaced sites |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| dilated TCN ({res['model']['parameters']:,} params, receptive field {res['model']['receptive_field']} "
        f"samples) | {res['test_mae'][0]:.2f} | {res['test_mae'][1]:.2f} | {res['val_mae'][0]:.2f} / "
        f"{res['val_mae'][1]:.2f} | {_ms(o)} | {_ms(a)} | {o / a:.2f}x | {res['flops_sites'][0]:,} / "
        f"{res['flops_sites'][1]:,} | {res['params_sites'][0]:,} / {res['params_sites'][1]:,} | {replaced} |",
        "",
        "Baselines on the same held-out test subjects (no learning):",
        "",
        "| method | test MAE (BPM) |",
        "|---|---|",
        f"| spectral peak of the PPG (40-200 BPM) | {res['data']['spectral_peak_test_mae']:.2f} |",
        f"| spectral peak after regressing the acceleration out of the PPG (4-tap linear + quadratic) | "
        f"{res['data']['spectral_peak_acc_regressed_test_mae']:.2f} |",
        f"| TCN (torch, before TVM) | {res['torch_test_mae']:.2f} |",
        "",
        f"Data: {res['data']['train']} / {res['data']['val']} / {res['data']['test']} windows (train / val / test, "
        f"subject-wise split, config {res['data']['config']}); budget {res['budget']} BPM of validation MAE; "
        f"MetaSchedule {res['config']['trials']} trials per whole model, {res['config']['kernel_trials']} per "
        f"kernel; tuning took {res.get('tune_seconds', float('nan')):.0f} s.",
        "",
        "Latency is end to end over the local RPC server (median of the tuned module's runs, as `gos_tvm.tune` "
        "reports). FLOPs and parameters are those of the conv1d / dense sites (pooling, ReLU and the "
        "head's affine are not counted).",
        "",
    ]
    if det:
        so, sa = det["site_kernels_sum_s"]
        lines += [
            "Where the time goes (stand-alone tuned kernels of the sites vs the whole model):",
            "",
            "| site | kind | kernel orig (us) | kernel adapted (us) |",
            "|---|---|---|---|",
        ]
        for k in det["kernels"]:
            ko, ka = k["original_kernel_s"], k["adapted_kernel_s"]
            lines.append(f"| {k['site']} | {k['kind']} | {ko * 1e6 if ko else float('nan'):.1f} | "
                         f"{ka * 1e6 if ka else float('nan'):.1f} |")
        lines += [
            f"| sum of site kernels | | {so * 1e6:.1f} | {sa * 1e6:.1f} |",
            f"| end to end | | {o * 1e6:.1f} | {a * 1e6:.1f} |",
            "",
            f"Tuning tasks of the whole model: {det['tasks'][0]} (original) / {det['tasks'][1]} (adapted); tuning "
            f"records {det['trials'][0]} / {det['trials'][1]}.",
            "",
        ]
    lines += [
        f"Raspberry Pi 3 (`rasp3b`, armv7 hard-float): the adapted model cross-compiled to "
        f"`{Path(res['rasp3b_so']).name}`, ELF machine {res['rasp3b_elf_machine']}"
        f"{' (ARM)' if res['rasp3b_elf_machine'] == 40 else ''}. **No board is attached: nothing was run or "
        "timed on a Raspberry Pi.**",
        "",
        f"heartpy's real recordings (finger/ear PPG, no accelerometer, another sensor; a domain check, not a "
        f"benchmark), adapted model vs heartpy's peak-based estimate: {hp_cells}.",
        "",
        "**Simulated data is not PPG-DaLiA.** Published errors of reference models on PPG-DaLiA (15 real subjects, "
        "leave-one-subject-out), as reported by the papers (not re-run here), for context only, not comparable with "
        "the numbers above:",
        "",
    ]
    lines += [f"* {name}: {err} BPM MAE on {ds}" for name, ds, err in REFERENCES]
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default="ppg_bench_work")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--small", action="store_true")
    args, rest = p.parse_known_args(argv)
    command = "python benchmarks/bench_ppg.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    machine = machine_info()
    tut = load_tutorial()
    t0 = time.time()
    res = tut.main((["--small"] if args.small else []) + ["--work-dir", args.work_dir] + rest)
    res["bench_seconds"] = time.time() - t0
    res["machine"] = machine
    res["command"] = command
    res["published_references"] = [{"model": n, "dataset": d, "mae_bpm": e} for n, d, e in REFERENCES]
    res["note"] = "simulated data (neurokit2), not PPG-DaLiA: errors are not comparable with published results"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ppg.json").write_text(json.dumps(res, indent=2, default=float))
    (out / "ppg.md").write_text(markdown(res, command, machine))
    print(f"[bench] wrote {out / 'ppg.json'} and {out / 'ppg.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
