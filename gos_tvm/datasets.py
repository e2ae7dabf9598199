"""Image data sets for the built-in models: scikit-learn's digits and Fashion-MNIST.

Both come as a `Split` of float32 NCHW images (one channel, values in [-1, 1]) resized to
the model's input size, with int64 labels, and a deterministic train / validation / test split.

* ``digits``: scikit-learn's handwritten digits (1,797 8x8 images, shipped with
  scikit-learn), upsampled bilinearly (the information content stays that of 8x8 images),
  split 60/20/20 at random.
* ``fashion-mnist``: the original Fashion-MNIST IDX files (60,000 train + 10,000 test
  28x28 images of 10 clothing classes, MIT licence), read from the folder the Debian
  package ``dataset-fashion-mnist`` installs (``/usr/share/datasets/fashion-mnist``) or
  from ``$GOS_TVM_FASHION_MNIST``.  The test set is the official 10,000 images; the
  validation set is ``val_size`` images drawn at random (seeded) from the 60,000 training
  images, the rest is the training set.  28x28 images are padded with background to 32x32
  (the models' input) or resized with antialiasing to other sizes.

Nothing is downloaded: a data set that is not installed raises `DatasetNotFound`, whose
message gives the install command.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "GOS_TVM_FASHION_MNIST"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                       "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
DATASETS = ("digits", "fashion-mnist")

# IDX type codes (the third byte of the magic number) and their big-endian numpy types.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFound(FileNotFoundError):
    """A data set's files are not on this machine; the message says how to install them."""


@dataclass
class Split:
    """Images ``x_*`` (N, 1, H, W) float32 in [-1, 1] and labels ``y_*`` (N,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "digits"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (gzip-compressed when its name ends in ``.gz``).

    IDX (the MNIST format): two zero bytes, a type code, the number of dimensions n, then n
    big-endian uint32 sizes, then the values in C order, big-endian.
    """
    path = Path(path)
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4)) if len(raw) >= header else ()
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) < header or len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} of {dtype} ({expected} bytes), "
                         f"the file has {len(raw)} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the Fashion-MNIST IDX files: `root`, ``$GOS_TVM_FASHION_MNIST`` or the Debian path."""
    return Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _idx_path(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DatasetNotFound(
        f"Fashion-MNIST is not installed: {folder / (stem + '.gz')} does not exist. Install it with "
        f"`{FASHION_MNIST_INSTALL}` (Debian/Ubuntu; puts the four IDX files in {FASHION_MNIST_DIR}), or set "
        f"{FASHION_MNIST_ENV} to a folder holding {', '.join(f + '.gz' for f in FASHION_MNIST_FILES.values())}.")


def fashion_mnist_raw(root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays as stored: images uint8 (N, 28, 28), labels uint8 (N,)."""
    folder = fashion_mnist_dir(root)
    arrays = {key: read_idx(_idx_path(folder, stem)) for key, stem in FASHION_MNIST_FILES.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{folder}: {part} images {x.shape} and labels {y.shape} do not match")
    return arrays


def _to_model_input(images: np.ndarray, size: int, pad: bool = False) -> np.ndarray:
    """Images (N, H, W) with values in [0, 1] -> float32 (N, 1, size, size) in [-1, 1].

    `pad`: a larger `size` is reached by padding with background (0) on every side instead of
    resampling; otherwise the images are resized bilinearly (with antialiasing when shrinking).
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype="float32")).unsqueeze(1)
    h = x.shape[-1]
    if pad and size > h:
        # Fashion-MNIST's 28x28 -> 32x32: pad with background, as LeNet did with MNIST (no resampling)
        lo = (size - h) // 2
        x = F.pad(x, [lo, size - h - lo, lo, size - h - lo], value=0.0)
    elif size != h:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < h)
    return ((x - 0.5) / 0.5).numpy()


def fashion_mnist(size: int = 32, seed: int = 0, val_size: int = 5000,
                  root: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST at `size`x`size`: 60,000 - `val_size` train, `val_size` validation, 10,000 test."""
    raw = fashion_mnist_raw(root)
    n_train = len(raw["train_labels"])
    if not 0 < val_size < n_train:
        raise ValueError(f"val_size must be between 1 and {n_train - 1}, got {val_size}")
    order = np.random.default_rng(seed).permutation(n_train)
    val, tr = order[:val_size], np.sort(order[val_size:])
    x_train = _to_model_input(raw["train_images"] / 255.0, size, pad=True)
    x_test = _to_model_input(raw["test_images"] / 255.0, size, pad=True)
    y_train, y_test = raw["train_labels"].astype("int64"), raw["test_labels"].astype("int64")
    return Split(x_train[tr], y_train[tr], x_train[val], y_train[val], x_test, y_test, name="fashion-mnist")


def digits(size: int = 16, seed: int = 0) -> Split:
    """scikit-learn's digits as float32 NCHW images of `size`x`size`, 60/20/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = _to_model_input(data.images / 16.0, size)
    y = data.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    tr, va, te = order[:a], order[a:b], order[b:]
    return Split(x[tr], y[tr], x[va], y[va], x[te], y[te], name="digits")


def describe(name: str) -> str:
    """One line saying what data set `name` is (for reports and the CLI)."""
    return {"digits": "scikit-learn digits (1,797 8x8 images, resized bilinearly; 60/20/20 split)",
            "fashion-mnist": "Fashion-MNIST (60,000 train - 5,000 validation, 10,000 test; 28x28 padded to 32x32 "
                             "or resized)"}[check_name(name)]


def check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return name


def load(name: str, size: int, seed: int = 0) -> Split:
    """The data set `name` (one of `DATASETS`) at `size`x`size`."""
    check_name(name)
    return digits(size, seed) if name == "digits" else fashion_mnist(size, seed)
