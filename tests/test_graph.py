"""gos_tvm.graph: import, op sites, substitution, capture, compilation and .so export."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tvm
from tvm import relax

from gos_tvm.graph.layout import conv_layout, current_conv_layout
from gos_tvm.instructions.stages import stages
from gos_tvm.graph import (EM_AARCH64, EM_ARM, UnsupportedModelError, analyze, apply_database, as_target, capture,
                           capture_torch, compile_module, fold_batchnorm, elf_machine, elf_type, export_library, find_sites,
                           find_skipped, from_onnx, from_torch, legalize, load_vm, run, split_samples, substitute,
                           torch_reference)
from gos_tvm.instructions import OpProgram, ProgramBuilder, library
from gos_tvm.models import BasicBlock, InvertedResidual

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}
ARMV7 = "arm/rasp3b"  # armv7l-linux-gnueabihf, NEON


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(got) - np.asarray(ref)) / max(np.linalg.norm(ref), 1e-30))


# --- models (blocks from gos_tvm.models, small stacks of them here) ---------------------------


class ResNetStyle(nn.Module):
    """Stem, an identity block, a strided block with a 1x1 downsample, pooling, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MobileNetStyle(nn.Module):
    """Strided stem, two inverted residual blocks, a dilated depthwise conv with channel
    multiplier 2 and bias, a 1x1 head and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()),
            InvertedResidual(8, 8, 1, 2),
            InvertedResidual(8, 12, 2, 2),
            nn.Conv2d(12, 24, 3, 1, 2, dilation=2, groups=12),
            nn.ReLU6(),
            nn.Conv2d(24, 32, 1),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class SeqNet(nn.Module):
    """conv1d and a dense layer on a 3-d input (batch, length, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.proj = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.conv(x)).transpose(1, 2))


