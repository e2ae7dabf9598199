"""Inference-time constant algebra on the torch model before import: BatchNorm folded into the
convolution (or linear layer) that feeds it.

Why here and not in Relax: a BatchNorm left in the graph is its own MetaSchedule task
(``fused_batch_norm*_relu*``), an extra pass over every activation that onnxruntime and every
other inference runtime remove, so the tuned TVM model would lose to them before GOS starts; and
a convolution site's program should be the operator the device actually runs (conv + folded
bias), so that its replacement is fitted to, and compared with, that.  Folding the torch module
(not only the Relax graph) keeps the two in step: the trainable form used for distillation is the
folded module, with the same parameter names as the Relax module.
"""
from __future__ import annotations

import warnings
from typing import Any


def fold_batchnorm(model: Any) -> tuple[Any, list[str]]:
    """A copy of `model` (eval mode) with every BatchNorm that directly follows a Conv1d/2d/3d or
    Linear (and has running statistics) folded into that layer's weight and bias.

    Returns ``(folded, folded_bn_names)``.  The layers keep their module paths (state-dict keys
    such as ``layer1.0.conv1.weight``; a conv without bias gains ``layer1.0.conv1.bias``).  Uses
    torch.fx (`torch.fx.experimental.optimization.fuse`); a model that torch.fx cannot trace is
    returned unchanged with a warning, and its BatchNorms stay in the graph.
    """
    import torch
    from torch.fx.experimental.optimization import fuse

    bn_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    before = {name for name, m in model.named_modules() if isinstance(m, bn_types)}
    if not before:
        return model, []
    was_training = model.training
    model.eval()
    try:
        folded = fuse(model, inplace=False)
    except Exception as err:  # torch.fx raises many types on untraceable Python control flow
        warnings.warn(f"BatchNorm not folded: torch.fx cannot trace {type(model).__name__} "
                      f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                      "its BatchNorms stay separate kernels", stacklevel=2)
        return model, []
    finally:
        model.train(was_training)
    # fuse() keeps a BatchNorm whose input feeds other nodes too, or one after another op; the
    # GraphModule holds only the modules its graph still calls.
    remaining = {name for name, m in folded.named_modules() if isinstance(m, bn_types)}
    return folded.eval(), sorted(before - remaining)
