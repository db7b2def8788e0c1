"""bncore.functional.batch_norm against torch.nn.functional.batch_norm (eager backend)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bncore import functional as BF


@pytest.fixture(autouse=True)
def eager_backend() -> Iterator[None]:
    before = BF.get_backend()
    BF.set_backend("eager")
    yield
    BF.set_backend(before)


def _inputs(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 1
    w = torch.randn(c, generator=g, dtype=dtype)
    b = torch.randn(c, generator=g, dtype=dtype)
    rm = torch.randn(c, generator=g, dtype=dtype)
    rv = torch.rand(c, generator=g, dtype=dtype) + 0.5
    return x, w, b, rm, rv


def _channels_last(dim: int) -> torch.memory_format:
    return torch.channels_last if dim == 4 else torch.channels_last_3d


def _run_both(
    shape: tuple[int, ...],
    training: bool,
    affine: bool = True,
    running: bool = True,
    dtype: torch.dtype = torch.float64,
    channels_last: bool = False,
    seed: int = 0,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Forward + backward through both implementations; returns their outputs side by side."""
    results = []
    for fn in (BF.batch_norm, F.batch_norm):
        x, w, b, rm, rv = _inputs(shape, dtype, seed)
        if channels_last:
            x = x.contiguous(memory_format=_channels_last(x.dim()))
        x.requires_grad_(True)
        w, b = (w.requires_grad_(True), b.requires_grad_(True)) if affine else (None, None)
        rm_, rv_ = (rm, rv) if running else (None, None)
        y = fn(x, rm_, rv_, w, b, training, 0.1, 1e-5)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
        y.backward(dy)
        results.append([y, x.grad, w.grad if affine else None, b.grad if affine else None, rm, rv])
    return results[0], results[1]


def _assert_close(a: list, b: list, tol: float) -> None:
    for u, v in zip(a, b, strict=True):
        if u is None or v is None:
            assert u is None and v is None
        else:
            torch.testing.assert_close(u, v, atol=tol, rtol=tol)


shapes = st.one_of(
    st.tuples(st.integers(2, 9), st.integers(1, 5)),
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(2, 6)),
    st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(2, 5)),
    st.tuples(*(st.integers(1, 3),) * 2, *(st.integers(2, 3),) * 3),
)


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    training=st.booleans(),
    affine=st.booleans(),
    running=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_matches_torch_float64(
    shape: tuple[int, ...], training: bool, affine: bool, running: bool, seed: int
) -> None:
    if not training and not running:
        running = True  # eval needs statistics
    ours, ref = _run_both(shape, training, affine, running, seed=seed)
    _assert_close(ours, ref, 1e-10)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 4, 3, 6), (2, 3, 2, 3, 4)])
def test_channels_last_matches_and_keeps_format(shape: tuple[int, ...], training: bool) -> None:
    ours, ref = _run_both(shape, training, channels_last=True)
    _assert_close(ours, ref, 1e-10)
    fmt = _channels_last(len(shape))
    assert ours[0].is_contiguous(memory_format=fmt)
    assert ours[1].is_contiguous(memory_format=fmt)  # dx too


@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [((7, 5), False), ((3, 4, 2, 2), False), ((3, 4, 5, 6), False), ((3, 4, 5, 6), True),
     ((2, 3, 17), False), ((2, 3, 2, 3, 4), True)],
)  # fmt: skip
def test_inference_matches_torch_without_an_autograd_node(
    shape: tuple[int, ...], channels_last: bool
) -> None:
    """Eval with nothing to differentiate skips the autograd Function; spatial planes of 16+
    positions take the expanded-coefficient path, smaller ones the broadcast one."""
    x, w, b, rm, rv = _inputs(shape)
    if channels_last:
        x = x.contiguous(memory_format=_channels_last(x.dim()))
    for affine in (True, False):
        wb = (w, b) if affine else (None, None)
        ref = F.batch_norm(x, rm, rv, *wb, False, 0.1, 1e-5)
        with torch.no_grad():
            y = BF.batch_norm(x, rm, rv, *wb, False, 0.1, 1e-5)
        torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
        assert y.grad_fn is None
        assert y.stride() == ref.stride()  # same memory format as torch's output
        # Grad mode on, but no input requires a gradient: the same path.
        assert BF.batch_norm(x, rm, rv, *wb, False, 0.1, 1e-5).grad_fn is None


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(64, 10), (8, 6, 5, 7)])
def test_float32(shape: tuple[int, ...], training: bool) -> None:
    ours, ref = _run_both(shape, training, dtype=torch.float32)
    _assert_close(ours, ref, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float32(dtype: torch.dtype) -> None:
    x64, w, b, rm, rv = _inputs((16, 4, 5, 5))
    x = x64.to(dtype)
    y = BF.batch_norm(x, rm.float(), rv.float(), w.float(), b.float(), True)
    ref = F.batch_norm(x.double(), None, None, w, b, True)  # exact stats of the rounded x
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, atol=0.05, rtol=0.02)


