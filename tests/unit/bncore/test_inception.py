"""arch "inception": shapes, the parameter count by hand, BN after every convolution, the
pooling it uses, spec validation, and the Fig. 1b/c probe on it."""

import pytest
import torch
from torch import nn

import bncore.nn as bnn
from bncore.models import AvgPool3x3, Block, Inception, build_model, norm_layers, parameter_count
from bncore.probes import preactivations, unit_percentiles
from bncore.spec import JobSpec, ModelSpec

IMAGE = (1, 28, 28)


pytestmark = pytest.mark.usefixtures("fast_cpu")


def _inception(hidden=(8, 16, 32), **model) -> nn.Module:
    return build_model(ModelSpec(arch="inception", hidden=list(hidden), **model), IMAGE, 10)


@pytest.mark.parametrize("norm", ["none", "batchnorm", "torch_batchnorm"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_output_shape_for_every_norm_and_activation(norm, activation):
    model = _inception(norm=norm, activation=activation)
    assert isinstance(model, Inception)
    x = torch.rand(5, *IMAGE)
    assert model.train()(x).shape == (5, 10)
    assert model.eval()(x).shape == (5, 10)


def test_resolution_28_then_14_then_7():
    model = _inception(hidden=(8, 16, 16, 32, 32))  # 4 modules: 2 at 14×14, 2 at 7×7
    sizes = []
    hooks = [
        b.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape)) for b in model.blocks
    ]
    model(torch.rand(2, *IMAGE))
    for hook in hooks:
        hook.remove()
    assert [tuple(s[1:]) for s in sizes] == [
        (8, 14, 14),  # stride-2 stem
        (16, 14, 14),
        (16, 14, 14),
        (32, 7, 7),  # after the 3×3/2 average pooling
        (32, 7, 7),
    ]


def test_parameter_count_by_hand():
    # hidden [8, 16, 32] on 1×28×28, 10 classes. Stem: 3×3 conv 1→8. Module of width 4b on c
    # channels: four 1×1 convs c→b, three 3×3 convs b→b, seven conv outputs of b channels.
    stem = 9 * 1 * 8
    m1 = 4 * 8 * 4 + 3 * 9 * 4 * 4  # c=8, b=4
    m2 = 4 * 16 * 8 + 3 * 9 * 8 * 8  # c=16, b=8
    head = 32 * 10 + 10
    outputs = 8 + 7 * 4 + 7 * 8  # conv output channels: each has γ and β, or a bias
    for norm, per_output in [("batchnorm", 2), ("torch_batchnorm", 2), ("none", 1)]:
        expected = stem + m1 + m2 + head + per_output * outputs
        assert parameter_count(_inception(norm=norm)) == expected == 3386 - 92 * (2 - per_output)
        spec = JobSpec(
            dataset="fashion_mnist",
            model={"arch": "inception", "hidden": [8, 16, 32], "norm": norm},
        )
        assert spec.parameter_count() == expected


@pytest.mark.parametrize(
    "norm, cls", [("batchnorm", bnn.BatchNorm2d), ("torch_batchnorm", nn.BatchNorm2d)]
)
def test_batchnorm_after_every_convolution(norm, cls):
    model = _inception(norm=norm)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(convs) == 1 + 7 * 2  # the stem and 7 per module
    # Every conv is a Block's weights, followed by a per-feature-map BN of its width, no bias.
    assert sorted(map(id, convs)) == sorted(id(b.weights) for b in blocks)
    for block in blocks:
        assert type(block.norm) is cls and block.norm.num_features == block.weights.out_channels
        assert block.weights.bias is None
    assert len(norm_layers(model)) == len(convs)
    without = _inception(norm="none")
    assert norm_layers(without) == []
    assert all(m.bias is not None for m in without.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("stride", [1, 2])
def test_avg_pool_is_torchs_zero_padded_average_pooling(stride):
    x = torch.randn(3, 5, 7, 7, requires_grad=True)
    ours = AvgPool3x3(stride)(x)
    theirs = nn.AvgPool2d(3, stride, padding=1)(x)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad(ours, x, g)
    (grad_theirs,) = torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_dropout_after_the_stem_and_each_module():
    model = _inception(dropout=0.25)
    assert [b.drop.p for b in model.blocks] == [0.25, 0.25, 0.25]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3


def test_probe_is_channel_0_of_a_module_before_its_sigmoid():
    model = _inception(norm="batchnorm").eval()
    x = torch.rand(6, *IMAGE)
    pre = preactivations(model, x, -1)
    assert pre.shape == (6, 8, 7, 7)  # the last module's 1×1 branch, b = 32 / 4
    outputs = []
    hook = model.blocks[-1].register_forward_hook(lambda _m, _i, out: outputs.append(out))
    model(x)
    hook.remove()
    torch.testing.assert_close(torch.sigmoid(pre[:, 0]), outputs[0][:, 0])
    q = unit_percentiles(model, x, -1)
    torch.testing.assert_close(q["act_p50"], pre[:, 0].flatten().quantile(0.5))
    assert preactivations(model, x, 0).shape == (6, 8, 14, 14)  # the stem


def test_spec_validation():
    for hidden, match in [([32], "2\\+ entries"), ([32, 64, 30], "multiples of 4, got \\[30\\]")]:
        with pytest.raises(ValueError, match=match):
            ModelSpec(arch="inception", hidden=hidden)
    with pytest.raises(ValueError, match="needs \\(C, H, W\\) images; dataset 'mnist1d'"):
        JobSpec(dataset="mnist1d", model={"arch": "inception", "hidden": [8, 16]})
    with pytest.raises(ValueError, match="image examples"):
        build_model(ModelSpec(arch="inception", hidden=[8, 16]), (1, 40), 10)
    # 8×8 digits work too (stem → 4×4, then 2×2).
    spec = JobSpec(dataset="digits", model={"arch": "inception", "hidden": [8, 16, 16]})
    model = build_model(spec.model, *spec.input_shape())
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert parameter_count(model) == spec.parameter_count()
