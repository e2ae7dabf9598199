"""Test tiers: the default tier stays under ~15 minutes on CI's 2 cores; `--runslow` adds the rest."""
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def two_convs():
    """A small two-convolution ReLU network (seeded), its input and its Relax import:
    (net, x, mod, params).  What the tuning tests (RowSplit, serial twins) tune end to end."""
    import torch

    from gos_tvm import graph

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    mod, params = graph.from_torch(net, x)
    return net, x, mod, params
