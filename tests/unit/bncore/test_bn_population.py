"""The paper's inference statistics (Algorithm 2): population_statistics and inference_stats."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bncore.nn import (
    BatchNorm1d,
    BatchNorm2d,
    convert_batchnorm,
    population_statistics,
    set_inference_stats,
)

pytestmark = pytest.mark.usefixtures("eager_backend")


def test_handcrafted_batches_match_the_formula() -> None:
    # Channel 0 and 1 of three batches of m = 4 values each.
    batches = [
        torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [6.0, 4.0]]),
        torch.tensor([[0.0, 1.0], [0.0, 1.0], [4.0, 1.0], [4.0, 1.0]]),
        torch.tensor([[-1.0, 2.0], [1.0, -2.0], [-1.0, 2.0], [1.0, -2.0]]),
    ]
    mus = [torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([0.0, 0.0])]
    sig2 = [  # biased: 1/m Σ (x − μ)²
        torch.tensor([(4 + 1 + 0 + 9) / 4, (1 + 1 + 1 + 9) / 4]),
        torch.tensor([4.0, 0.0]),
        torch.tensor([1.0, 4.0]),
    ]
    m = 4
    expected_mean = sum(mus) / 3
    expected_var = m / (m - 1) * sum(sig2) / 3

    layer = BatchNorm1d(2, dtype=torch.float64)
    model = nn.Sequential(layer).double()
    stats = population_statistics(model, [b.double() for b in batches])
    torch.testing.assert_close(layer.population_mean, expected_mean.double())
    torch.testing.assert_close(layer.population_var, expected_var.double())
    assert set(stats) == {"0"}
    # Running buffers, counters and modes untouched; the state dict stays torch's.
    assert torch.equal(layer.running_mean, torch.zeros(2, dtype=torch.float64))
    assert layer.num_batches_tracked.item() == 0 and layer.training
    assert set(model.state_dict()) == set(nn.Sequential(nn.BatchNorm1d(2)).state_dict())


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        BatchNorm2d(3),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        BatchNorm1d(5),
    ).double()


def test_deep_net_matches_torch_cumulative_average_in_training_mode() -> None:
    # torch BN with momentum=None, in train mode, accumulates exactly Algorithm 2 (equal-size
    # batches): mean of μ_B and mean of m/(m−1)·σ²_B, with every layer normalizing by its
    # batch statistics. So it serves as an independent reference for a multi-layer net.
    model = _net()
    batches = [torch.randn(6, 2, 6, 6, dtype=torch.float64) * 2 + 1 for _ in range(5)]
    ref = convert_batchnorm(copy.deepcopy(model), to="torch")
    for layer in ref.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None
    with torch.no_grad():
        for b in batches:
            ref(b)

    model.eval()  # the collector works whatever the mode, and restores it
    stats = population_statistics(model, iter(batches))
    assert not model.training
    for name in ("1", "5"):
        torch.testing.assert_close(stats[name][0], ref.get_submodule(name).running_mean)
        torch.testing.assert_close(stats[name][1], ref.get_submodule(name).running_var)


def test_inference_stats_switch() -> None:
    model = _net()
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    model(x)  # one training step: running stats differ from population stats
    population_statistics(model, [x * 3 + 2, x - 1], max_batches=2)
    model.eval()
    running = model(x)

    set_inference_stats(model, "population")
    population = model(x)
    assert not torch.allclose(population, running)
    # Population stats written into the running buffers give the same outputs.
    other = copy.deepcopy(model)
    population_statistics(other, [x * 3 + 2, x - 1], write_running=True)
    set_inference_stats(other, "running")
    torch.testing.assert_close(other(x), population)

    set_inference_stats(model, "batch")
    before = copy.deepcopy(model.state_dict())
    batch = model(x)
    model.train()
    set_inference_stats(model, "running")
    torch.testing.assert_close(batch, model(x))  # = training-mode output ...
    for k, v in before.items():
        if k.endswith("running_mean"):
            assert not torch.equal(model.state_dict()[k], v)  # ... which did update buffers


def test_population_before_compute_raises() -> None:
    layer = set_inference_stats(BatchNorm1d(3), "population").eval()
    with pytest.raises(RuntimeError, match="population_statistics"):
        layer(torch.randn(4, 3))
    with pytest.raises(ValueError):
        set_inference_stats(layer, "median")
    with pytest.raises(ValueError):
        population_statistics(layer, [])


def test_custom_forward_and_dropout_mode() -> None:
    model = nn.Sequential(nn.Dropout(0.5), BatchNorm1d(4)).double()
    data = [(torch.randn(16, 4, dtype=torch.float64), 0) for _ in range(3)]
    a = population_statistics(model, data, forward=lambda mod, b: mod(b[0]))["1"]
    # Dropout off by default: the statistics are those of the raw inputs.
    xs = torch.stack([b[0] for b in data])
    torch.testing.assert_close(a[0], xs.mean(1).mean(0))
    b = population_statistics(model, data, forward=lambda mod, b: mod(b[0]), others_training=True)
    assert not torch.allclose(a[1], b["1"][1])  # dropout on: different inputs to BN
