"""Tuning throughput on this machine: MetaSchedule's stock set-up vs gos_tvm.hw's, side by side.

    python benchmarks/bench_tuning_throughput.py                      # all rows, ~15 min on 2 cores
    python benchmarks/bench_tuning_throughput.py --rows stock,ours   # the two headline rows
    python benchmarks/bench_tuning_throughput.py --quick             # small budgets (smoke run)

One local RPC tracker with `--servers` RPC servers (separate processes on loopback) is the device
for every row; each row then tunes the same 3x3 convolution (an OpProgram from
gos_tvm.instructions, lowered with to_te) in a fresh Python process, so that each pays its own
one-time costs (TVM's tensor-intrinsic import in the main process, worker start-up) as a user
would.  Rows:

  stock        MetaSchedule as shipped: LocalBuilder() (a fresh worker pool per batch, 30 s build
               timeout), RPCRunner, evolutionary search and XGBoost cost model with their defaults.
  stock-long   the same with LocalBuilder(timeout_sec=600), so builds can outlive the workers'
               start-up (the tensor-intrinsic import) instead of timing out.
  warm         gos_tvm.hw's WarmBuilder (pre-started workers that live across batches and skip
               the tensor intrinsics) + TrackerRunner (pre-started workers, one RPC session per
               share of a batch instead of one per candidate), MetaSchedule's default search and
               cost model: what the workers alone change.
  ours         gos_tvm.hw.tune_primfunc's defaults: WarmBuilder + TrackerRunner, the fast
               tensor-intrinsic import in the tuning process, default_cost_model()
               (MetaSchedule's XGBoost model, whose training is deferred until it can predict:
               it predicts random scores below 100 samples either way) and default_strategy():
               evolutionary search without genetic iterations, from a random population of two
               batches, while the model can only score at random (a 64-trial session never gets
               past that), population 128 / 2 iterations once it can.

Trials per minute = measured candidates with a valid run time / wall time of the row (builder and
runner construction included, the start-up of the RPC tracker and servers excluded).  Each row is bounded by `--row-timeout`: a
row still running then is stopped and scored on the records its database holds at that time.
Prints a table and writes JSON (default benchmarks/results/tuning_throughput.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Measure the gos_tvm of this checkout, whatever `pip install -e` points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = ("stock", "stock-long", "warm", "ours")
DESCRIPTIONS = {
    "stock": "LocalBuilder() [30 s timeout, new pool per batch] + RPCRunner, stock search & XGB",
    "stock-long": "LocalBuilder(timeout_sec=600) + RPCRunner, stock search & XGB",
    "warm": "WarmBuilder + TrackerRunner (one RPC session per share of a batch), stock search & XGB",
    "ours": "WarmBuilder + TrackerRunner + fast intrinsic import + default_cost_model() + default_strategy() "
            "(no genetic iterations, population of two batches, while the cost model scores at random)",
}


def conv_kernel(c_in: int, c_out: int, size: int):
    from gos_tvm.instructions import library, to_te

    program = library.conv2d((1, c_in, size, size), c_out, 3, padding=1)
    flops = 2 * c_out * size * size * c_in * 9
    return to_te(program), flops


# ----------------------------------------------------------------------------------------------
# One row, in its own process
# ----------------------------------------------------------------------------------------------

def run_row(args: argparse.Namespace) -> dict:
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    host, port = args.tracker.rsplit(":", 1)
    tracker = (host, int(port))
    func, flops = conv_kernel(args.c_in, args.c_out, args.size)
    work_dir = args.work_dir
    t0 = time.perf_counter()
    from tvm.s_tir import meta_schedule as ms

    from gos_tvm.hw.presets import preset
    from gos_tvm.hw.tuning import best_record, database_records, open_database, record_latency

    target = preset("local").target
    db = open_database(work_dir)
    cores = os.cpu_count() or 1
    if args.row in ("stock", "stock-long"):
        builder = ms.builder.LocalBuilder(timeout_sec=30.0 if args.row == "stock" else 600.0)
        runner = ms.runner.RPCRunner(
            ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=args.key,
                                session_timeout_sec=120),
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50),
            max_workers=args.servers)
        ms.tir_integration.tune_tir(func, target, work_dir, max_trials_global=args.trials,
                                    num_trials_per_iter=args.per_iter, builder=builder, runner=runner,
                                    database=db, num_tuning_cores=cores, seed=args.seed)
    else:
        from gos_tvm.hw import TrackerRunner, WarmBuilder, tune_primfunc

        builder = WarmBuilder("local")
        runner = TrackerRunner(tracker, args.key)
        kw = {} if args.row == "ours" else {"strategy": "evolutionary", "cost_model": "xgb"}
        tune_primfunc(func, "local", builder=builder, runner=runner, trials=args.trials,
                      trials_per_iter=args.per_iter, database=db, work_dir=work_dir, seed=args.seed, **kw)
        builder.close()
        runner.close()
    wall = time.perf_counter() - t0
    recs = database_records(db, func)
    valid = sum(1 for r in recs if record_latency(r) < float("inf"))
    lat, _ = best_record(db, func)
    return {"row": args.row, "wall_s": wall, "records": len(recs), "valid": valid,
            "best_latency_s": lat, "best_gflops": flops / lat / 1e9 if valid else 0.0}


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------

def _score_partial(work_dir: str, c_in: int, c_out: int, size: int) -> tuple[int, int, float]:
    """(records, valid, best latency) from a row's JSON database (for a row stopped at its bound)."""
    path = Path(work_dir) / "database_tuning_record.json"
    if not path.exists():
        return 0, 0, float("inf")
    records = valid = 0
    best = float("inf")
    for line in path.read_text().splitlines():
        try:
            secs = [float(s) for s in json.loads(line)[1][1]]
        except (ValueError, IndexError, TypeError):
            continue
        records += 1
        mean = sum(secs) / len(secs) if secs else float("inf")
        if mean < 1e9:
            valid += 1
            best = min(best, mean)
    return records, valid, best


