"""bncore.nn BatchNorm layers against torch.nn (eager backend), conversion and state dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bncore.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d, convert_batchnorm

PAIRS = [
    (BatchNorm1d, nn.BatchNorm1d, (6, 4)),
    (BatchNorm1d, nn.BatchNorm1d, (5, 4, 3)),
    (BatchNorm2d, nn.BatchNorm2d, (3, 4, 3, 5)),
    (BatchNorm3d, nn.BatchNorm3d, (2, 4, 2, 3, 2)),
]


pytestmark = pytest.mark.usefixtures("eager_backend")


def _pair(ours_cls: type, ref_cls: type, **kw: object) -> tuple[nn.Module, nn.Module]:
    ours = ours_cls(4, dtype=torch.float64, **kw)
    ref = ref_cls(4, dtype=torch.float64, **kw)
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            if ref.bias is not None:
                ref.bias.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _steps(ours: nn.Module, ref: nn.Module, shape: tuple[int, ...], steps: int = 4) -> None:
    """Train and eval steps side by side; every output, gradient and buffer must agree."""
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for mod in (ours, ref):
            mod.train(step < steps - 1)  # last step in eval mode
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        outs = []
        for mod in (ours, ref):
            xi = x.clone().requires_grad_(True)
            mod.zero_grad()
            y = mod(xi)
            y.backward(dy)
            grads = [xi.grad] + [p.grad for p in mod.parameters()]
            outs.append((y, grads))
        torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-10, rtol=1e-10)
        for a, b in zip(outs[0][1], outs[1][1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        for (na, a), (nb, b) in zip(
            ours.state_dict().items(), ref.state_dict().items(), strict=True
        ):
            assert na == nb
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("ours_cls", "ref_cls", "shape"), PAIRS)
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"momentum": None},
        {"momentum": 0.3, "eps": 1e-3},
        {"affine": False},
        {"bias": False},
        {"track_running_stats": False},
    ],
    ids=["default", "cma", "momentum_eps", "no_affine", "no_bias", "no_running"],
)
def test_module_matches_torch(
    ours_cls: type, ref_cls: type, shape: tuple[int, ...], kw: dict[str, object]
) -> None:
    ours, ref = _pair(ours_cls, ref_cls, **kw)
    _steps(ours, ref, shape)
    if not kw.get("track_running_stats", True):
        assert ours.running_mean is None and ours.num_batches_tracked is None


def test_channels_last_module() -> None:
    ours, ref = _pair(BatchNorm2d, nn.BatchNorm2d)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_float32_module() -> None:
    ours, ref = BatchNorm2d(8), nn.BatchNorm2d(8)
    x = torch.randn(16, 8, 6, 6) * 4 + 2
    for _ in range(3):
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-5, rtol=1e-5)


def test_constructor_and_repr_match_torch() -> None:
    ours, ref = BatchNorm1d(7, 1e-3, 0.2, True, True), nn.BatchNorm1d(7, 1e-3, 0.2, True, True)
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]


@pytest.mark.parametrize(
    ("cls", "good", "bad", "msg"),
    [
        (BatchNorm1d, (4, 3), (4, 3, 2, 2), "expected 2D or 3D input (got 4D input)"),
        (BatchNorm2d, (2, 3, 2, 2), (4, 3), "expected 4D input (got 2D input)"),
        (BatchNorm3d, (2, 3, 2, 2, 2), (2, 3, 2, 2), "expected 5D input (got 4D input)"),
    ],
)
def test_input_dim_checks(cls: type, good: tuple, bad: tuple, msg: str) -> None:
    layer = cls(3)
    layer(torch.randn(good))
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        layer(torch.randn(bad))


def test_single_value_per_channel_error() -> None:
    x = torch.randn(1, 4)
    with pytest.raises(ValueError) as ref:
        nn.BatchNorm1d(4)(x)
    with pytest.raises(ValueError) as ours:
        BatchNorm1d(4)(x)
    assert type(ours.value) is type(ref.value) and str(ours.value) == str(ref.value)
    BatchNorm1d(4).eval()(x)  # fine in eval mode


def test_state_dict_both_ways() -> None:
    ours, ref = _pair(BatchNorm2d, nn.BatchNorm2d)
    ours(torch.randn(4, 4, 3, 3, dtype=torch.float64))  # change the buffers
    fresh_ref = nn.BatchNorm2d(4, dtype=torch.float64)
    fresh_ref.load_state_dict(ours.state_dict())  # strict: same keys
    fresh_ours = BatchNorm2d(4, dtype=torch.float64)
    fresh_ours.load_state_dict(fresh_ref.state_dict())
    for sd in (fresh_ref.state_dict(), fresh_ours.state_dict()):
        for k, v in ours.state_dict().items():
            assert torch.equal(sd[k], v)


def test_old_state_dict_without_num_batches_tracked_keeps_the_counter() -> None:
    """A version-1 checkpoint has no num_batches_tracked: the layer keeps its own, as torch's."""
    sd = nn.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1  # type: ignore[attr-defined]
    for layer in (BatchNorm1d(3), nn.BatchNorm1d(3)):
        layer.num_batches_tracked.fill_(7)
        layer.load_state_dict(sd)
        assert layer.num_batches_tracked.item() == 7


def _model(bn1: type, bn2: type) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        bn2(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Sequential(nn.Linear(4 * 4 * 4, 5), bn1(5, affine=False, momentum=None)),
    ).double()


def test_convert_batchnorm_round_trip_preserves_outputs() -> None:
    model = _model(nn.BatchNorm1d, nn.BatchNorm2d)
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    model(x)  # train a step so the buffers are not at their defaults
    model.eval()
    expected = model(x)
    convert_batchnorm(model, to="bncore")
    assert isinstance(model[1], BatchNorm2d) and isinstance(model[4][1], BatchNorm1d)
    assert not model[1].training and model[4][1].momentum is None
    torch.testing.assert_close(model(x), expected, atol=1e-12, rtol=1e-12)
    convert_batchnorm(model, to="torch")
    assert type(model[1]) is nn.BatchNorm2d and type(model[4][1]) is nn.BatchNorm1d
    torch.testing.assert_close(model(x), expected, atol=1e-12, rtol=1e-12)
    # training mode too: same outputs, same buffer updates
    a, b = (
        _model(nn.BatchNorm1d, nn.BatchNorm2d),
        convert_batchnorm(_model(nn.BatchNorm1d, nn.BatchNorm2d), to="bncore"),
    )
    torch.testing.assert_close(a(x), b(x), atol=1e-10, rtol=1e-10)
    for (_, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)


def test_convert_a_bare_layer() -> None:
    layer = convert_batchnorm(nn.BatchNorm1d(3, bias=False), to="bncore")
    assert isinstance(layer, BatchNorm1d) and layer.bias is None and layer.weight is not None