def prepared(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval-mode model with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


MODELS = {
    "resnet": (ResNetStyle, (1, 3, 16, 16)),
    "mobilenet": (MobileNetStyle, (1, 3, 32, 32)),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def imported(request):
    cls, shape = MODELS[request.param]
    model = prepared(cls())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mod, params = from_torch(model, x)
    return request.param, model, x, mod, params


def conv_layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


# --- replacement programs built with the IR -------------------------------------------------


def rand_weights(program: OpProgram, seed: int, scale: float = 0.3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in program.weights.items()}


def separable_program(site) -> OpProgram:
    """Depthwise (site's kernel, stride, padding, dilation) then pointwise with bias: a
    depthwise-separable replacement for a full conv2d site."""
    n, c, _, _ = site.input_shape
    o = site.output_shape[1]
    a = site.attrs
    top, left, bottom, right = a["padding"]
    b = ProgramBuilder("separable")
    x = b.input("x", site.input_shape)
    dw = b.weight("dw", (c, *a["kernel_size"]))
    pw = b.weight("pw", (o, c))
    bias = b.weight("bias", (o,))
    if any(a["padding"]):
        x = b.pad(x, pads=((0, 0), (0, 0), (top, bottom), (left, right)))
    win = b.window(x, axes=(2, 3), kernel=a["kernel_size"], stride=a["stride"], dilation=a["dilation"])
    y = b.contract(win, dw, spec="nchwij,cij->nchw")
    y = b.contract(y, pw, spec="nchw,oc->nohw")
    y = b.add(y, b.reshape(bias, shape=(1, o, 1, 1)))
    return b.build(y)


def low_rank_dense(site, rank: int) -> OpProgram:
    """x (..., K) -> x U^T (..., r) -> V (..., O) + bias."""
    shape = site.input_shape
    k, o = shape[-1], site.output_shape[-1]
    lead = "abcdeg"[:len(shape) - 1]
    b = ProgramBuilder("low_rank_dense")
    x = b.input("x", shape)
    u = b.weight("u", (rank, k))
    v = b.weight("v", (o, rank))
    y = b.contract(x, u, spec=f"{lead}k,rk->{lead}r")
    y = b.contract(y, v, spec=f"{lead}r,or->{lead}o")
    y = b.add(y, b.weight("bias", (o,)))
    return b.build(y)


def replacement_for(site, seed: int) -> tuple[OpProgram, dict[str, np.ndarray]]:
    a = site.attrs
    if site.kind == "conv2d" and a["groups"] == 1:
        program = separable_program(site)
    elif site.kind == "depthwise":  # a grouped conv2d program (different lowering), new weights
        program = library.conv2d(site.input_shape, site.output_shape[1], a["kernel_size"], a["stride"],
                                 a["padding"], a["dilation"], a["groups"], bias=True)
    elif site.kind == "pointwise":
        program = library.pointwise_conv2d(site.input_shape, site.output_shape[1], bias=False)
    elif site.kind == "conv1d":
        program = library.conv1d(site.input_shape, site.output_shape[1], a["kernel_size"][0], a["stride"][0],
                                 a["padding"], a["dilation"][0], a["groups"], bias=True)
    elif site.kind == "dense":
        program = low_rank_dense(site, rank=3)
    else:
        raise AssertionError(site)
    return program, rand_weights(program, seed)


# --- import and sites -----------------------------------------------------------------------


def test_import_names_params_by_state_dict(imported):
    name, model, x, mod, params = imported
    folded, _ = fold_batchnorm(model)           # from_torch imports the model with BatchNorm folded
    trained = dict(folded.named_parameters())
    assert set(params) == set(trained)
    for k, v in params.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, trained[k].detach().numpy())
    assert [p.name for p in mod["main"].params][1:] == list(params)
    assert int(mod["main"].attrs["num_input"]) == 1


def test_sites_are_the_torch_layers(imported):
    name, model, x, mod, params = imported
    sites = find_sites(mod, params)
    assert [s.id for s in sites] == conv_layer_names(model)
    assert find_skipped(mod, params) == []
    kinds = {s.id: s.kind for s in sites}
    if name == "resnet":
        assert kinds == {"conv1": "conv2d", "layer1.0.conv1": "conv2d", "layer1.0.conv2": "conv2d",
                         "layer2.0.conv1": "conv2d", "layer2.0.conv2": "conv2d",
                         "layer2.0.short.0": "conv2d", "fc": "dense"}
    else:
        assert kinds["features.1.body.0"] == "pointwise"
        assert kinds["features.1.body.3"] == "depthwise"
        assert kinds["features.3"] == "depthwise" and sites[[s.id for s in sites].index("features.3")].bias
        assert kinds["features.5"] == "pointwise"
        assert kinds["classifier"] == "dense"
    # Each site's program with its weights computes what the torch layer computes.
    acts = capture_torch(model, x, [s.id for s in sites])
    folded, _ = fold_batchnorm(model)           # the layers as imported, BatchNorm folded in
    for s in sites:
        layer = folded.get_submodule(s.id)
        assert s.bias == (layer.bias is not None)
        np.testing.assert_array_equal(s.weights["weight"], layer.weight.detach().numpy())
        xin, yout = acts[s.id]
        assert xin.shape == s.input_shape and yout.shape == s.output_shape
        got = torch_reference(nn.Sequential(layer), {"0": (s.program, s.weights)})(torch.from_numpy(xin))
        assert rel_err(got.detach().numpy(), yout) < 1e-5, s.id


def test_compiled_module_matches_torch(imported):
    name, model, x, mod, params = imported
    ex = compile_module(mod, params)
    (out,) = run(ex, x)
    ref = model(x).detach().numpy()
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-4


def _param_shapes(lowered) -> set[tuple[int, ...]]:
    """Shapes of the tensors `main` of a legalized module passes between its kernels."""
    shapes = set()

    def visit(expr) -> None:
        ty = getattr(expr, "ty", None)
        if isinstance(ty, relax.TensorType) and ty.shape is not None:
            shapes.add(tuple(int(d) for d in ty.shape.values))

    relax.analysis.post_order_visit(lowered["main"], visit)
    return shapes


def test_convolutions_compile_channels_last_on_request(imported):
    """Convolutions are compiled NCHW by default and NHWC inside `conv_layout("NHWC")`; same function."""
    name, model, x, mod, params = imported
    n, c, h, w = x.shape
    assert current_conv_layout() == "NCHW"
    assert (n, h, w, c) not in _param_shapes(legalize(mod, params))
    (nchw,) = run(compile_module(mod, params), x)
    with conv_layout("NHWC"):
        assert (n, h, w, c) in _param_shapes(legalize(mod, params))
        (nhwc,) = run(compile_module(mod, params), x)
    assert rel_err(nhwc, nchw) < 1e-5
    assert rel_err(nhwc, model(x).detach().numpy()) < 1e-4
    with pytest.raises(ValueError, match="NCHWc.*choose one of"):
        with conv_layout("NCHWc"):
            pass
    assert current_conv_layout() == "NCHW"


def test_narrow_convolutions_compute_nchw_inside_an_nhwc_model():
    """Under "NHWC-narrow" a convolution with fewer output channels than the target's float32 lanes
    is a kernel that computes NCHW between NHWC buffers, the others stay NHWC, no transpose kernel
    is added, and the model computes what PyTorch does."""
    from gos_tvm.graph.layout import float32_lanes

    assert float32_lanes(as_target(AARCH64)) == 4  # NEON: 128-bit
    assert float32_lanes(as_target({"kind": "llvm", "mcpu": "skylake-avx512"})) == 16
    assert float32_lanes(as_target({"kind": "llvm", "mcpu": "haswell"})) == 8
    assert float32_lanes(as_target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"})) == 4
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1),  # a rank-2 bottleneck
                          nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 16, 1), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mod, params = from_torch(model, x)

    def kernels(lowered) -> dict[str, str]:
        return {gv.name_hint: str(f) for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}

    with conv_layout("NHWC"):
        nhwc = kernels(legalize(mod, params))
    with conv_layout("NHWC-narrow"):
        narrow = kernels(legalize(mod, params))
        (out,) = run(compile_module(mod, params), x)
    via_nchw = sorted(n for n, f in narrow.items() if "conv2d_nchw" in f)
    assert len(via_nchw) == 2 and all("nhwc_via_nchw" in n for n in via_nchw), sorted(narrow)
    assert len([n for n, f in narrow.items() if "conv2d_nhwc" in f and "via_nchw" not in n]) == 2, sorted(narrow)
    assert sum("transpose" in n for n in narrow) == sum("transpose" in n for n in nhwc), (sorted(narrow), sorted(nhwc))
    assert rel_err(out, model(x).detach().numpy()) < 1e-4


