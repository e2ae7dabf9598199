"""
Deploy a GOS-adapted model to a Raspberry Pi 3 over RPC
=======================================================

GOS measures latency *on the device*: for a Raspberry Pi 3 the search runs on the host
(an x86 PC), and the Pi only runs a TVM RPC server that receives libraries cross-compiled
on the host and times them.  This tutorial shows both sides:

**On the Pi** (once; see ``rpc/README.md`` for details)::

    # 64-bit Raspberry Pi OS (preset rasp3b-aarch64): the aarch64 wheel of TVM
    python3 -m venv tvm && . tvm/bin/activate
    pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0 psutil cloudpickle tornado
    # 32-bit Raspberry Pi OS (preset rasp3b): build TVM's runtime on the Pi (USE_RANDOM=ON), see rpc/README.md
    ./pi_server.sh 192.168.1.10:9190       # registers with the host's tracker under its key

**On the host**::

    gos-tvm rpc tracker --host 0.0.0.0 --port 9190 &
    gos-tvm rpc query --tracker 127.0.0.1:9190        # the Pi must appear under key rasp3b (or rasp3b-aarch64)
    python tutorials/deploy_rasp3b.py --tracker 127.0.0.1:9190 --preset rasp3b

With ``--tracker``, ``gos_tvm.tune(mod, "rasp3b", tracker=...)`` tunes every candidate on
the Pi, and the final libraries are timed on the Pi.

**No board is attached to the machine this project is developed on.**  Without
``--tracker`` this script does everything that happens on the host and nothing that needs
the board: it runs the search on this machine's CPU as a *stand-in* (the operators it picks
are the ones that are fast here, not necessarily on a Cortex-A53), cross-compiles the
original and the adapted model for the Pi with ``arm-linux-gnueabihf-g++`` (checked to be
ARM ELF shared objects), and writes ``run_on_pi.py`` plus a test input: copy the three files
to the Pi and run ``python3 run_on_pi.py`` there.  No latency on a Pi is measured or claimed.

    python tutorials/deploy_rasp3b.py --small --work-dir /tmp/rasp3b    # host side only, minutes
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

BOARD_SCRIPT = '''"""Run on the Raspberry Pi (TVM runtime 0.27 installed): python3 run_on_pi.py"""
import sys, time
import numpy as np
import tvm
from tvm import relax

x = np.load("input.npy")
for name in sys.argv[1:] or ["original_{preset}.so", "adapted_{preset}.so"]:
    lib = tvm.runtime.load_module(name)
    vm = relax.VirtualMachine(lib, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    out = (out if hasattr(out, "numpy") else out[0]).numpy()   # models imported from torch return a tuple
    ts = []
    for _ in range(50):
        t0 = time.perf_counter(); vm["main"](tvm.runtime.tensor(x)); ts.append(time.perf_counter() - t0)
    print(f"{{name}}: class {{int(out.argmax())}}, median {{1e3 * sorted(ts)[len(ts) // 2]:.2f}} ms")
'''


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GOS on a Raspberry Pi 3 (host side; board over RPC)")
    p.add_argument("--preset", default="rasp3b", choices=["rasp3b", "rasp3b-aarch64"],
                   help="rasp3b: 32-bit Raspberry Pi OS (armv7 hard-float); rasp3b-aarch64: 64-bit OS")
    p.add_argument("--tracker", default=None, help="HOST:PORT of the RPC tracker the Pi registered with")
    p.add_argument("--work-dir", default="rasp3b_work")
    p.add_argument("--small", action="store_true", help="reduced epochs and tuning budgets")
    return p.parse_args(argv)


def _configuration(result, name: str):
    """The chosen configuration ('adapted') or the all-original one ('original') of a search."""
    if name == "adapted":
        return result.chosen
    return next(c for c in result.configurations if not any(c.choices.values()))


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    import gos_tvm
    from gos_tvm import graph, models

    board = gos_tvm.preset(args.preset)
    print(f"[device] {board.name}: {board.label}; target {board.target_config}; host compiler {board.compiler}")

    # ------------------------------------------------------------------------------------------
    # Step 1: the trained model (digits CNN, 16x16 inputs) and its Relax module
    # ------------------------------------------------------------------------------------------
    model, split = models.trained_model("digits-cnn", work / "weights", epochs=2 if args.small else 6)
    mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))

    # ------------------------------------------------------------------------------------------
    # Step 2: the search. With a tracker, every measurement happens on the Pi.
    # ------------------------------------------------------------------------------------------
    budgets = dict(trials=8 if args.small else 32, kernel_trials=2 if args.small else 8,
                   max_sites=1 if args.small else 2)
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        result = gos_tvm.tune(mod, board, tracker=(host, int(port)), params=params, calib_data=split.x_train,
                              val_data=(split.x_val, split.y_val), accuracy_budget=0.01,
                              work_dir=work / f"gos_{board.name}", **budgets)
    else:
        print("[search] NO BOARD ATTACHED: searching on this machine's CPU ('local') as a stand-in. "
              "The replacements chosen are those that are fast here, not measured on a Cortex-A53.")
        result = gos_tvm.tune(mod, "local", params=params, calib_data=split.x_train,
                              val_data=(split.x_val, split.y_val), accuracy_budget=0.01,
                              work_dir=work / "gos_local_standin", **budgets)
    print(result.summary())

    # ------------------------------------------------------------------------------------------
    # Step 3: cross-compile original and adapted model for the Pi, on the host
    # ------------------------------------------------------------------------------------------
    # With a board, ``result.export_library`` applies the schedules tuned on the Pi to both models
    # (the same budget each: timing a default-schedule original against the tuned adapted model
    # would credit the tuning to GOS). Without one the tuned schedules are x86 schedules, which do
    # not transfer: both are compiled with TVM's default schedules.
    libs = {}
    for name, (m, p) in {"original": (result.original_mod, result.original_params),
                         "adapted": (result.mod, result.params)}.items():
        path = work / f"{name}_{board.name}.so"
        if args.tracker:
            result.export_library(path, _configuration(result, name))
        else:
            graph.export_library(graph.compile_module(m, p, board), path, board)
        machine = graph.elf_machine(path)
        libs[name] = {"path": str(path), "bytes": path.stat().st_size, "elf_machine": machine}
        print(f"[cross-compile] {path.name}: {path.stat().st_size:,} bytes, ELF e_machine {machine} "
              f"({ {40: 'ARM', 183: 'AArch64'}.get(machine, '?') })")

    # ------------------------------------------------------------------------------------------
    # Step 4: run on the Pi: over RPC (with a tracker), or by copying the files there
    # ------------------------------------------------------------------------------------------
    x = np.ascontiguousarray(split.x_test[:1])
    np.save(work / "input.npy", x)
    (work / "run_on_pi.py").write_text(BOARD_SCRIPT.format(preset=board.name))
    timings = None
    if args.tracker:
        from gos_tvm import hw

        host, port = args.tracker.rsplit(":", 1)
        timings = {}
        for name, lib in libs.items():
            stats = hw.measure_module(None, board, (host, int(port)), inputs=[x], library=lib["path"], repeat=20)
            timings[name] = stats.median
            print(f"[board] {name}: {stats.median * 1e3:.3f} ms median on the Pi")
    else:
        print(f"[board] not run: no Raspberry Pi is attached. To run there: copy "
              f"{libs['original']['path']}, {libs['adapted']['path']}, {work / 'input.npy'} and "
              f"{work / 'run_on_pi.py'} to the Pi, then `python3 run_on_pi.py` (TVM runtime 0.27 on the Pi).")
    out = {"preset": board.name, "board_attached": bool(args.tracker), "libraries": libs,
           "board_median_s": timings, "search_device": result.device.name, "speedup_on_search_device": result.speedup,
           "replaced": [{"site": d.site, "by": d.rule} for d in result.decisions if d.choice]}
    (work / "deploy_rasp3b.json").write_text(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    main()
