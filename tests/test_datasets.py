"""Image data sets: the IDX reader on the real Fashion-MNIST files, the splits, clear errors when the data is
absent, the built-in models trained on Fashion-MNIST, and `gos-tvm tune --dataset`."""
from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest

from gos_tvm import datasets, models

HAVE_FASHION = all((datasets.FASHION_MNIST_DIR / (f + ".gz")).is_file() for f in datasets.FASHION_MNIST_FILES.values())
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Fashion-MNIST not installed in {datasets.FASHION_MNIST_DIR}: "
                             f"`{datasets.FASHION_MNIST_INSTALL}` (Debian/Ubuntu)")


def _write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(datasets._IDX_DTYPES[code]).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_read_idx_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    _write_idx(tmp_path / "a.gz", images)
    assert np.array_equal(datasets.read_idx(tmp_path / "a.gz"), images)
    ints = rng.integers(-1000, 1000, (7,), dtype=np.int32)
    _write_idx(tmp_path / "b", ints, code=0x0C)                 # big-endian int32, uncompressed
    assert np.array_equal(datasets.read_idx(tmp_path / "b"), ints)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(tmp_path / "text")
    _write_idx(tmp_path / "full", np.zeros((4, 2, 2), np.uint8))
    (tmp_path / "cut").write_bytes((tmp_path / "full").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        datasets.read_idx(tmp_path / "cut")


@needs_fashion
def test_fashion_mnist_idx_files():
    raw = datasets.fashion_mnist_raw()
    assert raw["train_images"].shape == (60000, 28, 28) and raw["test_images"].shape == (10000, 28, 28)
    assert raw["train_images"].dtype == np.uint8 and raw["train_labels"].shape == (60000,)
    # the data set is balanced: 6,000 train and 1,000 test images per class
    assert np.array_equal(np.bincount(raw["train_labels"]), [6000] * 10)
    assert np.array_equal(np.bincount(raw["test_labels"]), [1000] * 10)
    assert raw["train_images"].max() == 255 and raw["train_images"].min() == 0
    # the label of the first training image of the original release is 9 (ankle boot), of the first test image 9
    assert raw["train_labels"][0] == 9 and raw["test_labels"][0] == 9


@needs_fashion
def test_fashion_mnist_split():
    s = datasets.fashion_mnist(32, seed=0, val_size=5000)
    assert s.name == "fashion-mnist"
    assert s.x_train.shape == (55000, 1, 32, 32) and s.x_val.shape == (5000, 1, 32, 32)
    assert s.x_test.shape == (10000, 1, 32, 32) and s.y_test.shape == (10000,)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
    assert s.x_train.min() == -1.0 and s.x_train.max() == 1.0
    # 28x28 padded with background to 32x32, the image itself unchanged
    raw = datasets.fashion_mnist_raw()
    assert np.all(s.x_test[:, 0, :2] == -1.0) and np.all(s.x_test[:, 0, :, -2:] == -1.0)
    assert np.allclose(s.x_test[:, 0, 2:30, 2:30], raw["test_images"] / 255.0 * 2 - 1, atol=1e-6)
    # validation images are training images that are not in the training part: no image in both
    train_keys = {row.tobytes() for row in raw["train_images"].reshape(60000, -1)}
    val_keys = {row.tobytes() for row in ((s.x_val[:, 0, 2:30, 2:30] + 1) / 2 * 255).round().astype(np.uint8)
                .reshape(5000, -1)}
    assert val_keys <= train_keys
    tr_keys = {row.tobytes() for row in ((s.x_train[:, 0, 2:30, 2:30] + 1) / 2 * 255).round().astype(np.uint8)
               .reshape(55000, -1)}
    dup_in_raw = 60000 - len(train_keys)                        # Fashion-MNIST has a few duplicate images
    assert len(val_keys & tr_keys) <= dup_in_raw
    small = datasets.fashion_mnist(16, seed=0, val_size=100)
    assert small.x_train.shape == (59900, 1, 16, 16) and np.array_equal(small.y_test, s.y_test)
    again = datasets.fashion_mnist(16, seed=0, val_size=100)
    assert np.array_equal(again.y_val, small.y_val)


def test_absent_fashion_mnist_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(datasets.DatasetNotFound, match="apt-get install -y dataset-fashion-mnist"):
        datasets.fashion_mnist(32)
    with pytest.raises(datasets.DatasetNotFound, match="apt-get install -y dataset-fashion-mnist"):
        models.trained_model("digits-cnn", tmp_path / "cache", dataset="fashion-mnist")
    assert not (tmp_path / "cache").exists()                    # nothing written before the data was there


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits, fashion-mnist"):
        models.trained_model("digits-cnn", dataset="cifar")


def test_digits_split_unchanged():
    s = datasets.digits(16, seed=0)
    assert s.name == "digits" and s.x_train.shape == (1078, 1, 16, 16) and s.x_test.shape == (360, 1, 16, 16)
    assert models.digits is datasets.digits and models.Split is datasets.Split


@needs_fashion
def test_model_trained_on_fashion_mnist(tmp_path):
    # 1 epoch on 3,000 images: well above chance (10%) on the official 10,000 test images
    model, split = models.trained_model("digits-cnn", tmp_path, epochs=1, dataset="fashion-mnist",
                                        train_samples=3000)
    assert split.name == "fashion-mnist" and split.x_test.shape == (10000, 1, 16, 16)
    acc = models.accuracy(model, split.x_test, split.y_test)
    assert acc > 0.6, acc
    cached = list(tmp_path.glob("digits-cnn-fashion-mnist-n3000-*.pt"))
    assert len(cached) == 1
    again, _ = models.trained_model("digits-cnn", tmp_path, epochs=1, dataset="fashion-mnist", train_samples=3000)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.state_dict().values(),
                                                                     again.state_dict().values()))


def _tune_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "gos_tvm.cli", "tune", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_dataset_option(tmp_path):
    help_text = _tune_cli("--help").stdout
    assert "--dataset" in help_text and "fashion-mnist" in help_text
    bad = _tune_cli("--dataset", "cifar", "--work-dir", str(tmp_path / "w"))
    assert bad.returncode == 2 and "invalid choice: 'cifar'" in bad.stderr
    absent = _tune_cli("--dataset", "fashion-mnist", "--work-dir", str(tmp_path / "w"),
                       env_extra={datasets.FASHION_MNIST_ENV: str(tmp_path / "empty")})
    assert absent.returncode != 0
    assert "--dataset fashion-mnist" in absent.stderr and "apt-get install -y dataset-fashion-mnist" in absent.stderr
    assert "Traceback" not in absent.stderr
    onnx = _tune_cli("--onnx", "m.onnx", "--dataset", "digits", "--work-dir", str(tmp_path / "w"))
    assert onnx.returncode != 0 and "--dataset" in onnx.stderr and "--data" in onnx.stderr
    assert not (tmp_path / "w").exists()