@pytest.mark.parametrize("relax_operators", [True, False], ids=["relax-ops", "tir-kernels"])
def test_a_replacement_runs_channels_last_without_transposes(relax_operators):
    """A replacement between NHWC convolutions runs NHWC: written as Relax convolutions, the layout
    pass converts them like the model's own; as TensorIR kernels, each reads and writes NHWC itself.
    No transpose kernel appears around it, and its residual add and ReLU fuse into it."""
    from tvm.s_tir import meta_schedule as ms

    cls, shape = MODELS["resnet"]
    model = prepared(cls())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mod, params = from_torch(model, x)
    site = {s.id: s for s in find_sites(mod, params)}["layer1.0.conv2"]
    new_mod, new_params = substitute(mod, params, {site.id: replacement_for(site, seed=0)},
                                     relax_operators=relax_operators)
    target = as_target(None)

    def tasks(m, p) -> list:
        return ms.relax_integration.extract_tasks(legalize(m, p, target), target)

    with conv_layout("NHWC"):
        original_tasks, adapted_tasks = tasks(mod, params), tasks(new_mod, new_params)
    original, adapted = ([t.task_name for t in ts] for ts in (original_tasks, adapted_tasks))
    transposes = [n for n in adapted if "transpose" in n]
    assert len(transposes) == len([n for n in original if "transpose" in n]), adapted
    if relax_operators:  # the separable program's two convolutions, the second with the residual add and ReLU
        from gos_tvm.hw.tuning.delta import task_delta

        delta = task_delta(original_tasks, adapted_tasks)
        assert [t.task_name for t, _ in delta.removed] == ["fused_conv2d1_add_add1_relu"]
        assert sorted(t.task_name for t, _ in delta.added) == ["conv2d2", "fused_conv2d3_add_add1_relu"]
    else:
        assert any(n.startswith("fused_gos_") and n.endswith("_nhwc_add1_relu") for n in adapted), adapted
    reference = torch_reference(model, {site.id: replacement_for(site, seed=0)})(x).detach().numpy()
    with conv_layout("NHWC"):
        (out,) = run(compile_module(new_mod, new_params), x)
    assert rel_err(out, reference) < 1e-4


