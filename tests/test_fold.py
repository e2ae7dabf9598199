"""BatchNorm folded into the preceding convolution at import: same function, one kernel per conv."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gos_tvm import graph, models


def _randomise_batchnorms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running statistics and affine terms, so that a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


@pytest.mark.parametrize("cls", [models.ResNet18Style, models.MobileNetV2Style])
def test_folded_import_computes_the_same_and_has_no_batchnorm(cls):
    torch.manual_seed(0)
    model = _randomise_batchnorms(cls())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    mod, params = graph.from_torch(model, x[:1])
    assert "batch_norm" not in mod.script(show_meta=False)
    ex = graph.compile_module(mod, params)
    for i in range(2):
        np.testing.assert_allclose(graph.run(ex, x[i:i + 1].numpy())[0], ref[i:i + 1], rtol=1e-4, atol=1e-5)
    # Sites keep the torch module paths; a conv without bias gained the folded one.
    conv_sites = {s.id for s in graph.find_sites(mod, params)}
    bias_free = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.bias is None}
    assert bias_free and bias_free <= conv_sites
    assert all(f"{n}.bias" in params for n in bias_free)
    # The user's model is left as it was.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_fold_can_be_turned_off():
    model = _randomise_batchnorms(models.ResNet18Style())
    mod, _ = graph.from_torch(model, torch.randn(1, 1, 32, 32), fold_batchnorm=False)
    assert "batch_norm" in mod.script(show_meta=False)


class Untraceable(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, torch.export can."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        for _ in range(x.shape[0]):     # a Python loop over a traced value: fx raises
            y = y + 0
        return y


def test_untraceable_model_is_imported_unfolded_with_a_warning():
    model = _randomise_batchnorms(Untraceable())
    folded, names = graph.fold_batchnorm(model)
    assert folded is model and names == []
    with pytest.warns(UserWarning, match="BatchNorm not folded"):
        mod, params = graph.from_torch(model, torch.randn(1, 1, 8, 8))
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(graph.run(graph.compile_module(mod, params), x.numpy())[0], model(x).numpy(),
                                   rtol=1e-4, atol=1e-5)
