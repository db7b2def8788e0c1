"""Models built from a spec: shapes, parameter counts, bias dropping, norm placement, init,
and the Fig. 1b/c probe."""

import pytest
import torch
from torch import nn

import bncore.nn as bnn
from bncore.models import CNN, MLP, build_model, norm_layers, parameter_count
from bncore.probes import grad_norm, preactivations, unit_percentiles
from bncore.spec import JobSpec, ModelSpec

pytestmark = pytest.mark.usefixtures("fast_cpu")


def _build(spec: JobSpec) -> nn.Module:
    shape, classes = spec.input_shape()
    return build_model(spec.model, shape, classes)


@pytest.mark.parametrize("dataset", ["mnist1d", "digits", "synthetic", "mnist_idx"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", ["none", "batchnorm", "torch_batchnorm"])
def test_parameter_count_matches_spec(dataset, arch, norm):
    hidden = [100, 100, 100] if arch == "mlp" else [8, 16]
    spec = JobSpec(
        dataset=dataset,
        data_path="mnist" if dataset == "mnist_idx" else None,
        model={"arch": arch, "hidden": hidden, "norm": norm},
    )
    assert parameter_count(_build(spec)) == spec.parameter_count()


def test_parameter_count_of_the_paper_net():
    # 40·100 + 2·(100·100) weights, γ and β for 300 units, head 100·10 + 10
    model = _build(JobSpec(dataset="mnist1d", model={"norm": "batchnorm"}))
    assert parameter_count(model) == 4000 + 20000 + 600 + 1010


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_bias_dropped_only_in_front_of_a_norm(arch):
    for norm, has_bias in [("none", True), ("batchnorm", False), ("torch_batchnorm", False)]:
        model = _build(
            JobSpec(dataset="digits", model={"arch": arch, "hidden": [4, 4], "norm": norm})
        )
        assert all((b.weights.bias is not None) == has_bias for b in model.blocks)
        assert model.head.bias is not None  # the head has no norm after it


@pytest.mark.parametrize(
    "dataset, arch, weights, norm_cls",
    [
        ("mnist1d", "mlp", nn.Linear, bnn.BatchNorm1d),
        ("mnist1d", "cnn", nn.Conv1d, bnn.BatchNorm1d),
        ("digits", "mlp", nn.Linear, bnn.BatchNorm1d),
        ("digits", "cnn", nn.Conv2d, bnn.BatchNorm2d),
    ],
)
def test_layer_types_and_output_shape(dataset, arch, weights, norm_cls):
    spec = JobSpec(dataset=dataset, model={"arch": arch, "hidden": [6, 5], "norm": "batchnorm"})
    model = _build(spec)
    assert isinstance(model, MLP if arch == "mlp" else CNN)
    for block in model.blocks:
        assert isinstance(block.weights, weights) and type(block.norm) is norm_cls
        assert isinstance(block.act, nn.Sigmoid)
    shape, _ = spec.input_shape()
    assert model(torch.randn(7, *shape)).shape == (7, 10)


def test_torch_batchnorm_and_none():
    for arch, cls in [("mlp", nn.BatchNorm1d), ("cnn", nn.BatchNorm2d)]:
        model = _build(JobSpec(dataset="digits", model={"arch": arch, "norm": "torch_batchnorm"}))
        assert all(type(n) is cls for n in norm_layers(model))
    model = _build(JobSpec(dataset="digits", model={"norm": "none"}))
    assert norm_layers(model) == []


def test_bn_settings_reach_the_layers():
    spec = ModelSpec(norm="torch_batchnorm", bn_momentum=None, bn_eps=1e-3, activation="relu")
    model = build_model(spec, (1, 40), 10)
    assert all(n.momentum is None and n.eps == 1e-3 for n in norm_layers(model))
    assert all(isinstance(b.act, nn.ReLU) for b in model.blocks)


@pytest.mark.parametrize("norm", ["batchnorm", "torch_batchnorm"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_norm_sits_before_the_nonlinearity(norm, arch):
    # In training mode with γ=1, β=0, what enters each nonlinearity is standardized per unit.
    model = build_model(ModelSpec(arch=arch, hidden=[8, 8], norm=norm), (1, 8, 8), 10).train()
    x = torch.randn(64, 1, 8, 8) * 5 + 3
    for layer in range(2):
        pre = preactivations(model, x, layer)
        dims = [0, 2, 3] if arch == "cnn" else [0]
        assert pre.shape[1] == 8
        torch.testing.assert_close(pre.mean(dims), torch.zeros(8), atol=1e-4, rtol=0)
        torch.testing.assert_close(pre.var(dims, unbiased=False), torch.ones(8), atol=1e-2, rtol=0)


def test_cnn_needs_1d_or_2d_examples():
    with pytest.raises(ValueError, match="spatial"):
        build_model(ModelSpec(arch="cnn"), (1, 4, 4, 4), 10)


def test_poor_init_ignores_fan_in():
    torch.manual_seed(0)
    default = build_model(ModelSpec(hidden=[400, 400]), (1, 400), 10)
    poor = build_model(ModelSpec(hidden=[400, 400], init="poor"), (1, 400), 10)
    assert default.blocks[1].weights.weight.std() < 0.05  # ~ 1/sqrt(3·400)
    for layer in [poor.blocks[0].weights, poor.blocks[1].weights, poor.head]:
        assert abs(layer.weight.std().item() - 1.0) < 0.05
    assert torch.all(norm_layers(poor)[0].weight == 1)  # γ keeps its init


def test_unit_percentiles_is_eval_mode_and_leaves_buffers_alone():
    model = build_model(ModelSpec(hidden=[5, 5], norm="torch_batchnorm"), (1, 12), 10).train()
    model(torch.randn(32, 1, 12))  # move the running stats away from their init
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(200, 1, 12)
    q = unit_percentiles(model, x, -1)
    assert list(q) == ["act_p15", "act_p50", "act_p85"]
    assert q["act_p15"] <= q["act_p50"] <= q["act_p85"]
    assert model.training  # mode restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # It is unit 0 of the last block's nonlinearity input, in eval mode.
    model.eval()
    pre = preactivations(model, x, 1)[:, 0]
    torch.testing.assert_close(q["act_p50"], pre.quantile(0.5))


def test_unit_percentiles_cnn_uses_all_positions_of_channel_0():
    model = build_model(ModelSpec(arch="cnn", hidden=[3]), (1, 6), 10).eval()
    x = torch.randn(10, 1, 6)
    q = unit_percentiles(model, x, 0)
    pre = preactivations(model, x, 0)[:, 0].flatten()
    assert pre.numel() == 60
    torch.testing.assert_close(q["act_p85"], pre.quantile(0.85))


def test_grad_norm_is_the_total_l2_norm():
    model = build_model(ModelSpec(hidden=[7]), (1, 5), 3)
    model(torch.randn(4, 1, 5)).square().sum().backward()
    expected = sum(p.grad.square().sum() for p in model.parameters()).sqrt()
    torch.testing.assert_close(grad_norm(model.parameters()), expected)
    assert grad_norm([]) == 0
