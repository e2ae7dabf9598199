"""`gos_tvm.tune`: the public entry point of the search, and its result."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .adapt import build_adapted
from .cost_model import ProgramLatencyModel
from .gos import GOSearch
from .measurer import Measurer, TuningParts, speedup
from .pareto import Configuration
from .report import plot_pareto, write_report
from .results import Candidate, Decision, EvalFn, Predict, SearchOptions, SearchOutcome
from .strategies import SearchStrategy


@dataclass
class TuneResult:
    """What `tune` found.

    Attributes:
        mod, params: the adapted Relax module and its parameters (the chosen configuration).
        original_mod, original_params: what went in.
        device: the device preset the latencies were measured on.
        decisions: per site: kept or replaced, by which program, and why.
        original_latency, adapted_latency: end-to-end measurements on the device (median, mean,
            spread in seconds, `kernel_sum_s`: what the tuning database's best records add up to).
        original_score, adapted_score: accuracy (or the user's score) of both.
        pareto: the Pareto front of (latency, score) configurations; `chosen` is one of them.
        configurations: every configuration evaluated (scored, all kernels measured).
        candidates: every replacement some configuration uses, by key (program, fitted weights).
        database: the run's one MetaSchedule database (original model, kernels, adapted model);
            `database_dirs`: where it is, under the names 'original' and 'adapted' (kept for
            callers of the former two-database layout: both name the same directory).
        work_dir, report_path, plot_path: where everything is.
        seconds, device_measurements: the search's wall time; measurements in the work directory.
        new_measurements: the measurement keys this call measured (none twice across resumes).
        conv_layout: the layout the models were tuned in (`graph.conv_layout` when `tune` ran);
            `compile` and `export_library` compile in it, whatever layout is current then, so
            the tuned records apply.
    """

    mod: Any
    params: dict[str, np.ndarray]
    original_mod: Any
    original_params: dict[str, np.ndarray]
    device: Any
    decisions: list[Decision]
    original_latency: dict
    adapted_latency: dict
    original_score: float
    adapted_score: float
    pareto: list[Configuration]
    chosen: Configuration
    configurations: list[Configuration]
    database: Any
    work_dir: Path
    report_path: Path
    plot_path: Path
    seconds: float
    device_measurements: int
    candidates: dict[str, Candidate] = field(default_factory=dict, repr=False)
    database_dirs: dict[str, Path] = field(default_factory=dict, repr=False)
    new_measurements: list[str] = field(default_factory=list, repr=False)
    fallback: dict | None = field(default=None, repr=False)  # the rejected adapted model's measurement, if any
    conv_layout: str = "NCHW"
    # Executables by configuration: exporting, timing per thread count and comparing with
    # onnxruntime each need the same two models, and a compile takes seconds.
    _executables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def speedup(self) -> float:
        """Original over adapted latency, timed alternately: medians, or minima when a timing was
        not stable (`search.measurer.speedup`; `speedup_statistic` says which)."""
        return speedup(self.original_latency, self.adapted_latency)[0]

    @property
    def speedup_statistic(self) -> str:
        return speedup(self.original_latency, self.adapted_latency)[1]

    def program(self, candidate: str):
        """The replacement `OpProgram` of a candidate key (a `Decision.choice`, a configuration's choice)."""
        return self.candidates[candidate].program

    def tuning_database(self, name: str = "original"):
        """The run's MetaSchedule database (`name`, 'original' or 'adapted', names the same one)."""
        from ..hw import open_database

        if name not in self.database_dirs:
            raise KeyError(f"no database {name!r}; names are {sorted(self.database_dirs)}")
        return open_database(str(self.database_dirs[name]))

    def build(self, config: Configuration | None = None):
        """(mod, params) of `config` (default: the chosen one), e.g. any point of `pareto`."""
        config = config or self.chosen
        return build_adapted(self.original_mod, self.original_params,
                             [self.candidates[c] for c in config.choices.values() if c is not None])

    def compile(self, config: Configuration | None = None):
        """The device executable of `config`, with the tuned schedules applied (compiled once per
        configuration and result)."""
        from ..hw import compile_tuned

        from ..graph import conv_layout

        config = config or self.chosen
        key = tuple(sorted((site, c) for site, c in config.choices.items() if c is not None))
        if key not in self._executables:
            mod, params = self.build(config)
            db = self.tuning_database()  # one database holds every model and kernel of the run
            with conv_layout(self.conv_layout):  # the kernels the records were tuned for
                self._executables[key] = compile_tuned(mod, params, self.device, db)
        return self._executables[key]

    def export_library(self, path: str | os.PathLike, config: Configuration | None = None) -> Path:
        """Write the device's shared library (cross-compiled for board presets)."""
        executable = self.compile(config)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        executable.export_library(str(path), fcompile=self.device.export)
        return path

    def compare_with_alternatives(self, example: np.ndarray, *, torch_model: Any = None,
                                  onnx_path: str | os.PathLike | None = None, rounds: int = 5,
                                  calls_per_round: int = 100) -> dict:
        """Time the tuned original and adapted TVM models beside what a user would run instead --
        onnxruntime (and PyTorch eager, given `torch_model`) on the original model -- in this
        process, taking turns (`hw.alternatives.time_alternately`), on `example` (one batch-1 input).

        The ONNX model is `onnx_path`, else `torch_model` exported into the work directory.  Every
        runtime of the original must compute the same outputs as the tuned TVM original (the adapted
        model computes an approximation, judged by the search's accuracy).  Writes
        `work_dir/alternatives.json` and returns it: per runtime the timing statistics, plus
        `table` (text) and `adapted_over_onnxruntime` (onnxruntime's median / the adapted model's).
        TVM, onnxruntime and PyTorch run on TVM's thread count (`gos_tvm.threads`); onnxruntime also on
        the other of {1, this host's cores}, and `adapted_over_onnxruntime` compares with the faster one
        (named by `fastest_onnxruntime`): the fastest way to run the original is the baseline.
        Only for a device that is this machine: ValueError otherwise."""
        from ..hw import alternatives
        from ..threads import configure_runtime_threads, host_cores
        from .store import write_json_atomic

        if not self.device.is_local or self.device.emulated:
            raise ValueError(f"the device is {self.device.name} ({self.device.label}): onnxruntime and PyTorch run on "
                             "this host, so they are compared only when the device is this machine (--target local)")
        if torch_model is None and onnx_path is None:
            raise ValueError("give the original model as torch_model or onnx_path")
        example = np.ascontiguousarray(example, dtype="float32")
        threads = configure_runtime_threads()  # TVM's, and the same count for the others
        if onnx_path is None:
            onnx_path = alternatives.export_onnx(torch_model, example, self.work_dir / "original.onnx")
        original = self.compile(dataclasses.replace(self.chosen, choices={}))
        calls = {"TVM original (tuned)": alternatives.tvm_call(original, example)}
        calls["onnxruntime (original)"] = alternatives.onnxruntime_call(onnx_path, example, threads)
        # A user runs onnxruntime at whatever thread count is fastest for it, which need not be TVM's: on
        # small models one thread can beat two (no wake-ups between short kernels).  So its other count
        # is timed too, and the adapted model is compared with the faster of the two.
        other = 1 if threads > 1 else host_cores()
        if other != threads:
            calls[f"onnxruntime (original, {other} thread{'s' if other > 1 else ''})"] = \
                alternatives.onnxruntime_call(onnx_path, example, other)
        if torch_model is not None:
            calls["PyTorch eager (original)"] = alternatives.torch_call(torch_model, example, threads)
        same = alternatives.outputs_agree(calls)  # all of them compute the original model
        calls["TVM adapted (tuned)"] = alternatives.tvm_call(self.compile(), example)
        stats = alternatives.time_alternately(calls, rounds=rounds, calls_per_round=calls_per_round)
        fastest_onnxruntime = min((name for name in stats if name.startswith("onnxruntime")),
                                  key=lambda name: stats[name]["median_s"])
        out = {"runtimes": stats, "threads": threads, "example_shape": list(example.shape),
               "onnx": str(onnx_path), "max_abs_diff_from_tvm_original": same,
               "fastest_onnxruntime": fastest_onnxruntime,
               "adapted_over_onnxruntime": stats[fastest_onnxruntime]["median_s"]
               / stats["TVM adapted (tuned)"]["median_s"],
               "table": alternatives.table(stats, fastest_onnxruntime),
               "how": "each runtime called from Python in this process, batch 1, one call at a time, the runtimes "
                      f"taking turns for {rounds} rounds of {calls_per_round} calls"}
        write_json_atomic(self.work_dir / "alternatives.json", out)
        return out

    def time_at_deploy_threads(self, example: np.ndarray, *, adapted_library: str | os.PathLike | None = None,
                               threads: Sequence[int] | None = None, rounds: int = 3, calls: int = 300) -> dict:
        """Which ``TVM_NUM_THREADS`` to ship each tuned model with, and the speed-up when each runs at
        its own best count: the original and adapted libraries (the adapted one `adapted_library`,
        if `export_library` already wrote it, else exported here; the original into
        `work_dir/original.so`) timed on `example` at 1 and this host's cores, each count in a
        fresh process (`hw.deploy_threads`).  A model of many short kernels can be fastest on one
        thread while its original is fastest on all cores; the ratio users get is then that of each
        at its best, not of both at TVM's count.  Writes `work_dir/deploy_threads.json` and returns
        it (thread counts as strings): ``libraries`` (per model: ``seconds`` per count, ``best``) and
        ``speedup_each_at_its_best_threads``.  Only for a device that is this machine."""
        from ..hw.deploy_threads import json_ready, speedup_each_at_its_best_threads, time_libraries_at_threads
        from .store import write_json_atomic

        if not self.device.is_local or self.device.emulated:
            raise ValueError(f"the device is {self.device.name} ({self.device.label}): its libraries do not run on "
                             "this host, so they are timed here only when the device is this machine")
        libraries = {"original": self.export_library(self.work_dir / "original.so",
                                                     dataclasses.replace(self.chosen, choices={}))}
        if any(c is not None for c in self.chosen.choices.values()):
            libraries["adapted"] = Path(adapted_library) if adapted_library else \
                self.export_library(self.work_dir / "adapted.so")
        out = json_ready(time_libraries_at_threads(libraries, example, threads=threads, rounds=rounds, calls=calls))
        if "adapted" not in libraries:  # nothing replaced: the adapted model is the original
            out["libraries"]["adapted"] = out["libraries"]["original"]
        out["speedup_each_at_its_best_threads"] = speedup_each_at_its_best_threads(out["libraries"])
        out["how"] = (f"each library called from Python in a fresh process per TVM_NUM_THREADS, batch 1, median of "
                      f"{calls} calls, the libraries and counts taking turns for {rounds} rounds, best round")
        write_json_atomic(self.work_dir / "deploy_threads.json", out)
        return out

    def summary(self) -> str:
        o, a = self.original_latency, self.adapted_latency
        emulated = " (EMULATED device: not board timings)" if self.device.emulated else ""
        lines = [f"device: {self.device.name} — {self.device.label}{emulated}",
                 f"original: {_latency_line(o)}, score {self.original_score:.4f}",
                 f"adapted:  {_latency_line(a)}, score {self.adapted_score:.4f}"
                 + ("" if a != o else "  (the original is returned)" if self.fallback
                    else "  (nothing replaced: the original, tuned and measured once)"),
                 f"speedup:  {self.speedup:.2f}x ({self.speedup_statistic}s)   ({self.device_measurements} device measurements, "
                 f"{self.seconds:.0f} s)"]
        rejected = (self.fallback or {}).get("adapted")
        if rejected:
            lines.insert(3, f"rejected: {_latency_line(rejected)} (the chosen replacements, measured end to end)")
        for title, row in (("original", o), ("adapted" if a != o else "rejected", a if a != o else rejected or {})):
            if row.get("per_task"):
                lines.append(f"  {title}: {row.get('trials_per_task')} trials per task; "
                             f"{len(row.get('tuned_tasks', []))} of its {row.get('tasks')} tasks tuned for it "
                             "(the others were in the run's database)")
                lines += ["    " + line for line in task_lines(row["per_task"])]
        for d in self.decisions:
            what = f"-> {d.rule}" if d.choice else "kept"
            lines.append(f"  {d.site:<28} {d.kind:<9} {what:<34} {d.reason}")
        return "\n".join(lines)


def _latency_line(row: Mapping[str, Any]) -> str:
    """'0.512 ms median, 0.498 ms min (spread 2.1%, 2 rounds)', or '... NOT stable' when the
    timings never settled within the rounds allowed."""
    text = f"{row['median_s'] * 1e3:.3f} ms median, {row['min_s'] * 1e3:.3f} ms min"
    if "spread" in row:
        text += (f" (spread {row['spread'] * 100:.1f}%, {row.get('rounds', 1)} rounds"
                 + ("" if row.get("stable", True) else ", NOT stable: a shared or noisy device") + ")")
    return text


def task_lines(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-task table of a model measurement (`gos_tvm.hw.tuning.task_table` rows) as text."""
    lines = [f"{'task':<44} {'calls':>5} {'trials':>6} {'latency':>11} {'GFLOP/s':>8}"]
    for r in table:
        lat = f"{r['latency_s'] * 1e6:.1f} us" if r.get("latency_s") is not None else "-"
        gf = f"{r['gflops']:.2f}" if r.get("gflops") is not None else "-"
        lines.append(f"{r['task'][:44]:<44} {r['weight']:>5} {r['trials']:>6} {lat:>11} {gf:>8}")
    return lines


@contextlib.contextmanager
def _device_pool(tracker, key: str | None, device):
    """The given tracker, or a local tracker and server on loopback started for this run."""
    if tracker is not None:
        host, port = tracker  # (host, port), checked by validate_tune_inputs
        from ..hw import require_servers

        k = key or device.key
        require_servers(host, int(port), k, 1)
        yield (host, int(port)), k
        return
    from ..hw import LocalDevicePool

    if device.emulated:
        # The board's runtime under qemu on this host (built once by `gos-tvm rpc emulate`): a
        # tracker on loopback with the emulated server as its only device.
        from ..hw import emulate

        with LocalDevicePool(key or device.key, n_servers=0) as pool:
            with emulate.start_emulated_server(pool.tracker, pool.key, name=device.name):
                yield pool.tracker, pool.key
        return
    if not device.is_local:
        raise ValueError(f"device {device.name!r} is not this machine: pass tracker=(host, port) of the RPC "
                         "tracker its servers registered with (see rpc/README.md), or use its emulated "
                         f"form (gos_tvm.hw.emulate.emulated_preset({device.name!r}), `--emulated` on the "
                         "command line) where one exists")

    # The server runs kernels on as many threads as the target has cores: what is tuned is what is timed.
    with LocalDevicePool(key or device.key, n_servers=1, threads=int(device.num_cores)) as pool:
        yield pool.tracker, pool.key


def tune(mod: Any, target: Any = "local", *, params: Mapping[str, np.ndarray] | None = None,
         calib_data: np.ndarray, val_data: tuple[np.ndarray, np.ndarray] | None = None,
         eval_fn: EvalFn | None = None, accuracy_budget: float = 0.01,
         tracker: tuple[str, int] | str | None = None, key: str | None = None,
         trials_per_task: int | None = None, trials: int | None = None, time_budget: float | None = None,
         kernel_trials: int | None = None, work_dir: str | os.PathLike = "gos_work", seed: int = 0,
         example_inputs: Any = None, warm_start: str | os.PathLike | None = None,
         warm_start_database: str | os.PathLike | None = None,
         strategies: Sequence[SearchStrategy] | None = None, latency_model: ProgramLatencyModel | None = None,
         parts: TuningParts | None = None, measurer: Measurer | None = None, **options: Any) -> TuneResult:
    """Adapt a model to a device by Grassroots Operator Search.

    Args:
        mod: the Relax module from `gos_tvm.from_torch` / `from_onnx` (with `params`), or a
            `torch.nn.Module` (imported with `example_inputs`, default `calib_data[:1]`).
        target: a device preset name ('local', 'rasp3b', 'rasp3b-aarch64', 'redmi-note-7s') or Preset.
        calib_data: model inputs (N, ...) whose activations the replacements are fitted to (the
            first `calib_samples`) and on which they are distilled (the first `distill_samples`
            while candidates are judged, all of them for the chosen configuration): give all the
            training inputs you have; no labels are needed.
        val_data: (x, y) for classification accuracy; or `eval_fn(predict) -> score` (higher is
            better; e.g. minus the mean absolute error) where predict maps inputs to outputs.
        accuracy_budget: the largest allowed drop of the score (0.01 = one percentage point).
        tracker, key: the RPC tracker `(host, port)` and device key; None starts a tracker and a
            server on loopback (the local device, or an emulated preset's qemu server).
        trials_per_task: MetaSchedule trials for every task of the original and of the adapted
            model (the same budget for both; default `DEFAULT_TRIALS_PER_TASK`).  Everything a run
            tunes goes into one database in the work directory, so the adapted model's unchanged
            tasks keep exactly the original's records and only its new tasks are tuned; rerunning
            with a larger budget continues from the records there.
        trials: the former whole-model total, kept for compatibility: without `trials_per_task`
            it is spread evenly, ceil(trials / tasks of the original model) per task.
        time_budget: optional wall-clock bound (s) on each whole-model tuning session.
        kernel_trials: trials for each new task a candidate brings into the model (its kernel fused
            as the model runs it) while candidates are screened; default None: `trials_per_task`,
            the budget of the original tasks a candidate is compared with.  A smaller value screens
            faster but judges candidates against better-tuned originals; the chosen candidates'
            tasks are then tuned to `trials_per_task` with the adapted model.
        work_dir: where everything is kept; rerunning with the same arguments resumes.  A work
            directory of another run (another model, calibration or validation data, device,
            accuracy budget or option, e.g. a larger `trials`) is refused untouched: tune with
            other settings in a new work_dir (`warm_start` can reuse the old cost_model.json).
        warm_start_database: an earlier run's MetaSchedule database (its WORK_DIR/database, on the
            same device): its records seed this run's database when it is new; its workloads
            count as tuned up to the records it holds.
        strategies: the search strategies, run in order (default: greedy least-efficient-first, then
            evolution; `gos_tvm.search.strategies`).
        latency_model: the program-level latency model that ranks candidates (default: the
            XGBoost `LatencyModel`, kept in the work directory).
        parts: the MetaSchedule builder / runner / database / cost model to tune with
            (`gos_tvm.search.measurer.TuningParts`; default: gos_tvm's own).
        measurer: where latencies come from instead of the device (e.g. the fake device
            `gos_tvm.search.FakeMeasurer`); then no tracker or server is used.
        options: further `SearchOptions` (max_sites, tries_per_site, measure_per_site,
            screen_per_site and screen_fit_steps (the short fits whose Pareto front with the latency
            ranking is bisected; 0 candidates: the ranking alone),
            max_flops_ratio, depth, fit_steps, calib_samples, generations, population, rounds (search
            rounds, each from the last one's distilled choice on the sites still kept), repeat,
            max_spread, max_rounds: the end-to-end timings repeat in rounds of `repeat` until their
            spread is at most `max_spread`, at most `max_rounds` rounds; distillation: distill
            (default True; False keeps layer-wise fitting only), distill_steps, final_distill_steps,
            distill_samples (the first that many of `calib_data` are distilled on while candidates
            are judged), final_distill_samples (the chosen configuration's; default None: all),
            recover_steps (after each site replaced, its configuration is distilled for that many
            steps on the final distillation's inputs before the next site is judged; default 0: off),
            distill_batch,
            distill_lr, distill_temperature, distill_task; row_split (default False: True tunes only
            schedules whose parallel loop gives each thread a band of output rows, so consecutive
            kernels split their work alike; `gos_tvm.hw.metaschedule.row_split`); serial_kernels
            (default False: True times each tuned kernel's best schedule also without its parallel
            loop and keeps the faster, so a short kernel may run on one thread inside a
            multi-threaded model; `gos_tvm.hw.metaschedule.serial_kernels`).

    Raises:
        UserError (a ValueError) naming the bad argument, before any work starts or anything
        is written to `work_dir`.
    """
    from .validate import validate_tune_inputs

    # Everything is checked before any work starts (UserError names the bad value).
    checked = validate_tune_inputs(mod, target, params=params, calib_data=calib_data, val_data=val_data,
                                   eval_fn=eval_fn, accuracy_budget=accuracy_budget, tracker=tracker, key=key,
                                   options=dict(trials=trials, trials_per_task=trials_per_task,
                                                time_budget=time_budget, kernel_trials=kernel_trials, seed=seed,
                                                **options),
                                   example_inputs=example_inputs, warm_start=warm_start)
    device, tracker, mod, params, calib, eval_fn, opts = (checked[k] for k in (
        "device", "tracker", "mod", "params", "calib", "eval_fn", "options"))

    # The work directory is checked (a different model or device is refused) before any device starts.
    search = GOSearch(mod, params, device, calib_data=calib, evaluate=eval_fn, accuracy_budget=accuracy_budget,
                      work_dir=work_dir, options=opts, warm_start=warm_start, warm_start_database=warm_start_database,
                      strategies=strategies,
                      latency_model=latency_model, parts=parts, measurer=measurer)
    pool = _device_pool(tracker, key, device) if measurer is None else contextlib.nullcontext((None, None))
    with pool as (trk, k):
        search.tracker, search.key = trk, k
        try:
            out = search.run()
        finally:
            search.close()
    return _result(search, out, accuracy_budget, opts)


def _result(search: GOSearch, out: SearchOutcome, accuracy_budget: float, opts: SearchOptions) -> TuneResult:
    """The report, the plot and the `TuneResult` of a finished search."""
    from ..graph.layout import current_conv_layout

    device, chosen = search.device, out.chosen
    ratio, statistic = speedup(out.baseline, out.adapted)
    report = {
        "device": {**device_info(device)},
        "original": {"latency": out.baseline, "score": out.original_score},
        "adapted": {"latency": out.adapted, "score": out.adapted_score},
        "speedup": ratio,
        "speedup_statistic": statistic,
        # the per-task budget both models were tuned to (their `per_task` tables: trials, latency, GFLOP/s)
        "trials_per_task": search.trials_per_task,
        "accuracy_budget": accuracy_budget,
        "decisions": [vars(d) for d in out.decisions],
        "skipped_sites": [vars(s) for s in search.analysis.skipped],
        "pareto": [vars(c) for c in out.front],
        "chosen": vars(chosen),
        # set when the chosen configuration measured slower end to end and the original was returned
        "fallback": out.fallback,
        # whether candidates were judged after end-to-end distillation, how many, and the final one
        "distillation": out.distillation,
        # configurations are scored in the model's torch form (batched) unless it has none
        "scored_with": (f"TVM build ({search.state['no_torch_form']})" if search.state.get("no_torch_form")
                        else "torch form (gos_tvm.fit.distill.trainable_model)"),
        "configurations": len(out.configurations),
        "device_measurements": out.device_measurements,
        "search_seconds": out.seconds,
        "options": vars(opts),
        "measured_by": type(search.measurer).__name__,  # TunedMeasurer: the device; FakeMeasurer: a formula
        "conv_layout": current_conv_layout(),
    }
    work_dir = search.store.path
    report_path = write_report(work_dir / "report.json", report)
    plot_path = plot_pareto(work_dir / "pareto.png", out.configurations, out.front, chosen,
                            out.original_score - accuracy_budget,
                            title=f"GOS on {device.name}" + (" (emulated)" if device.emulated else ""))
    database_dirs = {name: search.store.database_dir for name in ("original", "adapted")}
    candidates = out.candidates
    adapted_mod, adapted_params = build_adapted(search.mod, search.params,
                                                [candidates[c] for c in chosen.choices.values() if c is not None])
    result = TuneResult(
        mod=adapted_mod, params=dict(adapted_params), original_mod=search.mod, original_params=search.params,
        device=device, decisions=out.decisions, original_latency=out.baseline, adapted_latency=out.adapted,
        original_score=out.original_score, adapted_score=out.adapted_score, pareto=out.front, chosen=chosen,
        configurations=out.configurations, database=None, work_dir=work_dir, report_path=report_path,
        plot_path=plot_path, seconds=out.seconds, device_measurements=out.device_measurements,
        candidates=candidates, database_dirs=database_dirs, new_measurements=out.new_measurements,
        fallback=out.fallback, conv_layout=current_conv_layout())
    result.database = result.tuning_database()
    return result


def device_info(device) -> dict:
    import platform

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"preset": device.name, "label": device.label, "target": str(device.target),
            "emulated": device.emulated, "host_cpu": cpu, "host_cores": os.cpu_count(),
            "host": platform.platform()}