def test_a_replacement_before_a_pool_runs_channels_last_without_transposes():
    """A pool after a replacement kernel runs NHWC too: the transposes around it are cancelled."""
    from gos_tvm.models import DigitsCNN

    torch.manual_seed(0)
    model, x = DigitsCNN(width=8).eval(), torch.randn(1, 1, 16, 16)
    mod, params = from_torch(model, x)
    site = {s.id: s for s in find_sites(mod, params)}["conv2"]  # conv2 -> relu -> max_pool2d
    new_mod, new_params = substitute(mod, params, {site.id: replacement_for(site, seed=0)}, relax_operators=False)
    from tvm.s_tir import meta_schedule as ms

    target = as_target(None)
    with conv_layout("NHWC"):
        original, adapted = ([t.task_name for t in ms.relax_integration.extract_tasks(legalize(m, p, target), target)]
                             for m, p in ((mod, params), (new_mod, new_params)))
        (out,) = run(compile_module(new_mod, new_params), x)
    count = lambda names, word: len([n for n in names if word in n])  # noqa: E731
    assert count(adapted, "transpose") == count(original, "transpose"), adapted
    assert count(adapted, "pool") == 2, adapted
    reference = torch_reference(model, {site.id: replacement_for(site, seed=0)})(x).detach().numpy()
    assert rel_err(out, reference) < 1e-4


