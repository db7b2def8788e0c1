"""Half precision (float16, bfloat16) against a float64 reference, with tolerances of about
one unit in the last place of the half-precision result.

bncore accumulates the sums of half-precision inputs in float32. Summing in the input's own
dtype instead loses the digits that matter when |μ| ≫ σ: the mean comes out a fraction of a
half-precision step off, and that error, divided by σ, lands in every output. The inputs here
have μ = 100, σ = 1, where float16 accumulation is several times outside these tolerances (and
bfloat16 accumulation about ten times), while float32 accumulation leaves only the final
rounding to the half dtype.

Only public names are used (``bncore.functional.batch_norm``, ``bncore.nn.BatchNorm1d/2d``).
"""

from __future__ import annotations

import pytest
import torch

from bncore.functional import batch_norm
from bncore.nn import BatchNorm1d, BatchNorm2d

HALVES = [torch.float16, torch.bfloat16]
EPS = 1e-5


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 in float64 on the exact (already rounded) half-precision values."""
    dims = [0, *range(2, x.dim())]
    shape = (1, -1, *([1] * (x.dim() - 2)))
    xd = x.double()
    mean = xd.mean(dims, keepdim=True)
    var = xd.var(dims, unbiased=False, keepdim=True)
    return (xd - mean) / torch.sqrt(var + EPS) * weight.double().view(shape) + bias.double().view(
        shape
    )


def _assert_within_ulp(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> None:
    """|actual − reference| ≤ one half-precision epsilon of the largest reference value:
    rounding the exact result to ``dtype`` costs half of that at most."""
    tolerance = torch.finfo(dtype).eps * float(reference.detach().abs().max())
    error = float((actual.detach().double() - reference.detach()).abs().max())
    assert error <= tolerance, f"{dtype}: max error {error:.3g} > {tolerance:.3g}"


def _offset_input(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) + 100).to(dtype)


@pytest.mark.parametrize("dtype", HALVES)
def test_functional_forward_matches_float64(dtype: torch.dtype) -> None:
    x = _offset_input((512, 8), dtype, seed=0)
    weight = torch.linspace(0.5, 1.5, 8, dtype=torch.float64).to(dtype)
    bias = torch.linspace(-1, 1, 8, dtype=torch.float64).to(dtype)
    y = batch_norm(x, None, None, weight, bias, training=True, eps=EPS)
    assert y.dtype == dtype
    _assert_within_ulp(y, _reference(x, weight, bias), dtype)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize(
    ("layer", "shape"), [(BatchNorm1d, (256, 4, 3)), (BatchNorm2d, (32, 4, 6, 6))]
)
def test_modules_forward_backward_and_running_stats(
    dtype: torch.dtype, layer: type, shape: tuple[int, ...]
) -> None:
    """Output, gradients and the running-mean update of a half-precision module, each
    against float64 autograd on the same values."""
    x = _offset_input(shape, dtype, seed=1).requires_grad_()
    bn = layer(shape[1]).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
        bn.bias.copy_(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    y = bn(x)
    _assert_within_ulp(y.detach(), _reference(x.detach(), bn.weight, bn.bias), dtype)

    generator = torch.Generator().manual_seed(2)
    dy = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    y.backward(dy)

    xd = x.detach().double().requires_grad_()
    wd = bn.weight.detach().double().requires_grad_()
    bd = bn.bias.detach().double().requires_grad_()
    _reference(xd, wd, bd).backward(dy.double())
    assert xd.grad is not None and wd.grad is not None and bd.grad is not None
    _assert_within_ulp(x.grad, xd.grad, dtype)
    _assert_within_ulp(bn.weight.grad, wd.grad, dtype)
    _assert_within_ulp(bn.bias.grad, bd.grad, dtype)

    # Running mean after one step from 0 with momentum 0.1: a tenth of the batch mean (≈ 10).
    dims = [0, *range(2, len(shape))]
    _assert_within_ulp(bn.running_mean, 0.1 * x.detach().double().mean(dims), dtype)
