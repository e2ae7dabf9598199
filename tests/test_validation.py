"""Bad input and resume (issue 18): every user error is one line, exit status 2, found before any
work, and an existing work directory is left byte-for-byte as it was; the work directory's
identity covers everything that changes results; the measurement log and the state survive a
kill at any byte."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import gos_tvm
from gos_tvm import graph, models
from gos_tvm.errors import UserError
from gos_tvm.search.gos import GOSearch, SearchOptions
from gos_tvm.search.validate import RESUMABLE_OPTIONS
from gos_tvm.search.store import WorkDir

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory under `path` (None for a directory)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def assert_one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


# ------------------------------------------------------------------------------------ API


@pytest.fixture(scope="module")
def inputs():
    """A small CNN (random weights, imported once), calibration and validation data."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    x = rng.standard_normal((8, 1, 16, 16)).astype("float32")
    mod, params = graph.from_torch(models.DigitsCNN(width=4).eval(), torch.from_numpy(x[:1]))
    xv = rng.standard_normal((6, 1, 16, 16)).astype("float32")
    yv = rng.integers(0, 10, 6)
    return {"mod": mod, "params": params, "calib_data": x, "val_data": (xv, yv), "accuracy_budget": 0.01,
            "trials": 4, "kernel_trials": 2}


@pytest.fixture
def existing(tmp_path, inputs):
    """A work directory of the base run, as a killed run leaves it: run.json, a measurement, a state."""
    work = tmp_path / "work"
    kw = {k: v for k, v in inputs.items() if k not in ("trials", "kernel_trials", "val_data")}
    xv, yv = inputs["val_data"]
    from gos_tvm.search.validate import classification_eval

    search = GOSearch(kw["mod"], kw["params"], "local", calib_data=kw["calib_data"],
                      evaluate=classification_eval(xv, yv), accuracy_budget=kw["accuracy_budget"],
                      work_dir=work, options=SearchOptions(trials=4, kernel_trials=2))
    search.store.record_measurement("kernel:0", kind="kernel", latency_s=1e-5)
    search.state["phase"] = "complexity"
    search.save()
    return work


def _preset_with(**change):
    return dataclasses.replace(gos_tvm.preset("local"), **change)


BAD_API = [  # (id, changes to the base arguments, what the message says)
    ("unknown target", {"target": "no-such-board"}, "unknown device preset 'no-such-board'"),
    ("negative cores", {"target": lambda: _preset_with(num_cores=-3)}, "num_cores=-3"),
    ("negative budget", {"accuracy_budget": -1}, "accuracy_budget must be a finite number >= 0"),
    ("nan budget", {"accuracy_budget": float("nan")}, "accuracy_budget must be"),
    ("negative trials", {"trials": -1}, "trials must be an integer >= 1, got -1"),
    ("zero kernel trials", {"kernel_trials": 0}, "kernel_trials must be an integer >= 1"),
    ("fractional trials", {"trials": 2.5}, "trials must be an integer"),
    ("negative max_sites", {"max_sites": -1}, "max_sites must be an integer >= 0"),
    ("zero flops ratio", {"max_flops_ratio": 0.0}, "max_flops_ratio must be a finite number > 0"),
    ("zero repeat", {"repeat": 0}, "repeat must be an integer >= 1"),
    ("unknown option", {"no_such_option": 1}, "unknown option(s) ['no_such_option']"),
    ("calib of another shape", {"calib_data": np.zeros((8, 1, 8, 8), "float32")},
     "calib_data has samples of shape (1, 8, 8) but the model's input is (1, 1, 16, 16)"),
    ("one calib sample", {"calib_data": np.zeros((1, 1, 16, 16), "float32")}, "N >= 2"),
    ("calib with NaN", {"calib_data": np.full((4, 1, 16, 16), np.nan, "float32")}, "NaN"),
    ("calib of strings", {"calib_data": np.array([["a"], ["b"]])}, "numeric batch"),
    ("val lengths differ", {"val_data": lambda v: (v[0], v[1][:-1])}, "6 inputs but 5 labels"),
    ("labels (N, 1)", {"val_data": lambda v: (v[0], v[1][:, None])}, "labels must have shape (N,)"),
    ("fractional labels", {"val_data": lambda v: (v[0], v[1] + 0.5)}, "integer class indices"),
    ("negative labels", {"val_data": lambda v: (v[0], -v[1] - 1)}, "labels must be class indices >= 0"),
    ("val x of another shape", {"val_data": lambda v: (v[0][:, :, :8], v[1])}, "val_data x must be"),
    ("val_data not a pair", {"val_data": lambda v: v[0]}, "val_data must be a pair"),
    ("no score", {"val_data": None}, "give val_data=(x, y)"),
    ("eval_fn not callable", {"eval_fn": 3}, "eval_fn must be a function"),
    ("tracker without port", {"tracker": "127.0.0.1"}, "the tracker must be HOST:PORT"),
    ("tracker port 0", {"tracker": ("127.0.0.1", 0)}, "port must be 1..65535"),
    ("unreachable tracker", {"tracker": ("127.0.0.1", 1)}, "RPC tracker at 127.0.0.1:1 is unreachable"),
    ("board without tracker", {"target": "rasp3b"}, "rasp3b"),
    ("empty key", {"key": ""}, "RPC key must be a non-empty string"),
    ("missing warm start", {"warm_start": "/no/such/cost_model.json"}, "warm_start"),
    ("not a model", {"mod": "model.onnx"}, "mod must be a Relax IRModule"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in BAD_API], ids=[c[0] for c in BAD_API])
