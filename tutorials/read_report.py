"""
Reading the GOS report and the Pareto plot
==========================================

Every ``gos_tvm.tune`` run writes two files into its work directory:

* ``report.json`` — the device, the original and adapted model's end-to-end latency on the
  device and their accuracy, the speed-up, and one *decision* per operator site: which
  replacement was chosen (or why the site was kept), its kernel latency and its share of
  the model's time, and every candidate that was tried;
* ``pareto.png`` — every configuration (one choice per site) that was evaluated, as
  latency vs accuracy, the Pareto front, the original model and the chosen configuration.

This tutorial reads both, prints them as a short, annotated walk-through, and shows how to
rebuild any Pareto point (not only the chosen one) from the work directory.

    python tutorials/read_report.py --work-dir quickstart_work/gos      # a report written by quickstart.py
    python tutorials/read_report.py --small --work-dir /tmp/rr          # runs a small search first
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Read a GOS report.json and its Pareto plot")
    p.add_argument("--work-dir", default="quickstart_work/gos",
                   help="a tune() work directory (holding report.json); searched into if missing")
    p.add_argument("--small", action="store_true", help="if no report exists, run a small search first")
    return p.parse_args(argv)


def find_report(work: Path) -> Path | None:
    if (work / "report.json").exists():
        return work / "report.json"
    found = sorted(work.glob("**/report.json"))
    return found[0] if found else None


def _ms(seconds) -> str:
    """Seconds as milliseconds; `kernel_sum_s` is null when a kernel has no tuning record."""
    return "n/a (a kernel without a tuning record)" if seconds is None else f"{seconds * 1e3:.3f} ms"


def explain(report: dict) -> list[str]:
    """The report as readable lines (what a reviewer should look at, in order)."""
    dev, o, a = report["device"], report["original"], report["adapted"]
    lines = [f"Device: {dev['preset']} — {dev['label']}" + ("  (EMULATED: not board timings)" if dev.get("emulated") else ""),
             f"  host {dev.get('host_cpu')}, {dev.get('host_cores')} cores",
             "",
             "1. The headline: both models tuned with the same MetaSchedule budget, timed end to end on the device",
             f"   original {o['latency']['median_s'] * 1e3:8.3f} ms median (std {o['latency'].get('std_s', 0) * 1e3:.3f}),"
             f" accuracy {o['score']:.4f}",
             f"   adapted  {a['latency']['median_s'] * 1e3:8.3f} ms median (std {a['latency'].get('std_s', 0) * 1e3:.3f}),"
             f" accuracy {a['score']:.4f}",
             f"   speed-up {report['speedup']:.2f}x, accuracy change {100 * (a['score'] - o['score']):+.2f} points "
             f"(budget: at most {100 * report['accuracy_budget']:.1f} points lost)",
             "   `kernel_sum_s` is what the tuning database's best records add up to; when it is far below",
             "   median_s, time goes outside the tuned kernels (VM overhead, untuned ops).",
             f"   original kernel_sum {_ms(o['latency'].get('kernel_sum_s'))}, "
             f"adapted kernel_sum {_ms(a['latency'].get('kernel_sum_s'))}",
             "",
             "2. Per site, most costly first: what GOS did and why"]
    for d in sorted(report["decisions"], key=lambda d: -(d.get("share") or 0)):
        share = f"{100 * d['share']:5.1f}%" if d.get("share") is not None else "   n/a"
        kern = f"{d['latency_s'] * 1e6:8.1f} us" if d.get("latency_s") else "     n/a   "
        what = f"-> {d['rule']}" if d.get("choice") else "kept"
        lines.append(f"   {d['site']:<26} {d['kind']:<9} {kern} {share} of model  {what}")
        if d.get("reason"):
            lines.append(f"      reason: {d['reason']}")
        for t in d.get("tried", [])[:4]:   # the first candidates tried, in order
            lat = f"{t['latency_s'] * 1e6:.1f} us" if t.get("latency_s") else "not timed"
            score = f"{t['score']:.4f}" if isinstance(t.get("score"), (int, float)) else "n/a"
            err = f"{t['fit_rel_error']:.2f}" if isinstance(t.get("fit_rel_error"), (int, float)) else "n/a"
            lines.append(f"      tried {t.get('rule', '?'):<38} fit error {err}  score {score}  kernel {lat}")
    for s in report.get("skipped_sites", []):
        lines.append(f"   skipped {json.dumps(s, default=str)[:150]}")
    lines += ["",
              f"3. Search cost: {report['search_seconds']:.0f} s, {report['device_measurements']} device measurements, "
              f"{report['configurations']} configurations evaluated",
              "",
              "4. The Pareto front (fastest first; latency estimated from tuned kernels unless measured end to end)"]
    for c in report["pareto"]:
        chosen = "  <- chosen" if c["choices"] == report["chosen"]["choices"] else ""
        replaced = {k: v for k, v in c["choices"].items() if v}
        lines.append(f"   {c['latency_s'] * 1e3:8.3f} ms  acc {c['accuracy']:.4f}  {c['origin']:<9} "
                     f"{len(replaced)} replaced{' (e2e)' if c.get('measured_end_to_end') else ''}{chosen}")
    lines += ["",
              "In pareto.png: grey dots are all evaluated configurations, the blue line the Pareto front,",
              "the red square the original, the green star the chosen configuration, the dashed line the",
              "accuracy floor (original accuracy minus the budget). Points right of the red square are",
              "slower than the original; points below the dashed line were rejected for accuracy."]
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    path = find_report(work) if work.exists() else None
    result = None
    if path is None:
        # No report yet: produce one with a small search (the quick start at reduced size).
        import importlib.util

        spec = importlib.util.spec_from_file_location("quickstart", Path(__file__).with_name("quickstart.py"))
        quickstart = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(quickstart)
        out = quickstart.main(["--work-dir", str(work)] + (["--small"] if args.small else []))
        path = Path(out["report"])
    report = json.loads(path.read_text())
    print(f"report: {path}")
    print("\n".join(explain(report)))
    plot = path.with_name("pareto.png")
    print(f"\nPareto plot: {plot} ({'present' if plot.exists() else 'MISSING'})")

    # ------------------------------------------------------------------------------------------
    # Any Pareto point can be rebuilt from the work directory: rerun tune() with the same
    # arguments (it resumes from the work directory without new measurements), then
    #     for config in result.pareto:
    #         mod, params = result.build(config)        # Relax module of that configuration
    #         result.export_library("point.so", config) # compiled with its tuned schedules
    # ------------------------------------------------------------------------------------------
    return {"report": str(path), "plot": str(plot), "speedup": report["speedup"], "result": result}


if __name__ == "__main__":
    main()
