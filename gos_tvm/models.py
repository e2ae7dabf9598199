"""Small real models trained on real data for the main job, the tests and the benchmarks.

Data (`gos_tvm.datasets`): scikit-learn's handwritten digits (1,797 8x8 images, upsampled;
the default) or Fashion-MNIST (60,000 + 10,000 28x28 images, from the Debian package
``dataset-fashion-mnist``), at the model's input size (16x16 or 32x32), split
deterministically into train / validation / test.

Models: a plain CNN, and ResNet-, MobileNetV2- and VGG-style networks scaled for
32x32 inputs, trained here on the CPU in seconds to minutes.  Trained weights are
cached (keyed by model, size, epochs and seed) so a rerun does not train again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .datasets import DATASETS, Split, check_name, digits, fashion_mnist  # noqa: F401 (re-exported)
from . import datasets


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions and a classifier: the main job's model."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.fc = nn.Linear(4 * width * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 16, 16)
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet18Style(nn.Module):
    """ResNet-18's layout (4 stages of 2 basic blocks) for 32x32 inputs, narrower."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            for j in range(2):
                blocks.append(BasicBlock(cin, width * mult, 2 if (j == 0 and i > 0) else 1))
                cin = width * mult
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_res else y


class MobileNetV2Style(nn.Module):
    """MobileNetV2's inverted residual blocks (expansion 6) for 32x32 inputs."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        cfg = [(1, width, 1), (6, width * 3 // 2, 2), (6, width * 3 // 2, 1), (6, width * 2, 2),
               (6, width * 2, 1), (6, width * 4, 2), (6, width * 4, 1)]
        layers, cin = [nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6()], width
        for t, c, s in cfg:
            layers.append(InvertedResidual(cin, c, s, t))
            cin = c
        layers += [nn.Conv2d(cin, cin * 4, 1, bias=False), nn.BatchNorm2d(cin * 4), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class VGGStyle(nn.Module):
    """VGG's stacks of 3x3 convolutions and max-pooling for 32x32 inputs, narrower."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        layers, cin = [], 1
        for v in (width, width, "M", 2 * width, 2 * width, "M", 4 * width, 4 * width, "M", 8 * width, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(cin * 2 * 2, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


MODELS = {"digits-cnn": (DigitsCNN, 16), "resnet18-style": (ResNet18Style, 32),
          "mobilenetv2-style": (MobileNetV2Style, 32), "vgg-style": (VGGStyle, 32)}


def train(model: nn.Module, split: Split, epochs: int = 8, lr: float = 3e-3, batch: int = 64,
          seed: int = 0, progress: bool = True) -> nn.Module:
    """Adam on cross-entropy; deterministic for a given seed.  `progress` shows a tqdm bar (a
    Fashion-MNIST model trains for tens of minutes on two cores)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((len(y) + batch - 1) // batch))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with tqdm(total=sched.total_steps, desc=f"train {type(model).__name__}", unit="batch",
              disable=not progress, leave=False) as bar:
        for epoch in range(epochs):
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}")
            for idx in torch.randperm(len(y), generator=gen).split(batch):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
                sched.step()
                bar.update()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def trained_model(name: str, cache_dir: str | os.PathLike | None = None, epochs: int = 8,
                  seed: int = 0, dataset: str = "digits",
                  train_samples: int | None = None) -> tuple[nn.Module, Split]:
    """A model of `MODELS` trained on `dataset` (cached under `cache_dir`) and its data split.

    `dataset` is ``"digits"`` (scikit-learn, always available) or ``"fashion-mnist"``
    (raises `gos_tvm.datasets.DatasetNotFound`, naming the install command, when absent).
    `train_samples` trains on the first that many training images only (a quick run; the
    returned split is the whole split).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    check_name(dataset)
    cls, size = MODELS[name]
    split = datasets.load(dataset, size, seed)
    torch.manual_seed(seed)
    model = cls()
    path = None
    if cache_dir is not None:
        arch = ",".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
        # digits keeps the key it had before there was a choice (existing caches stay valid)
        data_key = "" if dataset == "digits" else f"-{dataset}"
        data_key += f"-n{train_samples}" if train_samples is not None else ""
        tag = hashlib.sha256(f"{name}-{size}-{epochs}-{seed}-{arch}{data_key}".encode()).hexdigest()[:10]
        path = Path(cache_dir) / f"{name}{data_key}-{tag}.pt"
        if path.exists():
            model.load_state_dict(torch.load(path))
            return model.eval(), split
    if train_samples is not None and not 0 < train_samples:
        raise ValueError(f"train_samples must be positive, got {train_samples}")
    subset = split if train_samples is None else dataclasses.replace(
        split, x_train=split.x_train[:train_samples], y_train=split.y_train[:train_samples])
    train(model, subset, epochs=epochs, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model, split
