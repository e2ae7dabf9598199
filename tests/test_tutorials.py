"""Each tutorial runs end to end at reduced size (slow tier: `pytest --runslow tests/test_tutorials.py`)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quickstart")
    return load("quickstart").main(["--small", "--work-dir", str(work)])


@pytest.mark.slow
def test_quickstart(quickstart_run):
    out = quickstart_run
    assert out["speedup"] > 0
    assert 0.5 < out["test_accuracy"] <= 1.0          # a trained digits CNN, not chance (0.1)
    assert Path(out["library"]).stat().st_size > 0
    assert Path(out["report"]).exists()


@pytest.mark.slow
def test_read_report(quickstart_run, capsys):
    out = load("read_report").main(["--work-dir", quickstart_run["work_dir"]])
    text = capsys.readouterr().out
    assert out["report"] == quickstart_run["report"]
    assert "speed-up" in text and "Pareto front" in text and "Search cost" in text
    assert Path(out["plot"]).exists()
    report = json.loads(Path(out["report"]).read_text())
    assert len(load("read_report").explain(report)) > 10


@pytest.mark.slow
def test_deploy_rasp3b_host_side(tmp_path):
    out = load("deploy_rasp3b").main(["--small", "--work-dir", str(tmp_path)])
    assert not out["board_attached"] and out["board_median_s"] is None   # nothing claimed for a board
    for lib in out["libraries"].values():
        assert lib["elf_machine"] == 40                                   # EM_ARM: armv7 for 32-bit Pi OS
        assert Path(lib["path"]).stat().st_size > 0
    assert (tmp_path / "run_on_pi.py").exists() and (tmp_path / "input.npy").exists()
    compile(Path(tmp_path / "run_on_pi.py").read_text(), "run_on_pi.py", "exec")


@pytest.mark.slow
def test_deploy_android_host_side(tmp_path, monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    out = load("deploy_android").main(["--small", "--work-dir", str(tmp_path)])
    assert not out["phone_attached"] and out["phone_median_s"] is None
    for lib in out["libraries"].values():
        assert lib["path"].endswith(".tar")
        assert lib["objects"] and all(m == 183 for m in lib["objects"].values())  # EM_AARCH64 objects
