"""Fitting replacement weights: capturing activations and layer-wise distillation.

    from gos_tvm.fit import capture, layer_program, fit
    x, y = capture(model, "features.3", images)           # what the layer sees and produces
    program, weights = layer_program(model.features[3], (1, *x.shape[1:]))
    result = fit(candidate, x, y, original_weights=weights)
    result.rel_error, result.heldout_rel_error

End to end (all replacements of a configuration together, against the original model)::

    from gos_tvm.fit import distill, substitute_distilled
    result = distill(model, {"conv2": (program, weights)}, x_calib, steps=300)   # or (mod, params)
    mod2, params2 = substitute_distilled(mod, params, result)

Modules: `activations` (forward hooks, torch layer -> program), `batched` (running a
program over a data set), `lstsq` (least squares for the final pointwise map), `fit`
(closed-form init, least squares, Adam), `distill` (end-to-end knowledge distillation).
"""
from .activations import capture, layer_program
from .batched import evaluate, rel_error
from .distill import (DistillResult, DistillUnavailableError, distill, distill_loss, substitute_distilled,
                      trainable_model)
from .fit import FitResult, fit
from .lstsq import output_linear, refit_output_linear

__all__ = ["fit", "FitResult", "capture", "layer_program", "evaluate", "rel_error", "refit_output_linear",
           "output_linear", "distill", "DistillResult", "DistillUnavailableError", "trainable_model",
           "substitute_distilled", "distill_loss"]
