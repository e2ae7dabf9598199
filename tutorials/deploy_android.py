"""
Deploy a GOS-adapted model to an Android phone (Xiaomi Redmi Note 7S)
=====================================================================

The phone (Snapdragon 660: 4x Cortex-A73-class + 4x A53-class cores, Android, aarch64) runs
a TVM RPC server; everything else happens on the host.  Android has no C++ compiler on the
device, so each library is linked on the host with the Android NDK: the preset
``redmi-note-7s`` exports with ``tvm.support.ndk.create_shared``, which reads ``TVM_NDK_CC``.

**On the host**::

    export TVM_NDK_CC=$ANDROID_NDK/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android28-clang++
    gos-tvm rpc tracker --host 0.0.0.0 --port 9190 &

**On the phone**, start a TVM RPC server registered under the key ``redmi-note-7s``: TVM's
Android RPC app (``apps/android_rpc``, built against the TVM 0.27 runtime with
``USE_RANDOM``; enter the tracker address and key, switch "Enable RPC" on), or TVM's C++ RPC
server cross-compiled with the NDK and started with ``adb shell /data/local/tmp/tvm_rpc server
--tracker=HOST:9190 --key=redmi-note-7s``.  Over USB only: ``adb reverse tcp:9190 tcp:9190``.
Then, on the host::

    gos-tvm rpc query --tracker 127.0.0.1:9190        # the phone appears under redmi-note-7s
    python tutorials/deploy_android.py --tracker 127.0.0.1:9190

**No phone (and no NDK) is attached to the machine this project is developed on.**  Without
``--tracker`` the script runs the search on this machine's CPU as a *stand-in*, compiles the
original and the adapted model for the phone's target (``aarch64-linux-android``, cortex-a73,
NEON), and — without ``TVM_NDK_CC`` — exports them as ``.tar`` archives of object files
(checked to be AArch64 ELF objects) that you link with the NDK later::

    mkdir adapted && tar xf adapted_redmi-note-7s.tar -C adapted
    $TVM_NDK_CC -shared -fPIC -o adapted_redmi-note-7s.so adapted/*.o -lm

With ``TVM_NDK_CC`` set it writes the ``.so`` directly.  No latency on a phone is measured or
claimed here.

    python tutorials/deploy_android.py --small --work-dir /tmp/android    # host side only, minutes
"""
from __future__ import annotations

import argparse
import json
import os
import tarfile
from pathlib import Path

import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GOS on an Android phone (host side; phone over RPC)")
    p.add_argument("--tracker", default=None, help="HOST:PORT of the RPC tracker the phone registered with")
    p.add_argument("--work-dir", default="android_work")
    p.add_argument("--small", action="store_true", help="reduced epochs and tuning budgets")
    return p.parse_args(argv)


def elf_machine_of_bytes(head: bytes) -> int | None:
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


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

    phone = gos_tvm.preset("redmi-note-7s")
    have_ndk = bool(os.environ.get("TVM_NDK_CC"))
    print(f"[device] {phone.name}: {phone.label}; target {phone.target_config}; "
          f"NDK compiler: {os.environ.get('TVM_NDK_CC') or 'NOT SET (TVM_NDK_CC)'}")
    if args.tracker and not have_ndk:
        raise SystemExit("tuning on the phone needs TVM_NDK_CC (the NDK's clang++) to link each candidate")

    # ------------------------------------------------------------------------------------------
    # Step 1: the trained model and its Relax module
    # ------------------------------------------------------------------------------------------
    model, split = models.trained_model("digits-cnn", work / "weights", epochs=2 if args.small else 6)
    mod, params = gos_tvm.from_torch(model, torch.from_numpy(split.x_train[:1]))

    # ------------------------------------------------------------------------------------------
    # Step 2: the search; with a tracker every candidate is linked with the NDK and timed on the phone
    # ------------------------------------------------------------------------------------------
    budgets = dict(trials=8 if args.small else 32, kernel_trials=2 if args.small else 8,
                   max_sites=1 if args.small else 2)
    common = dict(params=params, calib_data=split.x_train, val_data=(split.x_val, split.y_val),
                  accuracy_budget=0.01, **budgets)
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        result = gos_tvm.tune(mod, phone, tracker=(host, int(port)), work_dir=work / "gos_phone", **common)
    else:
        print("[search] NO PHONE ATTACHED: searching on this machine's CPU ('local') as a stand-in; "
              "what is fast here is not necessarily fast on a Snapdragon 660.")
        result = gos_tvm.tune(mod, "local", work_dir=work / "gos_local_standin", **common)
    print(result.summary())

    # ------------------------------------------------------------------------------------------
    # Step 3: compile for the phone on the host; link with the NDK, or archive the objects
    # ------------------------------------------------------------------------------------------
    libs = {}
    for name, (m, p) in {"original": (result.original_mod, result.original_params),
                         "adapted": (result.mod, result.params)}.items():
        if args.tracker:
            # Both models with the schedules tuned on the phone (same budget): timing a default-schedule
            # original against a tuned adapted model would credit the tuning to GOS.
            path = result.export_library(work / f"{name}_{phone.name}.so", _configuration(result, name))
        else:
            # x86 schedules do not transfer to the phone: TVM's default schedules for both models here.
            executable = graph.compile_module(m, p, phone)
            if have_ndk:
                path = Path(graph.export_library(executable, work / f"{name}_{phone.name}.so", phone))
            else:
                path = work / f"{name}_{phone.name}.tar"
                executable.export_library(str(path))       # object files only: no linker needed
        info = {"path": str(path), "bytes": path.stat().st_size}
        if path.suffix == ".tar":
            with tarfile.open(path) as tar:
                objs = [m_ for m_ in tar.getmembers() if m_.name.endswith(".o")]
                info["objects"] = {o.name: elf_machine_of_bytes(tar.extractfile(o).read(20)) for o in objs}
        else:
            info["elf_machine"] = graph.elf_machine(path)
        libs[name] = info
        print(f"[compile] {path.name}: {info}  (ELF e_machine 183 = AArch64)")

    # ------------------------------------------------------------------------------------------
    # Step 4: time on the phone over RPC, or say what to do
    # ------------------------------------------------------------------------------------------
    timings = None
    if args.tracker:
        from gos_tvm import hw

        host, port = args.tracker.rsplit(":", 1)
        timings = {}
        x = split.x_test[:1]
        for name, lib in libs.items():
            # big.LITTLE and thermal throttling make phone timings noisy: more repeats, report the median
            stats = hw.measure_module(None, phone, (host, int(port)), inputs=[x], library=lib["path"], repeat=30)
            timings[name] = stats.median
            print(f"[phone] {name}: {stats.median * 1e3:.3f} ms median")
    else:
        print("[phone] not run: no phone is attached. Link the .tar archives with the NDK (see the docstring), "
              "start the TVM RPC app on the phone under key redmi-note-7s and rerun with --tracker HOST:PORT.")
    out = {"preset": phone.name, "phone_attached": bool(args.tracker), "ndk": have_ndk, "libraries": libs,
           "phone_median_s": timings, "search_device": result.device.name,
           "speedup_on_search_device": result.speedup,
           "replaced": [{"site": d.site, "by": d.rule} for d in result.decisions if d.choice]}
    (work / "deploy_android.json").write_text(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    main()
