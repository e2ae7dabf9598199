"""A small temporal convolutional network (TCN) that regresses heart rate (BPM) from PPG + acceleration.

Shaped like the TCNs used on PPG-DaLiA (TEMPONet, and the NAS-derived TimePPG / Q-PPG
family): blocks of dilated 1-D convolutions with ReLU, average pooling between blocks,
then a global average and a linear head.  The output is in BPM: the head predicts a
normalised rate that `forward` maps back with a fixed affine (so the exported model's
output is BPM and its mean absolute error is the MAE in BPM).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import HR_MAX, HR_MIN

HR_CENTER = (HR_MIN + HR_MAX) / 2
HR_SCALE = (HR_MAX - HR_MIN) / 2


class TCN(nn.Module):
    """Input (N, 4, 256): PPG and acceleration x/y/z, 8 s at 32 Hz.  Output (N, 1): heart rate in BPM.

    Each block is two 'same'-padded dilated Conv1d + ReLU layers followed by AvgPool1d(2);
    block b uses dilations (d_b, 2 d_b).  With the defaults the receptive field of an output
    position is ``receptive_field()`` = 260 input samples (8.1 s, the whole 8 s window), i.e.
    6-24 beats over 50-180 BPM.  The head is a small MLP on the time-averaged features.
    """

    def __init__(self, in_channels: int = 4, channels: tuple[int, ...] = (16, 32, 32), kernel: int = 5,
                 dilation: tuple[int, ...] = (1, 2, 4), hidden: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c, d in zip(channels, dilation):
            for dd in (d, 2 * d):
                layers += [nn.Conv1d(c_in, c, kernel, padding=dd * (kernel - 1) // 2, dilation=dd), nn.ReLU()]
                c_in = c
            layers.append(nn.AvgPool1d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if hidden \
            else nn.Linear(c_in, 1)

    def receptive_field(self) -> int:
        """Input samples seen by one position of the last feature map."""
        rf, stride = 1, 1
        for m in self.features:
            if isinstance(m, nn.Conv1d):
                rf += (m.kernel_size[0] - 1) * m.dilation[0] * stride
            elif isinstance(m, nn.AvgPool1d):
                rf += (m.kernel_size[0] - 1) * stride
                stride *= m.stride[0]
        return rf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=-1)
        return self.head(h) * HR_SCALE + HR_CENTER


def predict_torch(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Heart rate (N,) in BPM of windows `x` (N, 4, 256) with the torch model."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype="float32"))).numpy())
    return np.concatenate(out).reshape(-1)


def mae(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error (BPM)."""
    return float(np.abs(np.ravel(pred) - np.ravel(y)).mean())


@dataclass
class TrainLog:
    epochs: int
    seconds: float
    train_mae: list[float]
    val_mae: list[float]
    best_epoch: int


def train(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
          epochs: int = 40, batch: int = 64, lr: float = 3e-3, weight_decay: float = 1e-4, warmup: int = 2,
          seed: int = 0, threads: int | None = None, verbose: bool = False) -> TrainLog:
    """Train `model` with the L1 loss (MAE) and AdamW; keep the weights of the best validation MAE.

    The loss is computed on the normalised rate ((BPM - HR_CENTER) / HR_SCALE), the learning
    rate warms up linearly for `warmup` epochs and then follows a cosine to zero.
    Augmentation: random sign flips of the acceleration axes and random circular time shifts
    (the rate of a window does not depend on either).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if threads:
        torch.set_num_threads(threads)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(x_train) // batch))
    total_steps, warm_steps = epochs * steps_per_epoch, max(1, warmup * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warm_steps:
            return (step + 1) / warm_steps
        return 0.5 * (1 + np.cos(np.pi * (step - warm_steps) / max(1, total_steps - warm_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype="float32"))
    yt = torch.from_numpy(((np.asarray(y_train, dtype="float64") - HR_CENTER) / HR_SCALE).astype("float32"))
    best, best_state, best_epoch = float("inf"), None, -1
    train_hist, val_hist = [], []
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            xb = xt[idx].clone()
            sign = torch.from_numpy(rng.choice([-1.0, 1.0], (len(idx), 3, 1)).astype("float32"))
            xb[:, 1:] *= sign
            xb = torch.roll(xb, int(rng.integers(0, xb.shape[-1])), dims=-1)
            norm = (model(xb).squeeze(-1) - HR_CENTER) / HR_SCALE
            loss = (norm - yt[idx]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx) * HR_SCALE
        train_hist.append(total / len(xt))
        val = mae(predict_torch(model, x_val), y_val)
        val_hist.append(val)
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if verbose:
            print(f"epoch {epoch + 1:3d}/{epochs}  train MAE {train_hist[-1]:6.2f}  val MAE {val:6.2f} BPM "
                  f"({time.time() - t0:.0f} s)", flush=True)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainLog(epochs, time.time() - t0, train_hist, val_hist, best_epoch)


def fine_tune(model: nn.Module, x_real: np.ndarray, y_real: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
              x_sim: np.ndarray | None = None, y_sim: np.ndarray | None = None, repeat: int = 4, epochs: int = 8,
              lr: float = 1e-3, seed: int = 0, verbose: bool = False) -> TrainLog:
    """Adapt a trained `model` to a real recording: continue `train` on the real windows (each
    `repeat` times per epoch) mixed with simulated ones (``x_sim``, ``y_sim``; they keep the
    heart-rate range and the motion cases that a short recording lacks), at a lower learning
    rate, keeping the weights of the best MAE on the real validation windows ``x_val``.

    Time-split the recording before calling this (`dalia.time_split`): real windows that overlap
    the validation or test windows must not be among ``x_real``.
    """
    xs, ys = [np.repeat(np.asarray(x_real, dtype="float32"), repeat, axis=0)], [np.repeat(y_real, repeat)]
    if x_sim is not None:
        xs.append(np.asarray(x_sim, dtype="float32"))
        ys.append(np.asarray(y_sim))
    return train(model, np.concatenate(xs), np.concatenate(ys).astype("float32"), x_val, y_val, epochs=epochs,
                 lr=lr, warmup=1, seed=seed, verbose=verbose)