def run_all(args: argparse.Namespace) -> dict:
    from gos_tvm.hw import LocalDevicePool

    _, flops = conv_kernel(args.c_in, args.c_out, args.size)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if r not in ROWS:
            raise SystemExit(f"unknown row {r!r}; rows: {', '.join(ROWS)}")
    results = []
    with LocalDevicePool("bench-throughput", n_servers=args.servers) as pool:
        host, port, key = pool
        for row in rows:
            trials = args.stock_trials if row.startswith("stock") else args.trials
            work_dir = tempfile.mkdtemp(prefix=f"bench_{row}_")
            cmd = [sys.executable, __file__, "--_row", row, "--tracker", f"{host}:{port}", "--key", key,
                   "--trials", str(trials), "--per-iter", str(args.per_iter), "--servers", str(args.servers),
                   "--c-in", str(args.c_in), "--c-out", str(args.c_out), "--size", str(args.size),
                   "--seed", str(args.seed), "--work-dir", work_dir]
            print(f"[{row}] {DESCRIPTIONS[row]}: {trials} trials, {args.per_iter} per batch ...", flush=True)
            log = open(os.path.join(work_dir, "row.log"), "w")  # noqa: SIM115
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=args.row_timeout)
                res = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 and out.strip() else None
                status = "done" if res else f"failed (exit {proc.returncode}, log {log.name})"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                res, status = None, f"stopped at the {args.row_timeout:g} s bound"
            log.close()
            if res is None:
                n, valid, best = _score_partial(work_dir, args.c_in, args.c_out, args.size)
                res = {"row": row, "wall_s": time.perf_counter() - t0, "records": n, "valid": valid,
                       "best_latency_s": best, "best_gflops": flops / best / 1e9 if valid else 0.0}
            res.update(status=status, trials_requested=trials, description=DESCRIPTIONS[row],
                       trials_per_min=res["valid"] / res["wall_s"] * 60.0,
                       measured_per_min=res["records"] / res["wall_s"] * 60.0)
            results.append(res)
            print(f"[{row}] {status}: {res['valid']}/{res['records']} valid in {res['wall_s']:.0f} s "
                  f"-> {res['trials_per_min']:.1f} trials/min", flush=True)
    base = next((r for r in results if r["row"] == "stock-long"), None) or next(
        (r for r in results if r["row"] == "stock"), None)
    for r in results:
        r["speedup_vs_" + (base["row"] if base else "none")] = (
            r["trials_per_min"] / base["trials_per_min"] if base and base["trials_per_min"] > 0 else None)
    return {"kernel": f"conv2d 3x3, {args.c_in}->{args.c_out} ch, {args.size}x{args.size}, pad 1 (fp32)",
            "flops": flops, "servers": args.servers, "trials_per_iter": args.per_iter,
            "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                     "load_avg_at_end": os.getloadavg()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": results}


def print_table(report: dict) -> None:
    rows = report["rows"]
    base_key = next((k for k in rows[0] if k.startswith("speedup_vs_")), None) if rows else None
    print(f"\nTuning throughput: {report['kernel']}, {report['servers']} RPC servers on loopback, "
          f"{report['trials_per_iter']} candidates per batch, {report['host']['cpus']} CPUs\n")
    head = f"{'row':<11} {'trials':>6} {'valid':>5} {'wall s':>7} {'trials/min':>10} {'speedup':>8} {'best us':>8} {'GFLOP/s':>7}  status"
    print(head)
    print("-" * len(head))
    for r in rows:
        sp = r.get(base_key)
        best = r["best_latency_s"] * 1e6 if r["valid"] else float("nan")
        print(f"{r['row']:<11} {r['records']:>6d} {r['valid']:>5d} {r['wall_s']:>7.0f} {r['trials_per_min']:>10.1f} "
              f"{(f'{sp:.1f}x' if sp else '-'):>8} {best:>8.1f} {r['best_gflops']:>7.1f}  {r['status']}")
    print()
    for r in rows:
        print(f"  {r['row']:<11} {r['description']}")
    if base_key:
        print(f"\n  speedup: trials/min relative to '{base_key[len('speedup_vs_'):]}'")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows ({', '.join(ROWS)})")
    p.add_argument("--trials", type=int, default=64, help="trials for the warm/ours rows (default 64)")
    p.add_argument("--stock-trials", type=int, default=32, help="trials for the stock rows (default 32)")
    p.add_argument("--per-iter", type=int, default=16, help="candidates per batch, every row (default 16)")
    p.add_argument("--servers", type=int, default=2, help="RPC servers under the key (default 2)")
    p.add_argument("--row-timeout", type=float, default=600.0, help="bound on each row, seconds (default 600)")
    p.add_argument("--c-in", type=int, default=16)
    p.add_argument("--c-out", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small budgets: 32/16 trials, 8 per batch")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "tuning_throughput.json"))
    # internal: run one row in this process
    p.add_argument("--_row", dest="row", help=argparse.SUPPRESS)
    p.add_argument("--tracker", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.row:
        print(json.dumps(run_row(args)), flush=True)
        return 0
    if args.quick:
        args.trials, args.stock_trials, args.per_iter = 32, 16, 8
    report = run_all(args)
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
