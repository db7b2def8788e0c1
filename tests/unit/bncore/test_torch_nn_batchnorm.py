"""PyTorch's own batch-norm tests from test/test_nn.py, run against bncore.

Ported: ``test_BatchNorm_empty`` and the ``test_batchnorm_*`` family of ``TestNN`` and
``TestNNDeviceType`` that run on CPU (update_stats, grad, eval, affine, simple_average,
non_contig_cpu, nhwc_cpu, load_state_dict, buffer_update_when_stats_are_not_tracked and the
raises_error_* checks). Each keeps torch's body and assertions with ``torch.nn.BatchNorm*``
replaced by bncore's layer and ``F.batch_norm`` by bncore's; ``assertEqual`` becomes
``torch.testing.assert_close`` (the same default tolerances per dtype). Tests whose point is a
CUDA/cuDNN kernel, or torch's internal dispatch (meta device), are not ported. Tests marked
with the ``backend`` fixture also run with the compiled backend where a compiler exists
and BNCORE_TEST_COMPILED=1 (compiling each variant takes seconds).
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Iterator
from copy import deepcopy

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.nn import Parameter

from bncore import functional as BF
from bncore import nn as bnn

# The compiled backend compiles every variant (seconds each): opt in with BNCORE_TEST_COMPILED=1.
RUN_COMPILED = os.environ.get("BNCORE_TEST_COMPILED") == "1" and BF.compiled_available("cpu")
BACKENDS = ["eager", "compiled"] if RUN_COMPILED else ["eager"]
assert_equal = torch.testing.assert_close


@pytest.fixture(autouse=True)
def eager_by_default() -> Iterator[None]:
    before = BF.get_backend()
    BF.set_backend("eager")
    yield
    BF.set_backend(before)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    BF.set_backend(request.param)
    return request.param


def _assert_not_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    with pytest.raises(AssertionError):
        assert_equal(a, b)


def _test_module_empty_input(module: nn.Module, inp: torch.Tensor) -> None:
    """torch.testing._internal.common_nn._test_module_empty_input."""
    inp.requires_grad_(True)
    out = module(inp)
    out.backward(torch.rand_like(out))
    assert out.size() == inp.size()
    for p in module.parameters():
        if p.requires_grad:
            assert_equal(p.grad, torch.zeros_like(p.grad))
    assert_equal(inp.grad, torch.zeros_like(inp))


def test_BatchNorm_empty() -> None:  # noqa: N802 (torch's name)
    mod = bnn.BatchNorm2d(3)
    inp = torch.randn(0, 3, 2, 2)
    _test_module_empty_input(mod, inp)
    assert_equal(mod.running_mean, torch.tensor([0.0, 0, 0]))
    assert_equal(mod.running_var, torch.tensor([1.0, 1, 1]))
    assert_equal(mod.weight.grad, torch.tensor([0.0, 0, 0]))
    assert_equal(mod.bias.grad, torch.tensor([0.0, 0, 0]))


def test_batchnorm_update_stats(backend: str) -> None:
    module = bnn.BatchNorm1d(3)
    data = torch.rand(4, 3)
    # training pass
    old_running_mean = module.running_mean.clone()
    old_running_var = module.running_var.clone()
    old_num_batches_tracked = module.num_batches_tracked.clone()
    module(data)
    _assert_not_equal(old_running_mean, module.running_mean)
    _assert_not_equal(old_running_var, module.running_var)
    assert_equal(old_num_batches_tracked + 1, module.num_batches_tracked)
    # eval pass
    module.eval()
    old_running_mean = module.running_mean.clone()
    old_running_var = module.running_var.clone()
    old_num_batches_tracked = module.num_batches_tracked.clone()
    module(data)
    assert_equal(old_running_mean, module.running_mean)
    assert_equal(old_running_var, module.running_var)
    assert_equal(old_num_batches_tracked, module.num_batches_tracked)


def test_batchnorm_grad() -> None:
    """_test_batchnorm_grad: gradcheck and gradgradcheck of the functional, train and eval."""
    dtype = torch.double
    bs, n_feat, size_feat = 4, 5, 6
    input = torch.arange(bs * n_feat * size_feat, requires_grad=True, dtype=dtype).view(
        bs, n_feat, size_feat
    )
    weight = torch.arange(1, n_feat + 1, requires_grad=True, dtype=dtype)
    bias = torch.arange(n_feat, requires_grad=True, dtype=dtype)
    running_mean = 1 - torch.arange(n_feat, dtype=dtype)
    running_var = 2 * torch.arange(n_feat, dtype=dtype)
    for training in [False, True]:

        def fn(
            input: torch.Tensor,
            weight: torch.Tensor,
            bias: torch.Tensor,
            training: bool = training,
        ) -> torch.Tensor:
            return BF.batch_norm(
                input, running_mean, running_var, weight, bias, training, 0.1, 0.0001
            )

        # _assertGradAndGradgradChecks: torch's gradcheck defaults (batched grads on)
        assert gradcheck(fn, (input, weight, bias), check_batched_grad=True)
        assert gradgradcheck(fn, (input, weight, bias), check_batched_grad=True)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float, torch.double])
def test_batchnorm_eval(ndim: int, dtype: torch.dtype, backend: str) -> None:
    module = bnn.BatchNorm1d(3).to(dtype=dtype)
    module.eval()
    data = torch.rand([3] * ndim, dtype=dtype, requires_grad=True)
    grad = torch.rand([3] * ndim, dtype=dtype)
    # 1st pass
    res1 = module(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    # 2nd pass
    data.grad.data.zero_()
    res2 = module(data)
    res2.backward(grad)
    grad2 = data.grad.clone()
    assert_equal(res1, res2)
    assert_equal(grad1, grad2)

    # track_running_stats=False
    module = bnn.BatchNorm1d(3, track_running_stats=False).to(dtype=dtype)
    data = torch.rand(4, 3, dtype=dtype, requires_grad=True)
    grad = torch.rand(4, 3, dtype=dtype)
    # 1st pass
    res1 = module(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    # set eval
    module.eval()
    # 2nd pass
    data.grad.data.zero_()
    res2 = module(data)
    res2.backward(grad)
    grad2 = data.grad.clone()
    assert_equal(res1, res2)
    assert_equal(grad1, grad2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_batchnorm_affine(ndim: int, backend: str) -> None:
    # Compare affine against no-op weights and bias
    module = bnn.BatchNorm1d(3, affine=False)
    module_affine = bnn.BatchNorm1d(3, affine=True)
    with torch.no_grad():
        module_affine.weight.fill_(1.0)
        module_affine.bias.zero_()
    data = torch.rand([3] * ndim, requires_grad=True)
    grad = torch.ones_like(data, requires_grad=False)
    # With weights all ones and bias all zeros
    res1 = module_affine(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    data.grad.zero_()
    # Without any weights or bias
    res2 = module(data)
    res2.backward(grad)
    grad2 = data.grad
    assert_equal(res1, res2)
    assert_equal(grad1, grad2)


def test_batchnorm_simple_average(backend: str) -> None:
    module = bnn.BatchNorm1d(3, momentum=None)
    zeros = torch.zeros(3)
    ones = torch.ones(3)
    assert_equal(module.running_mean, zeros)
    assert_equal(module.running_var, ones)
    data1 = torch.rand(4, 3)
    data2 = torch.rand(4, 3)
    # 1st pass
    res1 = module(data1)
    running_mean1 = module.running_mean.clone()
    running_var1 = module.running_var.clone()
    _assert_not_equal(running_mean1, zeros)
    _assert_not_equal(running_var1, ones)
    # reset stats
    module.reset_running_stats()
    assert_equal(module.running_mean, zeros)
    assert_equal(module.running_var, ones)
    # 2nd pass
    res2 = module(data2)
    running_mean2 = module.running_mean.clone()
    running_var2 = module.running_var.clone()
    _assert_not_equal(running_mean2, zeros)
    _assert_not_equal(running_var2, ones)
    # reset stats
    module.reset_running_stats()
    assert_equal(module.running_mean, zeros)
    assert_equal(module.running_var, ones)
    # 3rd (combined) pass
    res3 = module(data1)
    res4 = module(data2)
    assert_equal(res3, res1)
    assert_equal(res4, res2)
    assert_equal(module.running_mean, (running_mean1 + running_mean2) / 2)
    assert_equal(module.running_var, (running_var1 + running_var2) / 2)


@pytest.mark.parametrize("dtype", [torch.float, torch.bfloat16, torch.float16])
def test_batchnorm_non_contig_cpu(dtype: torch.dtype) -> None:
    input = torch.arange(6, dtype=torch.float).reshape(1, 3, 2, 1)
    input = input.permute(0, 2, 1, 3)
    bn = bnn.BatchNorm2d(2).float().eval()
    bn.weight.data.uniform_()
    bn.bias.data.uniform_()
    ref_input = input.detach().clone().contiguous()
    ref_bn = bnn.BatchNorm2d(2).float().eval()
    ref_bn.load_state_dict(bn.state_dict())
    out = bn(input)
    ref_out = ref_bn(ref_input)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert ref_out.is_contiguous()
    assert_equal(out, ref_out)

    input_bf = torch.arange(24, dtype=dtype).reshape(1, 3, 2, 4)
    input_bf = input_bf.permute(0, 2, 1, 3)
    input_f = input_bf.float()
    bn_mix = bnn.BatchNorm2d(2).float().eval()
    ref_bn_f = deepcopy(bn_mix)
    out_bf = bn_mix(input_bf)
    ref_out_bf = ref_bn_f(input_f)
    assert_equal(ref_out_bf, out_bf.float(), atol=0.05, rtol=0.05)


def _nhwc_helper(
    mod: type[nn.Module],
    size: tuple[int, ...],
    dtype: torch.dtype,
    mixed_dtype: bool,
    fmt: torch.memory_format,
    precision: float | None = None,
) -> None:
    channels = size[1]
    input = torch.randn(size, dtype=dtype, requires_grad=True)
    input = input.contiguous(memory_format=fmt).to(dtype)
    input.retain_grad()
    grad = torch.randn(size, dtype=dtype)
    grad = grad.contiguous(memory_format=fmt)
    bn = mod(channels).to(dtype)
    bn.weight.data.uniform_()
    bn.bias.data.uniform_()

    ref_input = input.detach().clone().contiguous().requires_grad_(True)
    ref_grad = grad.detach().clone().contiguous()
    ref_bn = mod(channels).to(dtype)
    ref_bn.load_state_dict(bn.state_dict())

    if mixed_dtype:
        bn.float()
        ref_bn.float()

    out = bn(input)
    out.backward(grad)
    ref_out = ref_bn(ref_input)
    ref_out.backward(ref_grad)

    assert out.is_contiguous(memory_format=fmt)
    assert ref_out.is_contiguous()
    assert_equal(out, ref_out)
    assert_equal(bn.weight.grad, ref_bn.weight.grad, atol=precision, rtol=precision)
    assert_equal(bn.bias.grad, ref_bn.bias.grad)
    assert_equal(input.grad, ref_input.grad)


@pytest.mark.parametrize("dtype", [torch.float, torch.double, torch.bfloat16, torch.float16])
def test_batchnorm_nhwc_cpu(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    # test NC11 and N1HW; test mixed dtype
    for shape in [(4, 8, 10, 10), (4, 1, 9, 9), (4, 9, 1, 1)]:
        for mixed_dtype in [False, True]:
            if dtype in (torch.float, torch.double):
                mixed_dtype = False
            _nhwc_helper(bnn.BatchNorm2d, shape, dtype, mixed_dtype, torch.channels_last)

    precisions = {torch.float: 1e-4, torch.double: None, torch.bfloat16: 1e-4, torch.float16: None}
    for shape in [(4, 8, 2, 10, 10), (4, 1, 2, 9, 9), (4, 9, 1, 1, 1)]:
        for mixed_dtype in [False, True]:
            if dtype in (torch.float, torch.double):
                mixed_dtype = False
            _nhwc_helper(
                bnn.BatchNorm3d,
                shape,
                dtype,
                mixed_dtype,
                torch.channels_last_3d,
                precisions[dtype],
            )


def test_batchnorm_load_state_dict() -> None:
    bn = bnn.BatchNorm2d(3)
    assert_equal(bn.state_dict()["num_batches_tracked"], torch.tensor(0))

    bn.num_batches_tracked = torch.tensor(10)
    assert_equal(bn.state_dict()["num_batches_tracked"], torch.tensor(10))

    empty_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    bn.load_state_dict(empty_dict, strict=False)
    assert_equal(bn.state_dict()["num_batches_tracked"], torch.tensor(10))

    # when `num_batches_tracked` is not in the loaded state_dict, a meta
    # num_batches_tracked is still replaced with a singleton 0 tensor
    with torch.device("meta"):
        meta_bn = bnn.BatchNorm2d(3)
    assert meta_bn.num_batches_tracked.device == torch.device("meta")
    meta_bn.load_state_dict(empty_dict, assign=True, strict=False)
    assert_equal(meta_bn.state_dict()["num_batches_tracked"], torch.tensor(0))


def test_batchnorm_buffer_update_when_stats_are_not_tracked() -> None:
    input_size = (32, 4)
    # Instantiate BN with buffers that are not None
    bn = bnn.BatchNorm1d(input_size[1], track_running_stats=True)
    # Use buffers for normalization but don't update them
    bn.track_running_stats = False
    # Store initial values
    num_batches = bn.num_batches_tracked.clone()
    running_mean = bn.running_mean.clone()
    running_var = bn.running_var.clone()
    # Forward random tensor
    _ = bn(torch.rand(input_size))
    # Ensure none of the buffers has been updated
    assert torch.equal(num_batches, bn.num_batches_tracked)
    assert torch.equal(running_mean, bn.running_mean)
    assert torch.equal(running_var, bn.running_var)


def test_batchnorm_raises_error_if_less_than_one_value_per_channel() -> None:
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError):
        bnn.BatchNorm1d(10)(x)


def test_batchnorm_raises_error_if_running_mean_is_not_same_size_as_input() -> None:
    input = torch.rand(2, 10)
    running_var = torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            BF.batch_norm(input, torch.rand(size), running_var)


def test_batchnorm_raises_error_if_running_var_is_not_same_size_as_input() -> None:
    input = torch.rand(2, 10)
    running_mean = torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            BF.batch_norm(input, running_mean, torch.rand(size))


def test_batchnorm_raises_error_if_weight_is_not_same_size_as_input() -> None:
    input = torch.rand(2, 10)
    running_mean = torch.rand(10)
    running_var = torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            BF.batch_norm(input, running_mean, running_var, weight=Parameter(torch.rand(size)))


def test_batchnorm_raises_error_if_bias_is_not_same_size_as_input() -> None:
    input = torch.rand(2, 10)
    running_mean = torch.rand(10)
    running_var = torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            BF.batch_norm(input, running_mean, running_var, bias=Parameter(torch.rand(size)))


def test_batchnorm_layers_are_torch_batchnorms_to_torch_tooling() -> None:
    """Helpers that look for batch norms by type find bncore's layers: fusing a conv with
    the BN that follows (torch.nn.utils.fusion) and SyncBatchNorm conversion."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for ours, theirs in ((bnn.BatchNorm1d, nn.BatchNorm1d), (bnn.BatchNorm2d, nn.BatchNorm2d)):
        assert isinstance(ours(3), theirs)
        assert isinstance(ours(3), nn.modules.batchnorm._BatchNorm)
    conv, bn = nn.Conv2d(2, 3, 3).eval(), bnn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    x = torch.randn(2, 2, 5, 5)
    assert_equal(fuse_conv_bn_eval(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), bnn.BatchNorm2d(3))
    assert isinstance(nn.SyncBatchNorm.convert_sync_batchnorm(model)[1], nn.SyncBatchNorm)


def test_batchnorm_pickle_and_repr() -> None:
    """A saved layer loads back as bncore's (pickle), printing like torch's."""
    bn = bnn.BatchNorm2d(3, eps=1e-3, momentum=None, bias=False)
    buf = io.BytesIO()
    torch.save(bn, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is bnn.BatchNorm2d
    assert repr(loaded) == repr(nn.BatchNorm2d(3, eps=1e-3, momentum=None, bias=False))
