"""The board path on an emulated Raspberry Pi 3 (64-bit): an aarch64 Debian rootfs under qemu-user
runs the aarch64 TVM runtime as an RPC server registered with a tracker on this machine.

A model with replaced operators is cross-compiled for 'rasp3b-aarch64', uploaded through the
tracker, run on the emulated device and compared with the host result; a MetaSchedule tuning of a
small kernel runs its measurements there.  Emulation timings are not board timings: the results
must say 'emulated'.

Runs when the device is already built (`gos-tvm rpc emulate rasp3b-aarch64 --build-only`) or with
GOS_TVM_EMULATED=1 (then a device that cannot be built is a failure, not a skip).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from gos_tvm.hw import emulate

NAME = "rasp3b-aarch64"
KEY = "gos-test-rasp3b-aarch64-emulated"

# Its own tier (.ci/emulated.sh builds the device, then runs this module with GOS_TVM_EMULATED=1),
# so the default tier does not run the slow emulated tests a second time.
needs_device = pytest.mark.skipif(
    os.environ.get("GOS_TVM_EMULATED") != "1",
    reason=f"the emulated {NAME} tier: run .ci/emulated.sh (builds the device, needs root), or set "
           "GOS_TVM_EMULATED=1 once `gos-tvm rpc emulate rasp3b-aarch64 --build-only` has built it")


def test_missing_pieces_are_named(tmp_path, monkeypatch):
    """Without the device (or root), the errors say what is missing and how to get it."""
    with pytest.raises(emulate.EmulatedDeviceError, match=r"not built .*rpc emulate rasp3b-aarch64 --build-only"):
        emulate.start_emulated_server(("127.0.0.1", 1), root=tmp_path / "none")
    real_root = os.geteuid() == 0
    monkeypatch.setattr(emulate.os, "geteuid", lambda: 1000)
    with pytest.raises(emulate.EmulatedDeviceError, match="needs root"):
        emulate.build_emulated_device(NAME, tmp_path / "rootfs")
    assert not (tmp_path / "rootfs").exists()
    monkeypatch.undo()
    with pytest.raises(ValueError, match="emulated devices: rasp3b-aarch64"):
        emulate.build_emulated_device("redmi-note-7s", tmp_path / "x")
    # The CLI reports a device that cannot be built with exit status 4 (.ci/emulated.sh: 'skipped'):
    # here a root that is neither empty nor a Debian rootfs (as root, once the host tools exist, so
    # that this test installs nothing), or any root without root rights.
    if real_root and not emulate.is_built(NAME):
        return
    import subprocess
    import sys

    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "precious.txt").write_text("not a rootfs")
    r = subprocess.run([sys.executable, "-m", "gos_tvm.hw.rpc_cli", "emulate", NAME, "--build-only",
                        "--root", str(tmp_path / "cli")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stderr
    assert ("needs root" if not real_root else "is not a (partial) Debian rootfs") in r.stderr
    assert (tmp_path / "cli" / "precious.txt").read_text() == "not a rootfs"


@pytest.fixture(scope="module")
def device():
    """(tracker (host, port), key, emulated preset) with one emulated server registered."""
    from gos_tvm.hw import LocalDevicePool, query_tracker

    emulate.build_emulated_device(NAME)  # cached; builds (or fails with the missing piece) under GOS_TVM_EMULATED=1
    with LocalDevicePool(KEY, n_servers=0, startup_timeout=120) as pool:
        server = emulate.start_emulated_server(pool.tracker, KEY, name=NAME, startup_timeout=300)
        try:
            assert query_tracker(*pool.tracker).count(KEY) == 1
            yield pool.tracker, KEY, emulate.emulated_preset(NAME, key=KEY)
        finally:
            server.stop()
        assert not server.alive()


def test_preset_is_labelled_emulated():
    p = emulate.emulated_preset(NAME)
    assert p.emulated and "emulated" in p.label.lower() and "not board timings" in p.label
    assert p.key == "rasp3b-aarch64-emulated" and p.name == NAME
    assert str(p.target) == str(emulate.preset(NAME).target)      # the board's own target
    assert p.describe()["emulated"] is True


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _replaced_model():
    """A torch model imported to Relax with two operators replaced (closed-form initialised)."""
    from gos_tvm.graph import find_sites, from_torch, substitute
    from gos_tvm.space.candidates import apply

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mod, params = from_torch(model, x)
    sites = {s.id: s for s in find_sites(mod, params)}
    replacements = {}
    for sid, rule, kw in (("conv2", "depthwise_separable", {}), ("conv1", "low_rank", {"rank": 4})):
        cand = apply(sites[sid].program, rule, **kw)
        assert cand.steps and cand.program.structural_hash != sites[sid].program.structural_hash
        replacements[sid] = (cand.program, cand.init(sites[sid].program, sites[sid].weights))
    new_mod, new_params = substitute(mod, params, replacements)
    assert [s.id for s in find_sites(new_mod, new_params)] == ["fc"]
    return model, x, new_mod, new_params


@needs_device
def test_replaced_model_runs_on_the_emulated_device_and_matches_the_host(device):
    from gos_tvm.graph import compile_module, elf_machine, EM_AARCH64, run
    from gos_tvm.hw import measure_module
    from gos_tvm.hw.measure import export_module

    tracker, key, dev = device
    model, x, mod, params = _replaced_model()
    (host_out,) = run(compile_module(mod, params), x)                 # host CPU build
    ref = model(x).detach().numpy()
    assert np.abs(host_out - ref).max() > 1e-3                         # the replacements change the model

    ex = compile_module(mod, params, dev.target)                       # cross-compiled for the board
    lib = export_module(ex, dev)
    assert elf_machine(lib) == EM_AARCH64
    stats = measure_module(None, dev, tracker, key, [x], repeat=3, number=1, fetch_outputs=True,
                           session_timeout=600, library=lib)
    assert stats.emulated and stats.device == NAME and "(emulated)" in str(stats)
    assert stats.to_json()["emulated"] is True
    assert math.isfinite(stats.median) and stats.median > 0
    (dev_out,) = stats.outputs
    assert dev_out.shape == host_out.shape
    np.testing.assert_allclose(dev_out, host_out, rtol=1e-4, atol=1e-4)
    print(f"\nemulated {NAME}: {stats}")


@needs_device
def test_metaschedule_tuning_through_the_emulated_device(device, tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from gos_tvm.hw import TrackerRunner, WarmBuilder, tune_primfunc
    from gos_tvm.instructions import library, to_te

    tracker, key, dev = device
    func = to_te(library.conv2d((1, 4, 8, 8), 8, 3, padding=1))
    runner = TrackerRunner(tracker, key, evaluator_config=ms.runner.EvaluatorConfig(number=2, repeat=2,
                                                                                     min_repeat_ms=0),
                           session_timeout_sec=300, queue_timeout_sec=600)
    builder = WarmBuilder(dev)
    try:
        res = tune_primfunc(func, dev, runner=runner, builder=builder, trials=4, trials_per_iter=4,
                            work_dir=str(tmp_path), seed=1)
    finally:
        runner.close()
        builder.close()
    latency, record = res
    assert record is not None, "no successful measurement on the emulated device"
    assert math.isfinite(latency) and latency > 0
    print(f"\nemulated {NAME}: tuned conv2d (1,4,8,8)->8 3x3 best {latency * 1e6:.1f} us over {res.trials} trials "
          f"({res.failed} failed) -- emulation timing, not a board timing")


class DigitsNet(torch.nn.Module):
    """Small enough that a whole search runs under emulation in minutes (8x8 digits)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


