"""`gos_tvm.hw.vm_calls`: the kernels a compiled model calls, each replayed alone on the arguments
the model gave it -- what MetaSchedule's records price -- computes what it computed in the model."""
from __future__ import annotations

import numpy as np
import torch

import gos_tvm
from gos_tvm import graph, models
from gos_tvm.hw import vm_calls


def _compiled():
    torch.manual_seed(0)
    model = models.DigitsCNN().eval()
    mod, params = gos_tvm.from_torch(model, torch.zeros(1, 1, 16, 16))
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype("float32")
    return graph.compile_module(mod, params), x


def test_each_recorded_kernel_alone_computes_what_it_computed_in_the_model(tmp_path):
    executable, x = _compiled()
    kernels, builtins = vm_calls.record_calls(executable, x)
    assert len(kernels) >= 4 and builtins["vm.builtin.alloc_tensor"] >= 1
    assert not any(k.symbol.startswith("vm.builtin.") for k in kernels)
    library = vm_calls.kernel_library(executable)
    import tvm

    for call in kernels:
        args = [tvm.runtime.tensor(a) if isinstance(a, np.ndarray) else a for a in call.args_before]
        library[call.symbol](*args)
        for got, after in zip(args, call.args_after):
            if isinstance(after, np.ndarray):
                np.testing.assert_allclose(got.numpy(), after, rtol=1e-5, atol=1e-5, err_msg=call.symbol)
    # the last kernel wrote the model's output
    np.testing.assert_allclose(kernels[-1].args_after[-1], graph.run(executable, x)[0], rtol=1e-5, atol=1e-5)

    # the same calls from the exported library
    path = tmp_path / "model.so"
    executable.export_library(str(path))
    timed = vm_calls.time_vm_calls(path, x, calls=20, number=5, repeat=1)
    assert [k["symbol"] for k in timed["kernels"]] == [k.symbol for k in kernels]
    assert all(k["alone_s"] > 0 for k in timed["kernels"]) and timed["end_to_end_s"] > 0
    assert timed["alone_sum_s"] == sum(k["alone_s"] for k in timed["kernels"])
    assert timed["builtins"] == dict(builtins)


def test_handoffs_are_the_edges_where_a_kernel_reads_the_previous_ones_output():
    executable, x = _compiled()
    kernels, _ = vm_calls.record_calls(executable, x)
    edges = vm_calls.time_handoffs(executable, x, calls=5, repeat=1)
    pairs = list(zip(kernels, kernels[1:]))
    assert edges and len(edges) <= len(pairs)
    for edge in edges:
        writer, reader = next((w, r) for w, r in pairs if (w.symbol, r.symbol) == (edge["writer"], edge["reader"]))
        assert edge["bytes"] == writer.args_after[-1].nbytes > 0
        assert any(isinstance(a, np.ndarray) and np.array_equal(a, writer.args_after[-1]) for a in reader.args_before)
        assert np.isfinite(edge["handoff_s"])
