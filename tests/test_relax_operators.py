"""gos_tvm.graph.operators: replacement stages written as Relax's own convolutions and matmuls
compute what the program computes (its torch module, and its TensorIR kernels), in both layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tvm import relax

from gos_tvm.graph import compile_module, run
from gos_tvm.graph.layout import conv_layout
from gos_tvm.graph.rewrite import _staged_call
from gos_tvm.instructions import OpProgram, library
from gos_tvm.instructions.lowering_torch import to_torch
from gos_tvm.space import candidates

#: Operators of every site shape the matcher knows, with odd geometry: asymmetric padding, stride,
#: dilation, groups, a depthwise channel multiplier, a 1-d convolution and a dense layer.
PROGRAMS = {
    "conv2d": library.conv2d((1, 8, 9, 9), 12, 3, stride=2, padding=(0, 1, 2, 1)),
    "grouped": library.conv2d((1, 8, 7, 7), 8, 3, padding=1, groups=2),
    "depthwise": library.depthwise_conv2d((1, 6, 8, 8), 3, padding=2, dilation=2, multiplier=2),
    "conv1d": library.conv1d((1, 6, 20), 8, 5, padding=4, dilation=2),
    "dense": library.dense((1, 16), 10),
}


def _module(program: OpProgram, relax_operators: bool):
    """``main(x, *weights)`` computing `program` as `graph.substitute` writes it into a model."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(next(iter(program.inputs.values()))), "float32"))
    weights = {w: relax.Var(w, relax.TensorType(list(s), "float32")) for w, s in program.weights.items()}
    with bb.function("main", [x, *weights.values()]):
        with bb.dataflow():
            out = bb.emit_output(_staged_call(bb, program, x, weights, relax_operators))
        bb.emit_func_output(out)
    return bb.get()


def _tir_kernels(mod) -> int:
    return sum(1 for gv in mod.functions if gv.name_hint.startswith("gos_"))


def _programs() -> list[tuple[str, OpProgram]]:
    """Each operator itself, its first candidate of every single rule, and of every third chain of
    two rules of the replacement space (all chains: 240 programs, two minutes per layout)."""
    out = []
    for name, program in PROGRAMS.items():
        out.append((f"{name}:original", program))
        chains: dict[str, OpProgram] = {}
        for c in candidates(program):
            chains.setdefault(c.rule, c.program)
        singles = [r for r in chains if ">" not in r]
        pairs = [r for r in chains if ">" in r][::3]
        out += [(f"{name}:{r}", chains[r]) for r in singles + pairs]
    return out


# The default tier checks every fourth program in each layout, not the same ones in both (the
# operators themselves always), all of them in the slow tier: the default tier must stay under ~15
# minutes on CI's 2 cores.
@pytest.mark.parametrize("layout, every, first", [("NCHW", 4, 2), ("NHWC", 4, 0),
                                                  pytest.param("NCHW", 1, 0, marks=pytest.mark.slow),
                                                  pytest.param("NHWC", 1, 0, marks=pytest.mark.slow)])
def test_relax_operator_stages_compute_the_program(layout, every, first):
    checked, as_operators = 0, 0
    for i, (label, program) in enumerate(_programs()):
        if layout == "NHWC" and len(next(iter(program.inputs.values()))) != 4:
            continue  # only 2-d convolutions change layout
        if (i - first) % every and not label.endswith(":original"):
            continue
        rng = np.random.default_rng(i)
        weights = {w: (rng.standard_normal(s) * 0.3).astype(np.float32) for w, s in program.weights.items()}
        x = rng.standard_normal(next(iter(program.inputs.values()))).astype(np.float32)
        expected = to_torch(program, weights)(torch.from_numpy(x)).detach().numpy()
        mod = _module(program, relax_operators=True)
        with conv_layout(layout):
            (got,) = run(compile_module(mod, {}), [x, *weights.values()])
        err = np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-6)
        assert err < 1e-4, f"{label}: relative error {err:.2e}"
        checked += 1
        as_operators += _tir_kernels(mod) < _tir_kernels(_module(program, relax_operators=False))
        if label.endswith(":original"):  # one site with a bias: Relax's own operator, no kernel of ours
            assert _tir_kernels(mod) == 0, label
    assert checked > 30 // every
    assert as_operators > checked // 2, f"only {as_operators} of {checked} programs use Relax operators"