@pytest.mark.parametrize("relax_operators", [True, False], ids=["relax-ops", "tir-kernels"])
def test_substituted_module_matches_torch_reference(imported, relax_operators):
    name, model, x, mod, params = imported
    sites = find_sites(mod, params)
    if name == "resnet":
        chosen = ["conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.short.0", "fc"]
    else:
        chosen = ["features.0.0", "features.1.body.3", "features.2.body.0", "features.3", "classifier"]
    by_id = {s.id: s for s in sites}
    replacements = {sid: replacement_for(by_id[sid], seed=i) for i, sid in enumerate(chosen)}
    new_mod, new_params = substitute(mod, params, replacements, relax_operators=relax_operators)

    # The replaced sites are their programs now (the convolutions they write are not sites); the rest
    # is untouched.
    remaining = find_sites(new_mod, new_params)
    assert [s.id for s in remaining] == [s.id for s in sites if s.id not in chosen]
    for s in remaining:
        for k, v in s.weights.items():
            np.testing.assert_array_equal(v, by_id[s.id].weights[k])
    prim_funcs = [gv.name_hint for gv, f in new_mod.functions.items() if gv.name_hint.startswith("gos_")]
    distinct_stages = {st.structural_hash for p, _ in replacements.values() for st in stages(p)}
    if relax_operators:  # every stage here is a convolution or dense layer: Relax's own operators
        assert prim_funcs == []
        convs = sum(1 for b in new_mod["main"].body.blocks for v in b.bindings
                    if isinstance(v.value, relax.Call) and getattr(v.value.op, "name", "") == "relax.nn.conv2d")
        assert convs > sum(1 for s in sites if s.op == "relax.nn.conv2d" and s.id not in chosen)
    else:  # one PrimFunc per distinct stage of the programs (`instructions.stages`), shared between sites
        assert len(prim_funcs) == len(distinct_stages)
    for sid in chosen:
        assert f"{sid}.weight" not in new_params
        for w in replacements[sid][0].weights:
            np.testing.assert_array_equal(new_params[f"{sid}.replacement.{w}"], replacements[sid][1][w])
    # The original module is not modified.
    assert [s.id for s in find_sites(mod, params)] == [s.id for s in sites]

    reference = torch_reference(model, replacements)
    ref = reference(x).detach().numpy()
    assert rel_err(ref, model(x).detach().numpy()) > 1e-2  # the replacements do change the model
    ex = compile_module(new_mod, new_params)
    (out,) = run(ex, x)
    assert rel_err(out, ref) < 1e-4
    # The reference model runs batches (chunk by chunk through the batch-1 programs).
    batch = torch.randn((2, *x.shape[1:]), generator=torch.Generator().manual_seed(3))
    got = np.concatenate([run(ex, batch[i:i + 1])[0] for i in range(2)])
    assert rel_err(got, reference(batch).detach().numpy()) < 1e-4


def test_capture_matches_torch_hooks(imported):
    name, model, x, mod, params = imported
    ids = [s.id for s in find_sites(mod, params)][1::2]
    batch = torch.randn((3, *x.shape[1:]), generator=torch.Generator().manual_seed(5))
    acts = capture(mod, params, batch, site_ids=ids)
    ref = capture_torch(model, batch, ids)
    assert list(acts) == ids
    for sid in ids:
        for got, want in zip(acts[sid], ref[sid]):
            assert got.shape == want.shape and got.shape[0] == 3
            assert rel_err(got, want) < 1e-4, sid


def test_seq_model_conv1d_and_3d_dense():
    model = prepared(SeqNet())
    x = torch.randn(1, 4, 12)
    mod, params = from_torch(model, x)
    sites = find_sites(mod, params)
    assert [(s.id, s.kind, s.input_shape, s.output_shape) for s in sites] == [
        ("conv", "conv1d", (1, 4, 12), (1, 8, 12)), ("proj", "dense", (1, 12, 8), (1, 12, 6))]
    replacements = {s.id: replacement_for(s, seed=i) for i, s in enumerate(sites)}
    new_mod, new_params = substitute(mod, params, replacements)
    (out,) = run(compile_module(new_mod, new_params), x)
    assert rel_err(out, torch_reference(model, replacements)(x).detach().numpy()) < 1e-4


def test_capture_of_replaced_and_list_inputs():
    model = prepared(SeqNet())
    mod, params = from_torch(model, torch.randn(1, 4, 12))
    samples = [torch.randn(1, 4, 12) for _ in range(2)] + [torch.randn(2, 4, 12)]
    assert [len(s) for s in split_samples(mod, samples)] == [1, 1, 1, 1]
    acts = capture(mod, params, samples)
    ref = capture_torch(model, samples, ["conv", "proj"])
    for sid in ("conv", "proj"):
        assert acts[sid][0].shape[0] == 4
        assert rel_err(acts[sid][1], ref[sid][1]) < 1e-4
    with pytest.raises(ValueError, match="model takes"):
        split_samples(mod, np.zeros((1, 4, 13), np.float32))


# --- errors and skipped sites ---------------------------------------------------------------