def test_bad_api_input_is_refused_before_any_work(inputs, existing, change, message):
    before = snapshot(existing)
    kw = dict(inputs, target="local", work_dir=existing)
    for k, v in change.items():
        kw[k] = v(kw[k]) if callable(v) and k in ("val_data",) else (v() if callable(v) and k == "target" else v)
    with pytest.raises(UserError) as err:
        gos_tvm.tune(**kw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert snapshot(existing) == before


def test_preset_refuses_a_core_count_below_one():
    with pytest.raises(ValueError, match="num_cores must be an integer >= 1"):
        gos_tvm.preset("local", num_cores=-3)


# ------------------------------------------------------------------------------------ identity


def _identity_changes(inputs):
    """Each field of the work directory's identity, changed alone."""
    xv, yv = inputs["val_data"]
    other_params = {k: v + 1 for k, v in inputs["params"].items()}
    changes = {
        "model": {"params": other_params},
        "device": {"target": lambda: _preset_with(name="other-local")},
        "target": {"target": lambda: gos_tvm.preset("local", num_cores=1 if os.cpu_count() != 1 else 2)},
        "calib_data": {"calib_data": inputs["calib_data"] + 1},
        "score": {"val_data": (xv + 1, yv)},
        "score labels": {"val_data": (xv, (yv + 1) % 10)},
        "score eval_fn": {"eval_fn": lambda predict: 0.0, "val_data": None},
        "accuracy_budget": {"accuracy_budget": 0.02},
    }
    bigger = {"max_sites": 3, "max_flops_ratio": 0.5, "seed": 1, "distill": False, "row_split": True, "serial_kernels": True,
              "distill_task": "regression",
              "max_spread": 0.1, "final_distill_samples": 16}
    for name, f in SearchOptions.__dataclass_fields__.items():
        default = inputs.get(name, f.default)
        changes[name] = {name: bigger[name] if name in bigger else (default or 0) + 1}
    return changes


# Whole-model tuning budgets may change on resume (tuning continues: tests/test_tuning_budgets.py).
IDENTITY_FIELDS = ["model", "device", "target", "calib_data", "score", "score labels", "score eval_fn",
                   "accuracy_budget", *(f for f in SearchOptions.__dataclass_fields__ if f not in RESUMABLE_OPTIONS)]


@pytest.mark.parametrize("field", IDENTITY_FIELDS)
def test_resume_with_a_changed_identity_field_is_refused_untouched(inputs, existing, field):
    change = _identity_changes(inputs)[field]
    kw = dict(inputs, target="local", work_dir=existing)
    kw.update({k: (v() if callable(v) and k == "target" else v) for k, v in change.items()})
    before = snapshot(existing)
    with pytest.raises(UserError, match="holds a search of another run") as err:
        gos_tvm.tune(**kw)
    key = field.split()[0]
    assert f"({key}: " in str(err.value) or f"; {key}: " in str(err.value), str(err.value)
    assert snapshot(existing) == before


def test_resume_with_the_same_inputs_is_accepted(inputs, existing):
    """The same run opens its work directory again, with the log and state it left."""
    from gos_tvm.search.validate import classification_eval

    search = GOSearch(inputs["mod"], inputs["params"], "local", calib_data=inputs["calib_data"],
                      evaluate=classification_eval(*inputs["val_data"]), accuracy_budget=0.01, work_dir=existing,
                      options=SearchOptions(trials=4, kernel_trials=2))
    assert search.store.measured("kernel:0")["latency_s"] == 1e-5
    assert search.state["phase"] == "complexity"


def test_nothing_is_written_until_the_first_measurement(tmp_path, inputs):
    """A run that fails after its checks (e.g. the device pool does not start) leaves no run.json
    behind to lock the directory."""
    from gos_tvm.search.validate import classification_eval

    work = tmp_path / "fresh"
    GOSearch(inputs["mod"], inputs["params"], "local", calib_data=inputs["calib_data"],
             evaluate=classification_eval(*inputs["val_data"]), accuracy_budget=0.01, work_dir=work,
             options=SearchOptions())
    assert not work.exists()


# ------------------------------------------------------------------------------------ store damage


def test_damaged_files_are_named(tmp_path):
    ident = {"model": "m", "device": "local"}
    store = WorkDir(tmp_path / "w", ident)
    store.record_measurement("kernel:a", latency_s=1.0)
    store.save_state({"phase": "x"})
    state = tmp_path / "w" / "state.json"
    state.write_text(state.read_text()[:5])  # truncated
    with pytest.raises(UserError, match=r"state\.json is damaged .*move state\.json and weights/ aside"):
        WorkDir(tmp_path / "w", ident).load_state()
    log = tmp_path / "w" / "measurements.jsonl"
    log.write_text(log.read_text() + json.dumps({"latency_s": 2.0}) + "\n")
    with pytest.raises(UserError, match=r"measurements\.jsonl line 2 is not a measurement \(no 'key'\)"):
        WorkDir(tmp_path / "w", ident)
    (tmp_path / "w" / "run.json").write_text("{")
    with pytest.raises(UserError, match=r"run\.json is not valid JSON"):
        WorkDir(tmp_path / "w", ident)


#: A stand-in for the search's measuring loop over the real store: each key is "measured" once
#: (its value derived from the key, so that a resumed run must reproduce the same result), the
#: state records progress after every measurement, and the result is read back from both.
CHILD = r"""
import hashlib, json, sys, time
from gos_tvm.search.store import WorkDir

work, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = WorkDir(work, {"model": "kill-test", "device": "local"})
state = store.load_state() or {"done": []}
for i in range(n):
    key = f"kernel:{i}"
    if store.measured(key) is None:
        value = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
        store.record_measurement(key, latency_s=value, pad="x" * (97 * i % 3000))
    if i not in state["done"]:
        state["done"].append(i)
        state["total"] = sum(store.measured(f"kernel:{j}")["latency_s"] for j in state["done"])
        store.save_state(state)
    time.sleep(pause)
print(json.dumps({"new": store.new_measurements, "total": state["total"], "done": state["done"]}))
"""


def _final(work: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(work), str(n), "0"], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _log_keys(work: Path) -> list[str]:
    keys = []
    for line in (work / "measurements.jsonl").read_text().splitlines():
        try:
            keys.append(json.loads(line)["key"])
        except json.JSONDecodeError:
            pass
    return keys


def test_kill_9_at_random_points_resumes_to_the_same_result(tmp_path):
    n = 30
    reference = _final(tmp_path / "reference", n)
    rng = random.Random(18)
    work = tmp_path / "killed"
    measured_by_killed = []
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(work), str(n), "0.02"], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Kill once a random number of further measurements are in the log (the child is mid-loop).
        start = len(_log_keys(work)) if (work / "measurements.jsonl").exists() else 0
        target = start + rng.randint(1, 6)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (work / "measurements.jsonl").exists() and len(_log_keys(work)) >= target:
                time.sleep(rng.uniform(0, 0.02))  # anywhere in the next step
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        measured_by_killed.append(len(_log_keys(work)))
    assert measured_by_killed[-1] < n, "the kills came too late to test anything"
    before = set(_log_keys(work))
    final = _final(work, n)
    assert not before & set(final["new"]), "a measurement was repeated after the kill"
    keys = _log_keys(work)
    assert len(keys) == len(set(keys)) == n
    assert final["done"] == reference["done"] and final["total"] == pytest.approx(reference["total"], rel=1e-12)


