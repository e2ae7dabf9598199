"""Device presets, target validation and the fast tensor-intrinsic import (no processes started)."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from gos_tvm.hw import PRESET_NAMES, Preset, preset, resolve_target


def test_presets_carry_target_export_and_cores():
    local = preset("local")
    assert local.is_local and local.export is None
    assert int(local.target.attrs["num-cores"]) == local.num_cores >= 1
    assert local.target.kind.name == "llvm"

    pi = preset("rasp3b")
    assert pi.target.attrs["mtriple"] == "armv7l-linux-gnueabihf"
    assert "+neon" in list(pi.target.attrs["mattr"])
    assert int(pi.target.attrs["num-cores"]) == 4 and pi.num_cores == 4
    assert callable(pi.export) and pi.compiler == "arm-linux-gnueabihf-g++"

    pi64 = preset("rasp3b-aarch64")
    assert pi64.target.attrs["mtriple"] == "aarch64-linux-gnu" and pi64.target.attrs["mcpu"] == "cortex-a53"

    phone = preset("redmi-note-7s")
    assert phone.target.attrs["mtriple"] == "aarch64-linux-android"
    assert phone.num_cores == 8 == int(phone.target.attrs["num-cores"])
    assert not any(preset(n).emulated for n in PRESET_NAMES)


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError) as err:
        preset("raspberry-pi-5")
    for name in PRESET_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("bad", ["llvm -num-cores=2", {"kind": "no-such-kind"}, {"kind": "llvm"}, {"kind": "cuda"}, 42])
def test_malformed_target_is_a_clear_error(bad):
    with pytest.raises(ValueError) as err:
        resolve_target(bad)
    assert "preset" in str(err.value) or "num-cores" in str(err.value)


def test_resolve_target_accepts_presets_dicts_and_targets():
    import tvm

    assert resolve_target("rasp3b").attrs["mtriple"] == "armv7l-linux-gnueabihf"
    t = resolve_target({"kind": "llvm", "num-cores": 3})
    assert int(t.attrs["num-cores"]) == 3
    assert resolve_target(t) is t
    assert isinstance(resolve_target(preset("local")), tvm.target.Target)


def test_preset_overrides():
    assert preset("local", num_cores=1).num_cores == 1
    assert int(preset("local", num_cores=1).target.attrs["num-cores"]) == 1
    assert preset("rasp3b", key="pi-lab").key == "pi-lab"
    emu = preset("rasp3b-aarch64").as_emulated()
    assert emu.emulated and "emulated" in emu.label
    with pytest.raises(ValueError):
        preset("rasp3b", num_cores=2)


def test_cross_export_produces_a_library_for_the_board(tmp_path):
    """The aarch64 preset's export links a real aarch64 shared object on this host."""
    import shutil

    import tvm
    from tvm import te

    p = preset("rasp3b-aarch64")
    if shutil.which(p.compiler) is None:
        pytest.skip(f"{p.compiler} not installed")
    a = te.placeholder((16,), name="a")
    b = te.compute((16,), lambda i: a[i] * 2.0, name="b")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target=p.target)
    out = tmp_path / "k.so"
    lib.export_library(str(out), fcompile=p.export)
    head = out.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


def _frames_a():
    return _frames_b()


def _frames_b():
    from gos_tvm.hw.metaschedule._fastimport import _fast_stack

    fast, ref = _fast_stack(), inspect.stack()
    return fast, ref


def test_fast_stack_matches_inspect_stack():
    fast, ref = _frames_a()
    # _fast_stack() and inspect.stack() are called from the same frame, one line apart.
    assert len(fast) == len(ref)
    for f, r in zip(fast[1:], ref[1:]):
        assert (f.filename, f.lineno, f.function, f.code_context, f.index) == \
               (r.filename, r.lineno, r.function, r.code_context, r.index)
        assert f.frame is r.frame
    assert fast[0].function == ref[0].function == "_frames_b"


def test_fast_import_registers_the_intrinsics_in_a_fresh_process():
    code = ("import time; from gos_tvm.hw.metaschedule._fastimport import import_tensor_intrin; t = import_tensor_intrin(); "
            "from tvm.s_tir import TensorIntrin; TensorIntrin.get('dot_4x4_i8i8s32_neon'); "
            "import inspect; assert inspect.stack.__module__ == 'inspect'; print(t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # It was this call that imported the intrinsics (> 0 s), through the fast path, and restored
    # inspect.stack.  How much faster it is is measured in benchmarks/bench_tuning_throughput.py
    # (no wall-clock bound here: the machine is shared).
    assert float(out.stdout.strip().splitlines()[-1]) > 0.0


def test_importing_hw_and_rpc_cli_does_not_import_tvm():
    code = "import sys, gos_tvm.hw, gos_tvm.hw.rpc_cli; print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_preset_is_exported_from_the_package():
    import gos_tvm

    assert isinstance(gos_tvm.preset("local"), Preset)


def test_local_preset_has_as_many_cores_as_the_runtime_has_threads(monkeypatch):
    """Kernels are tuned for the threads they will run on: TVM_NUM_THREADS=1 tunes for one core."""
    from gos_tvm.threads import configure_runtime_threads

    assert preset("local").num_cores == configure_runtime_threads()
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    local = preset("local")
    assert local.num_cores == 1 == int(local.target.attrs["num-cores"]) and "1 cores" in local.label