class OddNet(nn.Module):
    """A transposed conv (not expressible) and a conv whose weight is computed in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.w = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(self.up(x), self.w * 2.0, padding=1)
        return self.head(y)


def test_skipped_sites_are_reported_and_left_alone():
    model = OddNet().eval()
    x = torch.randn(1, 4, 5, 5)
    mod, params = from_torch(model, x)
    analysis = analyze(mod, params)
    assert [s.id for s in analysis.sites] == ["head"]
    reasons = {s.id: s.reason for s in analysis.skipped}
    assert "transposed convolution" in reasons["up"]
    (computed,) = [r for k, r in reasons.items() if k != "up"]
    assert "computed at run time" in computed
    with pytest.raises(KeyError, match="skipped"):
        substitute(mod, params, {"up": (library.conv2d((1, 4, 5, 5), 4, 1), {})})
    with pytest.raises(KeyError, match="no site 'nope'"):
        substitute(mod, params, {"nope": (library.conv2d((1, 4, 5, 5), 4, 1), {})})
    # Substituting the one site leaves the skipped operators working.
    (site,) = analysis.sites
    program = library.conv2d(site.input_shape, 2, 1, bias=True)
    weights = rand_weights(program, 0)
    new_mod, new_params = substitute(mod, params, {"head": (program, weights)})
    (out,) = run(compile_module(new_mod, new_params), x)
    assert rel_err(out, torch_reference(model, {"head": (program, weights)})(x).detach().numpy()) < 1e-4


def test_substitute_rejects_programs_that_do_not_fit():
    model = prepared(SeqNet())
    mod, params = from_torch(model, torch.randn(1, 4, 12))
    site = find_sites(mod, params)[0]
    good = library.conv1d(site.input_shape, 8, 3, padding=1)
    with pytest.raises(ValueError, match="input shape"):
        substitute(mod, params, {"conv": (library.conv1d((1, 4, 10), 8, 3, padding=1), rand_weights(good, 0))})
    with pytest.raises(ValueError, match="produces shape"):
        bad = library.conv1d(site.input_shape, 8, 3)
        substitute(mod, params, {"conv": (bad, rand_weights(bad, 0))})
    with pytest.raises(ValueError, match="missing \\['bias'\\]"):
        substitute(mod, params, {"conv": (good, {"weight": rand_weights(good, 0)["weight"]})})
    with pytest.raises(ValueError, match="weight 'weight' has shape"):
        substitute(mod, params, {"conv": (good, {"weight": np.zeros((8, 4, 2), np.float32),
                                                 "bias": np.zeros(8, np.float32)})})


class Det(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x)


def test_unsupported_torch_model_names_the_operator():
    with pytest.raises(UnsupportedModelError, match="_linalg_det"):
        from_torch(Det(), torch.randn(1, 3, 3))


def test_unsupported_onnx_model_names_the_operator():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("FooBar", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="FooBar"):
        from_onnx(model)


# --- ONNX -----------------------------------------------------------------------------------


class OnnxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.dw(F.relu(self.conv(x))))
        return self.fc(torch.flatten(y, 1))


def test_onnx_import_sites_substitution_and_compile(tmp_path):
    import onnxruntime

    model = OnnxNet().eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "net.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    mod, params = from_onnx(path)
    sites = find_sites(mod, params)
    assert [(s.id, s.kind) for s in sites] == [("conv", "conv2d"), ("dw", "depthwise"), ("fc", "dense")]
    ref = model(x).detach().numpy()
    (out,) = run(compile_module(mod, params), x)
    assert rel_err(out, ref) < 1e-4
    (ort,) = onnxruntime.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    assert rel_err(out, ort) < 1e-4

    replacements = {s.id: replacement_for(s, seed=i) for i, s in enumerate(sites)}
    new_mod, new_params = substitute(mod, params, replacements)
    (out,) = run(compile_module(new_mod, new_params), x)
    assert rel_err(out, torch_reference(model, replacements)(x).detach().numpy()) < 1e-4
    ids = ["conv", "dw", "fc"]  # input of the model, inside, output of the model
    acts, ref = capture(mod, params, x, ids), capture_torch(model, x, ids)
    for sid in ids:
        assert rel_err(acts[sid][0], ref[sid][0]) < 1e-4 and rel_err(acts[sid][1], ref[sid][1]) < 1e-4


# --- tuning database, export ----------------------------------------------------------------


def test_compile_applies_a_metaschedule_database():
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    model = prepared(SeqNet())
    x = torch.randn(1, 4, 12)
    mod, params = from_torch(model, x)
    (site, _) = find_sites(mod, params)
    replacement = replacement_for(site, seed=0)
    new_mod, new_params = substitute(mod, params, {"conv": replacement}, relax_operators=False)
    target = as_target(None)
    lowered = legalize(new_mod, new_params, target)
    tasks = ms.relax_integration.extract_tasks(lowered, target)
    (task,) = [t for t in tasks if t.task_name.startswith("fused_gos_conv1d")]  # replacement + relu, fused
    workload = task.dispatched[0]
    sch = s_tir.Schedule(workload)
    sch.parallel(sch.get_loops(sch.get_sblock("contract"))[1])
    db = ms.database.MemoryDatabase()
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, db.commit_workload(workload), run_secs=[1e-4], target=target,
        args_info=ms.arg_info.ArgInfo.from_prim_func(workload["main"])))
    applied = apply_database(lowered, target, db)
    assert "T.parallel" in applied[task.task_name].script()
    assert "T.parallel" not in lowered[task.task_name].script()
    (out,) = run(compile_module(new_mod, new_params, target, database=db), x)
    assert rel_err(out, torch_reference(model, {"conv": replacement})(x).detach().numpy()) < 1e-4


def test_exported_library_loads_back(tmp_path):
    model = prepared(ResNetStyle())
    x = torch.randn(1, 3, 16, 16)
    mod, params = from_torch(model, x)
    ex = compile_module(mod, params)
    path = export_library(ex, tmp_path / "model.so")
    assert elf_type(path) == 3  # ET_DYN
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    (out,) = run(vm, x)
    np.testing.assert_allclose(out, run(ex, x)[0], rtol=1e-6, atol=1e-6)
    assert rel_err(run(load_vm(path), x)[0], model(x).detach().numpy()) < 1e-4


def _need(compiler: str, package: str) -> None:
    if shutil.which(compiler) is None:
        message = f"{compiler} not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("target, compiler, package, machine, elf_class", [
    (AARCH64, "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", EM_AARCH64, 2),
    (ARMV7, "arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf", EM_ARM, 1),
], ids=["aarch64", "armv7"])
def test_cross_compiled_library_is_an_elf_for_the_device(tmp_path, target, compiler, package, machine, elf_class):
    _need(compiler, package)
    if target == ARMV7:  # the tag lacks the hard-float ABI that the Pi's OS uses; as_target adds it
        assert as_target(target).attrs["mfloat-abi"] == "hard"
    model = prepared(MobileNetStyle())
    mod, params = from_torch(model, torch.randn(1, 3, 32, 32))
    site = find_sites(mod, params)[0]
    mod, params = substitute(mod, params, {site.id: replacement_for(site, 0)})
    path = export_library(compile_module(mod, params, target), tmp_path / "model.so", target)
    assert elf_machine(path) == machine
    assert elf_type(path) == 3
    with open(path, "rb") as f:
        assert f.read(5)[4] == elf_class  # 1: 32-bit, 2: 64-bit


def test_sites_pickle_without_tvm_references():
    import pickle

    model = prepared(SeqNet())
    mod, params = from_torch(model, torch.randn(1, 4, 12))
    site = find_sites(mod, params)[0]
    copy = pickle.loads(pickle.dumps(site))
    assert copy.id == site.id and copy.program == site.program and copy.refs is None
    np.testing.assert_array_equal(copy.weights["weight"], site.weights["weight"])
