"""Input/output activations of a layer of a torch model, and the layer as an `OpProgram`.

`capture` records what a layer sees and produces while the model runs on data (forward
hooks), which is the training set for distilling a replacement of that layer.
`layer_program` writes a torch layer as the equivalent program of the operator library,
with its state dict as the program's weights.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from ..instructions import OpProgram, library


def _find_layer(model: torch.nn.Module, layer: torch.nn.Module | str) -> torch.nn.Module:
    if isinstance(layer, torch.nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"{type(layer).__name__} layer is not a submodule of the model")
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"model has no submodule {layer!r}; it has {[n for n in modules if n]}")
    return modules[layer]


def capture(model: torch.nn.Module, layer: torch.nn.Module | str,
            data: torch.Tensor | np.ndarray | Iterable[torch.Tensor], batch_size: int = 256
            ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, outputs) of `layer` while `model` runs on `data` in eval mode without gradients.

    Args:
        model: the model.
        layer: the submodule (or its name in `model.named_modules()`).
        data: model inputs, sample axis first, or an iterable of batches.
        batch_size: batch size used when `data` is one tensor or array.

    Returns:
        The layer's first positional input and its output, concatenated over all samples.
    """
    target = _find_layer(model, layer)
    seen_in: list[torch.Tensor] = []
    seen_out: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen_in.append(args[0].detach().cpu())
        seen_out.append(output.detach().cpu())

    if isinstance(data, (np.ndarray, torch.Tensor)):
        data = torch.as_tensor(data, dtype=torch.float32)
        batches: Iterable[torch.Tensor] = data.split(batch_size)
    else:
        batches = data
    handle = target.register_forward_hook(hook)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        handle.remove()
        model.train(was_training)
    if not seen_in:
        raise ValueError("the layer was never called: no data, or the model does not use it")
    return torch.cat(seen_in).numpy(), torch.cat(seen_out).numpy()


def layer_program(layer: torch.nn.Module, input_shape: Sequence[int]) -> tuple[OpProgram, dict[str, np.ndarray]]:
    """The library program computing `layer` on inputs of `input_shape` (batch first), and its weights.

    Supports `torch.nn.Conv1d`, `Conv2d` (zero padding, including 'same' and 'valid') and `Linear`.
    """
    weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in layer.state_dict().items()}
    has_bias = getattr(layer, "bias", None) is not None
    if isinstance(layer, torch.nn.Linear):
        return library.dense(input_shape, layer.out_features, bias=has_bias), weights
    if isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d)):
        if layer.padding_mode != "zeros":
            raise ValueError(f"padding_mode={layer.padding_mode!r} is not supported (only zero padding)")
        nsp = 1 if isinstance(layer, torch.nn.Conv1d) else 2
        if layer.padding == "valid":
            padding: int | Sequence[int] = 0
        elif layer.padding == "same":
            # torch puts the odd element of 'same' padding after the data.
            total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
            padding = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            padding = tuple(layer.padding)
        conv = library.conv1d if nsp == 1 else library.conv2d
        kernel = layer.kernel_size[0] if nsp == 1 else layer.kernel_size
        stride = layer.stride[0] if nsp == 1 else layer.stride
        dilation = layer.dilation[0] if nsp == 1 else layer.dilation
        program = conv(input_shape, layer.out_channels, kernel, stride=stride, padding=padding,
                       dilation=dilation, groups=layer.groups, bias=has_bias)
        return program, weights
    raise ValueError(f"no program for layer type {type(layer).__name__}; supported: Conv1d, Conv2d, Linear")