def test_a_log_cut_at_any_byte_resumes_without_repeats(tmp_path):
    """A kill in the middle of an append leaves a torn last line: it is ignored with a warning,
    the next record starts on a fresh line, and only the torn measurement is made again."""
    ident = {"model": "m", "device": "local"}
    full = WorkDir(tmp_path / "full", ident)
    for i in range(5):
        full.record_measurement(f"kernel:{i}", latency_s=float(i), pad="y" * 40)
    data = (tmp_path / "full" / "measurements.jsonl").read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    for cut in sorted(random.Random(0).sample(range(1, len(data)), 40)) + ends:
        work = tmp_path / f"cut{cut}"
        work.mkdir()
        (work / "run.json").write_bytes((tmp_path / "full" / "run.json").read_bytes())
        (work / "measurements.jsonl").write_bytes(data[:cut])
        store = WorkDir(work, ident)
        complete = sum(1 for e in ends if e <= cut)
        assert sorted(store.measurements) == [f"kernel:{i}" for i in range(complete)]
        for i in range(5):
            if store.measured(f"kernel:{i}") is None:
                store.record_measurement(f"kernel:{i}", latency_s=float(i), pad="y" * 40)
        assert store.new_measurements == [f"kernel:{i}" for i in range(complete, 5)]
        again = WorkDir(work, ident)
        assert {k: r["latency_s"] for k, r in again.measurements.items()} == {f"kernel:{i}": float(i)
                                                                              for i in range(5)}