@needs_device
def test_gos_tune_through_the_emulated_device(device, tmp_path):
    """`gos_tvm.tune` with the emulated preset: every kernel and model measurement of the search
    runs on the emulated board; the result is labelled emulated everywhere; the adapted model,
    tuned for the board, runs there and agrees with its host build; a later run on the real board
    cannot resume the emulated work directory."""
    import json

    import gos_tvm
    from gos_tvm import models
    from gos_tvm.graph import EM_AARCH64, compile_module, elf_machine, run
    from gos_tvm.hw import measure_module

    tracker, key, dev = device
    split = models.digits(size=8)
    torch.manual_seed(0)
    net = models.train(DigitsNet(), split, epochs=8)
    assert models.accuracy(net, split.x_val, split.y_val) > 0.9
    work = tmp_path / "gos"
    result = gos_tvm.tune(net, dev, calib_data=split.x_train[:128], val_data=(split.x_val, split.y_val),
                          accuracy_budget=0.05, tracker=tracker, key=key, trials=6, kernel_trials=2,
                          work_dir=work, max_sites=1, seed=0)
    print("\n" + result.summary())
    assert result.device.emulated and "EMULATED" in result.summary()
    report = json.loads(result.report_path.read_text())
    assert report["device"]["emulated"] is True and report["device"]["preset"] == NAME
    assert result.device_measurements > 0
    assert all(json.loads(line) for line in (work / "measurements.jsonl").read_text().splitlines())
    assert math.isfinite(result.original_latency["median_s"]) and math.isfinite(result.adapted_latency["median_s"])
    assert {d.site for d in result.decisions} <= {"conv1", "conv2", "fc"} and result.decisions

    lib = result.export_library(tmp_path / "adapted.so")
    assert elf_machine(lib) == EM_AARCH64
    x = split.x_test[:1]
    stats = measure_module(None, dev, tracker, key, [x], repeat=2, number=1, fetch_outputs=True,
                           session_timeout=600, library=str(lib))
    (host_out,) = run(compile_module(result.mod, result.params), x)
    np.testing.assert_allclose(stats.outputs[0], host_out, rtol=1e-4, atol=1e-4)

    with pytest.raises(ValueError, match="emulated"):
        gos_tvm.tune(net, "rasp3b-aarch64", calib_data=split.x_train[:128], val_data=(split.x_val, split.y_val),
                     tracker=tracker, key=key, work_dir=work)