def test_gradcheck_training_and_eval() -> None:
    x, w, b, rm, rv = _inputs((4, 3, 5))
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, w, b: BF.batch_norm(x, None, None, w, b, True), args)
    assert torch.autograd.gradcheck(lambda x, w, b: BF.batch_norm(x, rm, rv, w, b, False), args)
    assert torch.autograd.gradcheck(lambda x: BF.batch_norm(x, None, None, None, None, True), x)


def test_training_backward_of_a_large_input_matches_torch() -> None:
    """Above _FEW_OPS_MAX_NUMEL elements the training backward takes its single-pass form
    dx = k·dy + a·x + b (a = −k·invstd·Σ(dy·x̂)/m, b = −a·μ − k·Σdy/m); against torch in
    float64, on inputs whose mean is far from 0 (b's −a·μ term matters)."""
    from bncore import _math

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, 12, 12, generator=g, dtype=torch.float64) * 3 + 5
    assert x.numel() > _math._FEW_OPS_MAX_NUMEL
    w = torch.rand(16, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(16, generator=g, dtype=torch.float64)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64) + 0.3
    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    BF.batch_norm(ours[0], None, None, ours[1], ours[2], True).backward(dy)
    F.batch_norm(ref[0], None, None, ref[1], ref[2], True).backward(dy)
    for got, expected in zip(ours, ref, strict=True):
        torch.testing.assert_close(got.grad, expected.grad, rtol=0, atol=1e-10)


def test_backward_is_the_custom_function() -> None:
    x, w, b, _, _ = _inputs((4, 3))
    y = BF.batch_norm(x.requires_grad_(), None, None, w.requires_grad_(), b, True)
    assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"
    assert y.grad_fn._forward_cls is BF.BatchNormFunction  # type: ignore[union-attr]
    # Its inputs are x and w directly: no autograd-generated ops in between.
    assert {type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None} == {
        "AccumulateGrad"
    }


def test_param_grads_only_when_required() -> None:
    x, w, b, _, _ = _inputs((4, 3))
    x.requires_grad_()
    y = BF.batch_norm(x, None, None, w, b, True)
    y.sum().backward()
    assert w.grad is None and b.grad is None and x.grad is not None
    x.grad = None
    w.requires_grad_()
    BF.batch_norm(x, None, None, w, b, True).pow(2).sum().backward()
    assert w.grad is not None and b.grad is None


def test_single_value_per_channel_error_matches_torch() -> None:
    x = torch.randn(1, 3)
    with pytest.raises(ValueError) as ref:
        F.batch_norm(x, None, None, training=True)
    with pytest.raises(ValueError) as ours:
        BF.batch_norm(x, None, None, training=True)
    assert str(ours.value) == str(ref.value)
    assert "Expected more than 1 value per channel when training" in str(ours.value)
    BF.batch_norm(torch.randn(1, 3, 2), None, None, training=True)  # 2 values: fine


def test_backend_validation() -> None:
    with pytest.raises(ValueError):
        BF.set_backend("fast")
    with pytest.raises(ValueError):
        BF.batch_norm(torch.randn(4, 2), None, None, training=True, backend="fast")