# ------------------------------------------------------------------------------------ CLI


def _onnx_model(path: Path) -> None:
    """Flatten -> Gemm on a (1, 1, 8, 8) input, 10 classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 64)).astype("float32"), "fc.weight")
    b = numpy_helper.from_array(np.zeros(10, "float32"), "fc.bias")
    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]),
                           helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1)], "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, b])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    _onnx_model(d / "tiny.onnx")
    (d / "empty.onnx").write_bytes(b"")
    (d / "corrupt.onnx").write_bytes(b"\x08\x07this is not protobuf" * 10)
    rng = np.random.default_rng(0)
    x, xv, yv = rng.standard_normal((8, 1, 8, 8)), rng.standard_normal((6, 1, 8, 8)), rng.integers(0, 10, 6)
    np.savez(d / "good.npz", x_calib=x, x_val=xv, y_val=yv)
    np.savez(d / "calib_shape.npz", x_calib=x[:, :, :4], x_val=xv, y_val=yv)
    np.savez(d / "val_len.npz", x_calib=x, x_val=xv, y_val=yv[:4])
    np.savez(d / "labels_n1.npz", x_calib=x, x_val=xv, y_val=yv[:, None])
    np.savez(d / "missing.npz", x_calib=x)
    (d / "notnpz.npz").write_text("hello")
    # A work directory of a run with the command line's defaults (as a killed run leaves it).
    from gos_tvm.search.validate import run_identity

    local = gos_tvm.preset("local")
    from gos_tvm.graph import conv_layout

    with conv_layout("NHWC"):  # the CLI's default layout, part of a work directory's identity
        ident = run_identity("0" * 16, local, SearchOptions(), np.zeros((2, 1)), lambda p: 0.0, 0.01)
    store = WorkDir(d / "work", {**ident, "model": "an earlier model"})
    store.record_measurement("kernel:0", kind="kernel", latency_s=1e-5)
    store.save_state({"phase": "complexity"})
    return d


BAD_CLI = [  # (id, arguments, exit status, what the one line says)
    ("+unknown target", ["tune", "--target", "no-such-board"], 2, "unknown device preset 'no-such-board'"),
    ("+negative budget", ["tune", "--budget", "-1"], 2, "--budget must be a finite number >= 0"),
    ("negative trials", ["tune", "--trials", "-1"], 2, "--trials must be an integer >= 1"),
    ("+non-integer trials", ["tune", "--trials", "abc"], 2, "invalid int value: 'abc'"),
    ("negative screening", ["tune", "--screen-per-site", "-1"], 2, "--screen-per-site must be an integer >= 0"),
    ("+another budget", ["tune", "--budget", "0.02"], 2,
     "holds a search of another run (accuracy_budget: 0.01 there, 0.02 now)"),
    ("+unknown model", ["tune", "--model", "nosuch"], 2, "--model 'nosuch' is not a built-in model"),
    ("missing onnx", ["tune", "--onnx", "{d}/none.onnx", "--data", "{d}/good.npz"], 2, "no such file"),
    ("empty onnx", ["tune", "--onnx", "{d}/empty.onnx", "--data", "{d}/good.npz"], 2, "the file is empty"),
    ("+corrupt onnx", ["tune", "--onnx", "{d}/corrupt.onnx", "--data", "{d}/good.npz"], 2,
     "is not a readable ONNX model"),
    ("onnx without data", ["tune", "--onnx", "{d}/tiny.onnx"], 2, "--onnx needs --data"),
    ("data not npz", ["tune", "--onnx", "{d}/tiny.onnx", "--data", "{d}/notnpz.npz"], 2, "is not a .npz archive"),
    ("data lacks arrays", ["tune", "--onnx", "{d}/tiny.onnx", "--data", "{d}/missing.npz"], 2,
     "lacks ['x_val', 'y_val']"),
    ("+calib of another shape", ["tune", "--onnx", "{d}/tiny.onnx", "--data", "{d}/calib_shape.npz"], 2,
     "calib_data has samples of shape (1, 4, 8) but the model's input is (1, 1, 8, 8)"),
    ("val lengths differ", ["tune", "--onnx", "{d}/tiny.onnx", "--data", "{d}/val_len.npz"], 2,
     "6 inputs but 4 labels"),
    ("+labels (N, 1)", ["tune", "--onnx", "{d}/tiny.onnx", "--data", "{d}/labels_n1.npz"], 2,
     "labels must have shape (N,)"),
    ("+tracker without port", ["tune", "--tracker", "127.0.0.1"], 2, "the tracker must be HOST:PORT"),
    ("+unreachable tracker", ["tune", "--tracker", "127.0.0.1:1"], 2, "RPC tracker at 127.0.0.1:1 is unreachable"),
    ("board without tracker", ["tune", "--target", "rasp3b"], 2, "rasp3b"),
    ("emulated local", ["tune", "--target", "local", "--emulated"], 2, "no emulated device for 'local'"),
    ("query timeout", ["rpc", "query", "--tracker-timeout", "-1"], 2, "--tracker-timeout must be"),
    ("+query old timeout", ["rpc", "query", "--timeout", "-1"], 2, "--tracker-timeout must be"),
    ("query tracker without port", ["rpc", "query", "--tracker", "127.0.0.1"], 2, "--tracker must be HOST:PORT"),
    ("+server waits as told", ["rpc", "server", "--tracker", "127.0.0.1:1", "--key", "x", "--tracker-timeout", "1"],
     1, "did not answer within --tracker-timeout 1 s"),
    ("+emulate checks tracker first", ["rpc", "emulate", "rasp3b-aarch64", "--tracker", "127.0.0.1:1"], 1,
     "RPC tracker at 127.0.0.1:1 is unreachable"),
]


def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    # `rpc` runs through its light entry point (no TVM import): the same handlers and error path.
    entry = "gos_tvm.hw.rpc_cli" if args[0] == "rpc" else "gos_tvm.cli"
    return subprocess.run([sys.executable, "-m", entry, *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def _check_cli_cases(cases, cli_files: Path) -> None:
    work = cli_files / "work"
    before = snapshot(work)
    runs = [[a.format(d=cli_files) for a in args] + (["--work-dir", str(work)] if args[0] == "tune" else [])
            for _, args, _, _ in cases]
    with ThreadPoolExecutor(4) as pool:  # each process spends seconds importing TVM
        outs = list(pool.map(_run_cli, runs))
    failures = []
    for (name, _, status, message), out in zip(cases, outs):
        try:
            line = assert_one_line(out.stderr)
            assert out.returncode == status, f"exit status {out.returncode}, expected {status}"
            assert message in line, f"{message!r} not in {line!r}"
        except AssertionError as err:
            failures.append(f"{name}: {err}\nstdout: {out.stdout[-500:]}\nstderr: {out.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
    assert snapshot(work) == before


def test_bad_cli_input_is_one_line_and_leaves_the_work_dir(cli_files):
    """One case of each kind of check (ids marked '+'); the rest of the table is in the slow tier."""
    _check_cli_cases([c for c in BAD_CLI if c[0].startswith("+")], cli_files)


@pytest.mark.slow
def test_all_bad_cli_input_is_one_line_and_leaves_the_work_dir(cli_files):
    _check_cli_cases([c for c in BAD_CLI if not c[0].startswith("+")], cli_files)


def test_debug_shows_the_traceback(tmp_path):
    out = _run_cli(["tune", "--debug", "--budget", "-1", "--work-dir", str(tmp_path / "w")])
    assert out.returncode != 0 and "Traceback" in out.stderr and "UserError" in out.stderr


def test_tracker_on_busy_ports_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = _run_cli(["rpc", "tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)])
    line = assert_one_line(out.stderr)
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1 at any port in [{port}, {port + 1})" in line


def test_read_report_explains_a_report_without_kernel_sum():
    """`kernel_sum_s` is null when a kernel has no tuning record; the tutorial says so."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("read_report", ROOT / "tutorials" / "read_report.py")
    read_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(read_report)
    latency = {"median_s": 1e-3, "std_s": 1e-5, "kernel_sum_s": None}
    report = {"device": {"preset": "local", "label": "cpu"}, "original": {"latency": latency, "score": 0.9},
              "adapted": {"latency": {**latency, "kernel_sum_s": 5e-4}, "score": 0.9}, "speedup": 1.0,
              "accuracy_budget": 0.01, "decisions": [], "search_seconds": 1.0, "device_measurements": 2,
              "configurations": 1, "pareto": [], "chosen": {"choices": {}}}
    text = "\n".join(read_report.explain(report))
    assert "original kernel_sum n/a" in text and "adapted kernel_sum 0.500 ms" in text


