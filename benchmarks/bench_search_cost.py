"""Search cost vs schedule quality: MetaSchedule's evolutionary search sized several ways, each
tuning the same whole model to the same per-task budget on this machine.

On 2 cores a whole-model session spends most of its wall time choosing candidates (sampling the
population, mutating it, scoring mutants with the XGBoost model), not building or measuring them
(MetaSchedule's task-scheduler log: from "picks Task" to "Sending ... to builder" is the search,
then the build, then the run).  This benchmark tunes one model per configuration
(``--configs POPULATIONxITERATIONS``), each into a fresh database with a fresh cost model and the
same seed, then compiles each database's model and times them alternately on the local RPC server.

    python benchmarks/bench_search_cost.py --model resnet18-style --trials-per-task 64 --configs 128x2 256x3

Writes ``<out>/search_cost.json`` (a row per configuration: wall time, trials, trials/min, where
the wall time went, the database's kernel sum and the end-to-end latency) and prints a table.
One run on whatever machine runs this; compare rows as ratios within the run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import machine_info, strict  # noqa: E402
from bench_tuning_convergence import MODELS, build  # noqa: E402

_LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \[INFO\] \[task_scheduler\.cc:\d+\] (.*)")


def phases(log_dir: Path) -> dict:
    """Seconds between the task scheduler's log events, summed by phase: `search` (a task picked
    until its batch goes to the builder), `build` (until it goes to the runner), `run` (until its
    results are in), `other`.  The log has whole seconds; over a hundred batches the sums hold."""
    events = []
    for path in sorted(log_dir.glob("*task_scheduler*")):
        for line in path.read_text().splitlines():
            m = _LOG_LINE.match(line)
            if m:
                events.append((dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp(), m.group(2)))
    out = {"search_s": 0.0, "build_s": 0.0, "run_s": 0.0, "other_s": 0.0, "batches": 0}
    for (t, msg), (t_next, msg_next) in zip(events, events[1:]):
        phase = ("search_s" if msg.startswith("TaskScheduler picks") and "to builder" in msg_next else
                 "build_s" if "to builder" in msg else "run_s" if "to runner" in msg else "other_s")
        out[phase] += t_next - t
        out["batches"] += "to builder" in msg
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, default="resnet18-style")
    p.add_argument("--trials-per-task", type=int, default=64)
    p.add_argument("--configs", nargs="+", default=["128x2", "256x3"],
                   help="evolutionary search sizes, POPULATIONxGENETIC_ITERATIONS (128x2: gos_tvm's default; "
                        "256x3: its former one)")
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NHWC")
    p.add_argument("--rounds", type=int, default=6, help="alternating end-to-end timing rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    configs = []
    for c in args.configs:
        population, _, iters = c.partition("x")
        if not (population.isdigit() and iters.isdigit()):
            raise SystemExit(f"--configs {c!r}: write POPULATIONxITERATIONS, e.g. 128x2")
        configs.append((c, int(population), int(iters)))

    import gos_tvm  # noqa: F401 - sets TVM's runtime threads before any TVM work
    import torch
    from tvm.s_tir import meta_schedule as ms

    from gos_tvm import graph
    from gos_tvm.hw import (LocalDevicePool, TrackerRunner, WarmBuilder, compile_tuned, export_module,
                            measure_module, open_database, preset, tune_module_per_task,
                            tune_tasks_per_task)
    from gos_tvm.hw.tuning import default_cost_model, prepare_relax
    from gos_tvm.hw.tuning.database import database_kernel_sum, measured_trials

    device = preset("local")
    model, x = build(args.model, args.seed)
    rows, libraries = [], {}
    with tempfile.TemporaryDirectory(prefix="gos_search_cost_") as tmp, \
            LocalDevicePool("search-cost", n_servers=1) as pool, graph.conv_layout(args.layout):
        mod, params = graph.from_torch(model, torch.from_numpy(x))
        prepared = prepare_relax(mod, params, device.target)
        tasks = ms.relax_integration.extract_tasks(prepared, device.target)
        builder, runner = WarmBuilder(device), TrackerRunner(pool.tracker, pool.key)
        try:
            # Start the builder's and runner's workers before the first row is timed, as later rows find them
            tune_tasks_per_task(tasks[:1], device, 1, database=open_database(Path(tmp) / "warm-up"),
                                work_dir=str(Path(tmp) / "warm-up"), builder=builder, runner=runner)
            for name, population, iters in configs:
                work = Path(tmp) / name
                db = open_database(work)
                strategy = ms.search_strategy.EvolutionarySearch(population_size=population, genetic_num_iters=iters)
                t0 = time.perf_counter()
                tune_module_per_task(mod, params, device, args.trials_per_task, database=db, work_dir=str(work),
                                     builder=builder, runner=runner, trials_per_iter=16, strategy=strategy,
                                     cost_model=default_cost_model(), seed=args.seed)
                wall = time.perf_counter() - t0
                trials = sum(measured_trials(db, t.dispatched[0]) for t in tasks)
                row = {"config": name, "population": population, "genetic_iters": iters, "tuning_s": wall,
                       "trials": trials, "trials_per_min": 60 * trials / wall,
                       "kernel_sum_ms": 1e3 * (database_kernel_sum(prepared, device.target, db) or float("nan")),
                       **phases(work / "logs")}
                rows.append(row)
                (work / "lib").mkdir()
                libraries[name] = export_module(compile_tuned(mod, params, device, db), device, str(work / "lib"))
                print(f"  {name}: {trials} trials in {wall:.0f} s ({row['trials_per_min']:.0f}/min; search "
                      f"{row['search_s']:.0f} s, build {row['build_s']:.0f} s, run {row['run_s']:.0f} s), "
                      f"kernel sum {row['kernel_sum_ms']:.3f} ms", flush=True)
        finally:
            runner.close()
            builder.close()
        time.sleep(1.0)
        raw = {name: [] for name in libraries}
        for _ in range(args.rounds):  # the configurations' models timed in turns
            for name, lib in libraries.items():
                stats = measure_module(None, device, pool.tracker, pool.key, [x], repeat=10, number=10, library=lib)
                raw[name] += [float(t) for t in stats.raw]
    for row in rows:
        row["tvm_ms"] = 1e3 * float(np.median(raw[row["config"]]))
        row["tvm_min_ms"] = 1e3 * float(np.min(raw[row["config"]]))
    out = {"model": args.model, "layout": args.layout, "trials_per_task": args.trials_per_task,
           "tasks": len(tasks), "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
           "rows": rows}
    path = Path(args.out) / "search_cost.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict(out), indent=2))
    print(f"\n{args.model} ({len(tasks)} tasks, {args.layout}), {args.trials_per_task} trials per task:")
    print("| population x iterations | tuning s | trials/min | search / build / run s | kernel sum ms | TVM ms (min) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['tuning_s']:.0f} | {r['trials_per_min']:.0f} | {r['search_s']:.0f} / "
              f"{r['build_s']:.0f} / {r['run_s']:.0f} | {r['kernel_sum_ms']:.3f} | {r['tvm_ms']:.3f} "
              f"({r['tvm_min_ms']:.3f}) |")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
