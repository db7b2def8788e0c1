"""bncore on CUDA against torch.nn (cuDNN): skipped where there is no GPU, run by
``benchmarks/gpu_check.sh`` on one (self-contained: it runs with ``--noconftest`` on a GPU
image that lacks the service's dependencies).

float64: every output, gradient and running statistic equal to torch.nn.BatchNorm*d's at
1e-10 over training steps then an eval step, on each backend that runs on CUDA (the Python
path; compiled = Triton kernels). float32 at a benchmark shape: within cuDNN's rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bncore import functional as BF
from bncore.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
PAIRS = [
    (BatchNorm1d, nn.BatchNorm1d, (16, 8)),
    (BatchNorm1d, nn.BatchNorm1d, (6, 8, 5)),
    (BatchNorm2d, nn.BatchNorm2d, (4, 8, 5, 7)),
    (BatchNorm3d, nn.BatchNorm3d, (2, 8, 3, 4, 5)),
]
BACKENDS = ["eager", "compiled", "auto"]


def _pair(ours_cls: type, ref_cls: type, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    ref = ref_cls(8, device=CUDA, dtype=dtype)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    ours = ours_cls(8, device=CUDA, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _steps(ours: nn.Module, ref: nn.Module, shape: tuple[int, ...], tol: dict) -> None:
    g = torch.Generator(device="cpu").manual_seed(1)
    dtype = ref.weight.dtype
    for step in range(4):
        for module in (ours, ref):
            module.train(step < 3)  # the last step in eval mode, on the running statistics
        x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5).to(CUDA)
        dy = torch.randn(shape, generator=g, dtype=dtype).to(CUDA)
        seen = []
        for module in (ours, ref):
            xi = x.clone().requires_grad_(True)
            module.zero_grad()
            y = module(xi)
            y.backward(dy)
            seen.append([y, xi.grad, *(p.grad for p in module.parameters())])
        for a, b in zip(*seen, strict=True):
            torch.testing.assert_close(a, b, **tol)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(ref, name), **tol)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):  # noqa: ANN201
    before = BF.get_backend()
    BF.set_backend(request.param)
    yield request.param
    BF.set_backend(before)


@pytest.mark.parametrize(("ours_cls", "ref_cls", "shape"), PAIRS)
def test_float64_parity_with_torch_on_cuda(backend: str, ours_cls, ref_cls, shape) -> None:  # noqa: ANN001
    ours, ref = _pair(ours_cls, ref_cls, torch.float64)
    _steps(ours, ref, shape, {"rtol": 1e-10, "atol": 1e-10})


def test_float32_at_a_benchmark_shape_matches_cudnn(backend: str) -> None:
    ours, ref = _pair(BatchNorm2d, nn.BatchNorm2d, torch.float32)
    _steps(ours, ref, (64, 8, 32, 32), {"rtol": 1e-4, "atol": 1e-4})


def test_gradcheck_on_cuda() -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(5, 3, 4, generator=g, dtype=torch.float64).to(CUDA).requires_grad_(True)
    w = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).to(CUDA).requires_grad_(True)
    b = torch.randn(3, generator=g, dtype=torch.float64).to(CUDA).requires_grad_(True)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return BF.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_sync_batchnorm_outside_a_process_group_is_batchnorm_on_cuda() -> None:
    ours, ref = _pair(SyncBatchNorm, nn.BatchNorm2d, torch.float64)
    _steps(ours, ref, (4, 8, 5, 7), {"rtol": 1e-10, "atol": 1e-10})