def test_a_tuning_database_cut_mid_record_opens_again(tmp_path):
    """TVM refuses a JSON database whose last record a kill cut short; the work directory drops
    that record when it is opened again (it is tuned again), keeping the complete ones."""
    import tvm
    from tvm import te
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord

    from gos_tvm.hw import open_database

    a = te.placeholder((16,), name="a")
    mod = tvm.IRModule({"main": te.create_prim_func([a, te.compute((16,), lambda i: a[i] * 2.0, name="b")])})
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    ident = {"model": "m", "device": "local"}
    store = WorkDir(tmp_path / "w", ident)
    db = open_database(str(store.database_dir))  # the run's one database
    workload = db.commit_workload(mod)
    for secs in (1e-3, 2e-3):
        db.commit_tuning_record(TuningRecord(Schedule(mod).trace, workload, [secs], target,
                                             ArgInfo.from_prim_func(mod["main"])))
    records = tmp_path / "w" / "database" / "database_tuning_record.json"
    data = records.read_bytes()
    records.write_bytes(data[:-15])  # killed in the middle of the second record
    with pytest.raises(Exception, match="Unexpected end of string"):
        open_database(str(tmp_path / "w" / "database"))
    again = WorkDir(tmp_path / "w", ident)
    reopened = open_database(str(again.database_dir))
    assert [r.run_secs[0].value for r in reopened.get_all_tuning_records()] == [pytest.approx(1e-3)]


def test_a_frontend_failure_keeps_its_message():
    """TVM 0.27 has no tvm.error.TVMError: naming it in an except clause turned every frontend
    failure that is not an AssertionError into AttributeError, hiding the real message."""
    class BooleanMask(torch.nn.Module):
        def forward(self, x):
            y = x.clone()
            y[x > 0] = 0.0
            return y

    with pytest.raises(graph.UnsupportedModelError, match="TVM's torch frontend failed on BooleanMask: .*IndexPut"):
        graph.from_torch(BooleanMask(), torch.randn(1, 4))
