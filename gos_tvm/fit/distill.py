"""End-to-end distillation of an adapted model against the original.

Layer-wise fitting (`gos_tvm.fit.fit`) makes each replacement reproduce its own site,
but errors add up over several replaced sites.  `distill` fine-tunes all replacements
of a configuration together so that the *model's* outputs match the original's
(knowledge distillation: the original model's outputs on the calibration inputs are the
targets, so no labels are needed)::

    from gos_tvm.fit import distill, substitute_distilled

    result = distill(model, {"conv2": (program, weights), "conv3": (...)}, x_calib,
                     steps=300, task="classification", checkpoint_dir="work/distill")
    result.error_before, result.error_after          # held-out output error vs the original
    mod2, params2 = substitute_distilled(mod, params, result)   # back into the Relax module

The trainable form (`trainable_model`) is a copy of the original torch module with
each replaced site's submodule swapped for the replacement program's `to_torch` module:
site ids of a model imported with `gos_tvm.from_torch` are the qualified names of the
torch modules that own the sites' weights, and a site program computes that module's
call (bias included) in the same layouts, so the trainable form computes what
`graph.substitute` builds.  Only the replacements' weights are trained; the rest of the
model is frozen and stays in eval mode (BatchNorm uses its running statistics, as the
imported Relax module does).  A model without a torch module (imported from ONNX) is
given as its ``(mod, params)`` and trained in the form `gos_tvm.graph.torch_form.RelaxTorch`
builds: the Relax graph run with PyTorch operators, the replaced sites swapped likewise.

Determinism and resume: the held-out split and the order of the mini-batches are
functions of the seed and the step (epoch ``e`` uses the permutation of
``default_rng([seed, e])``), the step size is a function of the step (warm-up, cosine) and of
the evaluations so far (each one not yet better than the start halves it, see `distill`), and a
checkpoint (weights, Adam's state, early-stopping state) is written atomically at every
evaluation, so a killed run that is restarted with the same arguments continues from
its last checkpoint and ends with the weights of an uninterrupted run.  Checkpoints are
named by a fingerprint of everything that determines the result, so one directory can
hold the runs of many configurations, and a finished run is returned without training.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..instructions import OpProgram, to_torch
from .fit import _split  # the same seeded held-out split as layer-wise fitting

Replacement = tuple[OpProgram, Mapping[str, Any]]
TASKS = ("classification", "regression")


class DistillUnavailableError(TypeError):
    """The original was given in a form that cannot be trained (e.g. an ONNX file or proto:
    pass the imported ``(mod, params)`` instead)."""


@dataclass
class DistillResult:
    """Distilled weights of a configuration and how close the adapted model came to the original.

    Attributes:
        programs: the replacement program of each site (as given).
        weights: the distilled weights of each site (numpy float32, by weight name): those of
            the step with the lowest held-out loss (the last step without a held-out part).
        error_before / error_after: `output_error` of the adapted model against the original
            (relative error of the class probabilities, or of the outputs for regression) over
            the held-out inputs (all inputs without a held-out part), with the starting weights
            and with the distilled weights.
        loss_before / loss_after: the distillation loss on the same inputs.
        history: training loss of every step (all steps, also those before a resume).
        evaluations: (step, held-out loss, held-out output error) at every evaluation.
        steps: Adam steps run (fewer than asked when early stopping ended the run).
        best_step: the step whose weights were kept (0: the starting weights).
        restarts: the steps at which an evaluation was still not better than the starting
            weights, so training went back to them with half the step size.
        stopped_early: whether early stopping ended the run.
        resumed_from: the step of the checkpoint this call continued from (None: fresh start).
        checkpoint: the checkpoint file (None without a checkpoint directory).
        seconds: wall time of this call.
    """

    programs: dict[str, OpProgram] = field(repr=False)
    weights: dict[str, dict[str, np.ndarray]] = field(repr=False)
    error_before: float
    error_after: float
    loss_before: float
    loss_after: float
    history: list[float] = field(repr=False)
    evaluations: list[tuple[int, float, float]] = field(repr=False)
    steps: int
    best_step: int
    stopped_early: bool
    restarts: list[int]
    resumed_from: int | None
    checkpoint: Path | None
    seconds: float

    @property
    def replacements(self) -> dict[str, tuple[OpProgram, dict[str, np.ndarray]]]:
        """``{site id: (program, distilled weights)}``, what `graph.substitute` takes."""
        return {s: (self.programs[s], self.weights[s]) for s in self.programs}


class SiteModule(torch.nn.Module):
    """A replacement program's torch module on any multiple of the program's batch size.

    Programs have static shapes (the imported model's batch, usually 1); a batch of
    ``B`` samples is viewed as ``B / b`` chunks of the program's shape and the program is
    mapped over them with `torch.func.vmap` (one vectorised call, gradients included).
    """

    def __init__(self, site_id: str, program: OpProgram, weights: Mapping[str, Any]):
        super().__init__()
        if len(program.inputs) != 1:
            raise ValueError(f"replacement '{program.name}' for site '{site_id}' takes {len(program.inputs)} "
                             "inputs; a site replacement takes exactly one")
        self.site_id = site_id
        self.module = to_torch(program, {k: _numpy(v) for k, v in weights.items()})
        (self.in_shape,) = (tuple(s) for s in program.inputs.values())
        self.out_shape = tuple(program.output_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.in_shape[0]
        if tuple(x.shape[1:]) != self.in_shape[1:] or x.shape[0] % b:
            dims = ", ".join(map(str, self.in_shape[1:]))
            raise ValueError(f"site '{self.site_id}': its replacement takes (B, {dims}) with B a multiple of {b}, "
                             f"got {tuple(x.shape)}")
        y = torch.func.vmap(self.module)(x.reshape(x.shape[0] // b, *self.in_shape))
        return y.reshape(x.shape[0] // b * self.out_shape[0], *self.out_shape[1:])

    def weight_arrays(self) -> dict[str, np.ndarray]:
        return self.module.weight_arrays()


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=np.float32))


def _is_relax_model(original: Any) -> bool:
    return (isinstance(original, tuple) and len(original) == 2 and type(original[0]).__name__ == "IRModule"
            and isinstance(original[1], Mapping))


def _check_original(original: Any) -> None:
    if isinstance(original, torch.nn.Module) or _is_relax_model(original):
        return
    kind = type(original)
    hint = ("an ONNX model" if "onnx" in kind.__module__ or str(original).endswith(".onnx")
            else "a Relax module without its params" if kind.__module__.startswith("tvm") else f"a {kind.__name__}")
    raise DistillUnavailableError(
        f"distillation needs a trainable form of the original model, and got {hint}: pass the torch.nn.Module the "
        "model was imported from, or the imported (mod, params) (gos_tvm.from_onnx / from_torch), which is run "
        "with PyTorch operators (gos_tvm.graph.torch_form). Where neither is possible, keep the layer-wise fitted "
        "weights (gos_tvm.fit.fit; in the search, distill=False).")


def _check_site_id(model: torch.nn.Module, site_id: str) -> None:
    if "#" in site_id or "@" in site_id:
        raise KeyError(f"site '{site_id}' has no torch submodule of its own ('#n': a module called several times, "
                       "'kind@var': a constant weight), so it cannot be swapped in the trainable form; "
                       "keep its layer-wise fitted weights (leave it out of the distilled replacements)")
    try:
        model.get_submodule(site_id)
    except AttributeError as err:
        raise KeyError(f"site '{site_id}' is not a submodule of {type(model).__name__}: site ids of a model "
                       "imported with gos_tvm.from_torch are the qualified names of its modules "
                       f"(e.g. {[n for n, _ in model.named_modules() if n][:4]})") from err


def trainable_model(original: torch.nn.Module | tuple[Any, Mapping[str, np.ndarray]],
                    replacements: Mapping[str, Replacement]) -> torch.nn.Module:
    """The adapted model in trainable form: the torch counterpart of
    ``graph.substitute(mod, params, replacements)``, whose only trainable parameters are the
    replacements' weights (`SiteModule`s), everything else frozen and in eval mode.

    ``original`` is the torch module the model was imported from (a copy of it, BatchNorm folded
    as `from_torch` does, with the submodule of each site id swapped), or the imported ``(mod, params)`` (run with PyTorch
    operators by `gos_tvm.graph.torch_form.RelaxTorch`; for models from ONNX).

    Raises:
        DistillUnavailableError: ``original`` is neither.
        KeyError: a site id that the model does not have.
        gos_tvm.graph.UnsupportedModelError: a Relax operator without a torch translation.
    """
    _check_original(original)
    if _is_relax_model(original):
        from ..graph.torch_form import RelaxTorch

        mod, params = original
        model = RelaxTorch(mod, params, {s: SiteModule(s, p, w) for s, (p, w) in replacements.items()})
        return model.eval()
    for site_id in replacements:
        _check_site_id(original, site_id)
    # BatchNorm folded into the layer before it, as `from_torch` imports the model: a site's program
    # computes the folded layer, so it must replace the folded layer, not the one BatchNorm follows.
    from ..graph.fold import fold_batchnorm

    model, _ = fold_batchnorm(original)
    model = (copy.deepcopy(original) if model is original else model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for site_id, (program, weights) in replacements.items():
        parent_name, _, child = site_id.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SiteModule(site_id, program, weights))
    return model


def _site_modules(model: torch.nn.Module) -> dict[str, SiteModule]:
    return {m.site_id: m for m in model.modules() if isinstance(m, SiteModule)}


def _forward(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    outs = [model(x[i:i + batch]) for i in range(0, x.shape[0], batch)]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise TypeError(f"distillation needs a model with one tensor output; {type(model).__name__} returned "
                        f"{type(outs[0]).__name__}")
    return torch.cat(outs)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float,
                 scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """The distillation loss of ``student`` outputs against ``teacher`` outputs.

    classification: Hinton's ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over
    axis 1 (the logits), averaged over the rest; regression: the mean squared error divided
    by ``scale`` (the teacher outputs' mean square, so that one step size suits any unit).
    """
    if task == "classification":
        t = torch.log_softmax(teacher / temperature, dim=1)
        s = torch.log_softmax(student / temperature, dim=1)
        kl = (t.exp() * (t - s)).sum(dim=1)
        return kl.mean() * temperature ** 2
    return (student - teacher).pow(2).mean() / scale


def output_error(student: torch.Tensor, teacher: torch.Tensor, task: str) -> float:
    """How far ``student`` outputs are from ``teacher`` outputs: ||s - t|| / ||t|| of the class
    probabilities (softmax over axis 1) for classification, of the outputs for regression.

    Probabilities rather than logits: a classifier's logits are defined up to a per-sample
    shift, which neither the prediction nor the KL loss sees."""
    a, b = student.double(), teacher.double()
    if task == "classification":
        a, b = torch.softmax(a, dim=1), torch.softmax(b, dim=1)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def _step_size(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 5% of the steps, then a cosine decay to 1% of ``lr``.

    The warm-up matters here: the starting weights are already fitted, and Adam's first
    steps at full size (its update is ~lr per weight whatever the gradient) knock them
    far enough that early stopping can end the run before it recovers."""
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(steps - warm, 1)
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def _batch_indices(step: int, n_train: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of step ``step``'s mini-batch: a function of (seed, step) only, so resume is exact."""
    per_epoch = max(1, n_train // batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return order[k * batch_size:(k + 1) * batch_size]


def _hash_original(h: Any, original: Any) -> None:
    if _is_relax_model(original):
        mod, params = original
        h.update(mod.script(show_meta=False).encode())  # TVM 0.27 has no tvm.ir.structural_hash
        state = {k: torch.from_numpy(np.asarray(v)) for k, v in sorted(params.items())}
    else:
        state = original.state_dict()
    for name, value in state.items():
        h.update(name.encode())
        h.update(_numpy(value).tobytes() if value.is_floating_point() else value.cpu().numpy().tobytes())


def _hash_inputs(h: Any, x: np.ndarray) -> None:
    h.update(repr(x.shape).encode())
    h.update(np.ascontiguousarray(x).tobytes())


def _fingerprint(original: Any, replacements: Mapping[str, Replacement], x: np.ndarray,
                 settings: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(repr(sorted(settings.items())).encode())
    _hash_original(h, original)
    for site_id in sorted(replacements):
        program, weights = replacements[site_id]
        h.update(f"{site_id}:{program.structural_hash}".encode())
        for name in sorted(weights):
            h.update(name.encode())
            h.update(_numpy(weights[name]).tobytes())
    _hash_inputs(h, x)
    return h.hexdigest()


#: The original model's outputs on the last inputs it was asked for, keyed by a hash of both: the
#: search distils one configuration after another on the same inputs (each per-site recovery, then
#: the final distillation, then the next round's), and the frozen original's outputs on tens of
#: thousands of images cost it seconds per call.  One entry, so memory stays one output array.
_TEACHER_OUTPUTS: dict[str, torch.Tensor] = {}


def _teacher_outputs(original: Any, x: torch.Tensor, x_all: np.ndarray) -> torch.Tensor:
    """The frozen original's outputs on `x` (= `x_all`), from `_TEACHER_OUTPUTS` when it holds them."""
    h = hashlib.sha256()
    _hash_original(h, original)
    _hash_inputs(h, x_all)
    key = h.hexdigest()
    if key not in _TEACHER_OUTPUTS:
        teacher = trainable_model(original, {}) if _is_relax_model(original) else copy.deepcopy(original).eval()
        with torch.no_grad():
            y = _forward(teacher, x)
        _TEACHER_OUTPUTS.clear()
        _TEACHER_OUTPUTS[key] = y
    return _TEACHER_OUTPUTS[key]


def _save(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a killed write leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def distill(original: torch.nn.Module | tuple[Any, Mapping[str, np.ndarray]], replacements: Mapping[str, Replacement],
            calib_x: np.ndarray, *,
            steps: int = 300, batch_size: int = 32, lr: float = 1e-2, temperature: float = 4.0,
            task: str = "classification", holdout: float = 0.2, eval_every: int | None = None,
            patience: int | None = 5, seed: int = 0, checkpoint_dir: str | os.PathLike | None = None,
            progress: bool = True, on_checkpoint: Callable[[int], None] | None = None) -> DistillResult:
    """Fine-tune the replacements of one configuration end to end against the original model.

    Args:
        original: the trained torch model the Relax module was imported from (`from_torch`), or
            the imported ``(mod, params)`` itself (e.g. from `from_onnx`; see `trainable_model`).
        replacements: ``{site id: (program, weights)}``, the starting weights (layer-wise fitted).
        calib_x: model inputs (N, ...) (no labels: the original's outputs are the targets).
        steps: most Adam steps (early stopping may end sooner).
        batch_size: samples per step (a multiple of the programs' batch, usually 1).
        lr: Adam's largest step size: reached after a linear warm-up over the first 5% of the
            steps, then decayed along a cosine to 1% of it at ``steps``.  Until an evaluation's
            held-out loss is below the starting weights', each one that is not halves the step
            size for the rest of the run and sends training back to the starting weights (Adam's
            moments reset): weights that are already distilled sit closer to a minimum than ``lr``
            can resolve, and Adam's first steps at full size (~lr per weight) undid them without
            recovering within the run (vgg-style on Fashion-MNIST: a 1,500-step distillation from
            60-step-distilled weights ended at its starting weights after 375 steps).
        temperature: softens both distributions of the KL loss (classification only).
        task: 'classification' (KL on logits) or 'regression' (MSE on the outputs).
        holdout: fraction of ``calib_x`` held out for early stopping and the reported errors.
        eval_every: steps between evaluations on the held-out part and checkpoints
            (default: ``steps // 20``, at least 1).
        patience: stop after this many evaluations without a lower held-out loss (None: never).
        seed: seeds the split and the mini-batch order (the result is a function of the arguments).
        checkpoint_dir: where checkpoints are written; a rerun with the same arguments resumes
            (or, when the run had finished, returns its result without training).
        progress: show a tqdm bar.
        on_checkpoint: called with the step after each checkpoint is written.

    Returns:
        A `DistillResult`; `DistillResult.replacements` goes to `substitute_distilled` /
        `graph.substitute`.

    Raises:
        DistillUnavailableError: ``original`` is neither a torch module nor ``(mod, params)``.
        KeyError: a site id that the model does not have.
        gos_tvm.graph.UnsupportedModelError: ``(mod, params)`` uses a Relax operator that has no
            torch translation (`gos_tvm.graph.torch_form`).
        ValueError: bad settings or data.
    """
    start = time.perf_counter()
    _check_original(original)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if steps < 0 or batch_size < 1 or not 0 <= holdout < 1 or lr <= 0 or temperature <= 0:
        raise ValueError(f"need steps >= 0, batch_size >= 1, 0 <= holdout < 1, lr > 0 and temperature > 0; got "
                         f"steps={steps}, batch_size={batch_size}, holdout={holdout}, lr={lr}, "
                         f"temperature={temperature}")
    if not replacements:
        raise ValueError("nothing to distil: replacements is empty")
    x_all = np.ascontiguousarray(np.asarray(calib_x, dtype=np.float32))
    if x_all.ndim < 2 or len(x_all) < 2:
        raise ValueError(f"calib_x must be a batch of model inputs (N, ...) with N >= 2, got shape {x_all.shape}")
    eval_every = max(1, steps // 20) if eval_every is None else int(eval_every)
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")

    student = trainable_model(original, replacements)
    sites = _site_modules(student)
    params = [p for s in sites.values() for p in s.parameters()]
    x = torch.from_numpy(x_all)
    y = _teacher_outputs(original, x, x_all)
    train, held = _split(len(x), holdout, seed)
    x_tr, y_tr = x[train], y[train]
    x_ev, y_ev = (x[held], y[held]) if len(held) else (x_tr, y_tr)
    bs = min(batch_size, len(train))
    scale = y_tr.pow(2).mean().clamp_min(1e-30)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            out = _forward(student, x_ev)
            return float(distill_loss(out, y_ev, task, temperature, scale)), output_error(out, y_ev, task)

    def weights_now() -> dict[str, dict[str, np.ndarray]]:
        return {s: m.weight_arrays() for s, m in sites.items()}

    def load(weights: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        with torch.no_grad():
            for s, m in sites.items():
                for name, p in m.module.weights.items():
                    p.copy_(torch.from_numpy(np.asarray(weights[s][name])))

    opt = torch.optim.Adam(params, lr=lr)
    settings = {"steps": steps, "batch_size": bs, "lr": lr, "temperature": temperature, "task": task,
                "holdout": holdout, "eval_every": eval_every, "patience": patience, "seed": seed,
                "backtrack": True}
    path = None
    state: dict[str, Any] | None = None
    resumed_from = None
    if checkpoint_dir is not None:
        tag = _fingerprint(original, replacements, x_all, settings)
        path = Path(checkpoint_dir) / f"distill-{tag[:16]}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            state = torch.load(path, weights_only=False)
            if state.get("fingerprint") != tag:  # a 64-bit prefix collision, or a foreign file
                raise ValueError(f"checkpoint {path} belongs to another distillation run; give another "
                                 "checkpoint_dir (it is left as it is)")
            resumed_from = state["step"]

    if state is None:
        loss0, err0 = evaluate()
        state = {"step": 0, "history": [], "evaluations": [(0, loss0, err0)], "before": (loss0, err0),
                 "best": (loss0, err0, 0, weights_now()), "bad_evals": 0, "stopped_early": False,
                 "lr_scale": 1.0, "restarts": [],
                 "finished": steps == 0}
    else:
        load(state["weights"])
        opt.load_state_dict(state["optimizer"])

    def checkpoint() -> None:
        if path is None:
            return
        _save(path, {**state, "fingerprint": tag, "weights": weights_now(), "optimizer": opt.state_dict()})
        if on_checkpoint is not None:
            on_checkpoint(state["step"])

    bar = None
    if progress and not state["finished"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=state["step"], desc="distill", unit="step")
    try:
        while not state["finished"]:
            step = state["step"]
            for group in opt.param_groups:  # a function of the step, so resume is exact
                group["lr"] = _step_size(step, steps, lr) * state["lr_scale"]
            idx = torch.from_numpy(_batch_indices(step, len(train), bs, seed))
            loss = distill_loss(student(x_tr[idx]), y_tr[idx], task, temperature, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["history"].append(loss.item())
            state["step"] = step + 1
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{state['history'][-1]:.4g}")
            if state["step"] % eval_every == 0 or state["step"] == steps:
                held_loss, held_err = evaluate()
                state["evaluations"].append((state["step"], held_loss, held_err))
                if held_loss < state["best"][0]:
                    state["best"] = (held_loss, held_err, state["step"], weights_now())
                    state["bad_evals"] = 0
                else:
                    state["bad_evals"] += 1
                    if state["best"][2] == 0:  # not below the start yet: the step is too large for it
                        state["lr_scale"] *= 0.5
                        state["restarts"].append(state["step"])
                        load(state["best"][3])
                        opt.state.clear()
                if patience is not None and state["bad_evals"] >= patience:
                    state["stopped_early"] = True
                state["finished"] = state["stopped_early"] or state["step"] >= steps
                checkpoint()
    finally:
        if bar is not None:
            bar.close()
    if path is not None and resumed_from is None and state["step"] == 0:
        checkpoint()  # steps=0: record the (trivial) result too

    best_loss, best_err, best_step, best_weights = state["best"]
    return DistillResult(
        programs={s: p for s, (p, _) in replacements.items()}, weights=best_weights,
        error_before=state["before"][1], error_after=best_err, loss_before=state["before"][0],
        loss_after=best_loss, history=list(state["history"]), evaluations=list(state["evaluations"]),
        steps=state["step"], best_step=best_step, stopped_early=state["stopped_early"],
        restarts=list(state["restarts"]),
        resumed_from=resumed_from, checkpoint=path, seconds=time.perf_counter() - start)


def substitute_distilled(mod: Any, params: Mapping[str, np.ndarray],
                         result: DistillResult) -> tuple[Any, dict[str, np.ndarray]]:
    """The Relax ``(mod, params)`` of the original with every site of ``result`` replaced by its
    program with the distilled weights (`graph.substitute`; pass the *original* module)."""
    from ..graph import substitute

    return substitute(mod, params, result.replacements)


__all__ = ["distill", "DistillResult", "DistillUnavailableError", "trainable_model", "substitute_distilled",
           "distill_loss", "output_error", "SiteModule", "TASKS"]
