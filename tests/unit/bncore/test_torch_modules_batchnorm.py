"""PyTorch's test/test_modules.py for BatchNorm1d/2d/3d, run against bncore's layers.

The cases are torch's ``ModuleInfo`` inputs (``module_inputs_torch_nn_BatchNorm{1,2,3}d`` and
``module_error_inputs_torch_nn_BatchNorm1d_2d_3d`` in torch/testing/_internal/common_modules.py),
copied here because that module needs torch's test-only dependencies. The checks follow
``TestModule``: forward (against ``torch.nn``, the oracle, in train and eval, buffers too), grad
and gradgrad (torch's gradcheck defaults: batched gradients on), non-contiguous inputs and
gradients, memory formats, pickling, factory kwargs, train/eval and errors. Inputs are torch's
``make_tensor`` in float64 unless a check is about another dtype. With BNCORE_TEST_COMPILED=1
the forward/backward parity also runs with the compiled backend (first input of each layer,
training).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.testing import make_tensor

from bncore import functional as BF
from bncore import nn as bnn

# The compiled backend compiles every variant (seconds each): opt in with BNCORE_TEST_COMPILED=1.
RUN_COMPILED = os.environ.get("BNCORE_TEST_COMPILED") == "1" and BF.compiled_available("cpu")
TOL = {"atol": 1e-10, "rtol": 1e-10}


@dataclass(frozen=True)
class Case:
    ours: type[nn.Module]
    theirs: type[nn.Module]
    desc: str
    shape: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.theirs.__name__}-{self.desc}"


def _cases() -> list[Case]:
    b1, b2, b3 = (
        (bnn.BatchNorm1d, nn.BatchNorm1d),
        (bnn.BatchNorm2d, nn.BatchNorm2d),
        (
            bnn.BatchNorm3d,
            nn.BatchNorm3d,
        ),
    )
    s2, s3 = (2, 3, 6, 6), (2, 3, 4, 4, 4)
    return [
        Case(*b1, "affine", (4, 10), (10,)),
        Case(*b1, "3d_input", (4, 5, 3), (5,)),
        Case(*b1, "affine_simple_average", (4, 10), (10, 1e-3, None)),
        Case(*b1, "not_affine", (4, 10), (10, 1e-3, 0.3, False)),
        Case(*b1, "not_tracking_stats", (4, 10), (10, 1e-3, 0.3, True, False)),
        Case(*b1, "3d_input_not_affine", (4, 5, 3), (5, 1e-3, 0.3, False)),
        Case(*b1, "zero_batch", (0, 5, 9), (5, 1e-3, 0.3, False)),
        Case(*b1, "affine_not_bias", (4, 10), (10,), {"bias": False}),
        Case(*b2, "default", s2, (3,)),
        Case(*b2, "2d_simple_average", s2, (3, 1e-3, None)),
        Case(*b2, "momentum", s2, (3, 1e-3, 0.8)),
        Case(*b2, "not_affine", s2, (3, 1e-3, 0.8, False)),
        Case(*b2, "not_tracking_stats", s2, (3, 1e-3, 0.8, True, False)),
        Case(*b2, "zero_batch", (0, 5, 2, 2), (5, 1e-3, 0.3, False)),
        Case(*b2, "affine_not_bias", s2, (3,), {"bias": False}),
        Case(*b3, "default", s3, (3,)),
        Case(*b3, "3d_simple_average", s3, (3, 1e-3, None)),
        Case(*b3, "momentum", s3, (3, 1e-3, 0.7)),
        Case(*b3, "not_affine", s3, (3, 1e-3, 0.7, False)),
        Case(*b3, "not_tracking_stats", s3, (3, 1e-3, 0.7, True, False)),
        Case(*b3, "zero_batch", (0, 5, 2, 2, 2), (5, 1e-3, 0.3, False)),
        Case(*b3, "affine_not_bias", s3, (3,), {"bias": False}),
    ]


CASES = _cases()
FIRST_OF_EACH = {str(c) for c in CASES if c.desc in ("affine", "default")}
PARITY = [
    pytest.param(case, backend, id=f"{case}-{backend}")
    for case in CASES
    for backend in ("eager", "compiled")
    if backend == "eager" or (RUN_COMPILED and str(case) in FIRST_OF_EACH)
]


@pytest.fixture(autouse=True)
def eager_by_default() -> Iterator[None]:
    before = BF.get_backend()
    BF.set_backend("eager")
    yield
    BF.set_backend(before)


def _pair(case: Case, training: bool, dtype: torch.dtype = torch.float64) -> tuple[Any, Any]:
    """Both layers with torch's state, made non-trivial (random affine and running stats)."""
    torch.manual_seed(0)
    theirs = case.theirs(*case.args, **case.kwargs, dtype=dtype)
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
        if theirs.running_mean is not None:
            theirs.running_mean.uniform_(-1, 1)
            theirs.running_var.uniform_(0.5, 2)
    ours = case.ours(*case.args, **case.kwargs, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours.train(training), theirs.train(training)


def _input(case: Case, seed: int, **kw: Any) -> torch.Tensor:
    torch.manual_seed(seed)
    return make_tensor(case.shape, device="cpu", dtype=kw.pop("dtype", torch.float64), **kw)


def _step(mod: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    mod.zero_grad()
    y = mod(x)
    y.backward(dy)
    return [y, x.grad, *(p.grad for p in mod.parameters()), *mod.state_dict().values()]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("case", "backend"), PARITY)
def test_forward_and_backward_match_torch(case: Case, backend: str, training: bool) -> None:
    """TestModule.test_forward with torch.nn as the reference, over two steps (so cumulative
    averages and num_batches_tracked advance), gradients and every state-dict entry too."""
    if backend == "compiled" and not training:
        pytest.skip("the compiled parity runs in training only (compiling is slow)")
    ours, theirs = _pair(case, training)
    ours.backend = backend
    for step in range(2):
        x = _input(case, seed=step)
        dy = _input(case, seed=10 + step)
        for a, b in zip(_step(ours, x, dy), _step(theirs, x, dy), strict=True):
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_forward_matches_torch(case: Case, training: bool) -> None:
    ours, theirs = _pair(case, training, torch.float32)
    x = _input(case, seed=0, dtype=torch.float32)
    torch.testing.assert_close(ours(x), theirs(x))
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def _flat_fn(mod: nn.Module) -> tuple[Any, list[torch.Tensor]]:
    params = [p for p in mod.parameters()]

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            mod, {n: p for (n, _), p in zip(mod.named_parameters(), ps, strict=True)}, (x,)
        )

    return fn, params


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_grad_and_gradgrad(case: Case, training: bool) -> None:
    """TestModule.test_grad / test_gradgrad with torch's gradcheck defaults."""
    if case.shape[0] == 0:
        pytest.skip("no elements: nothing to check numerically (test_zero_batch covers it)")
    ours, _ = _pair(case, training)
    fn, params = _flat_fn(ours)
    x = _input(case, seed=0, requires_grad=True)
    inputs = (x, *(p.detach().requires_grad_(True) for p in params))
    assert gradcheck(fn, inputs, check_batched_grad=True, fast_mode=True)
    assert gradgradcheck(fn, inputs, check_batched_grad=True, fast_mode=True)


@pytest.mark.parametrize("case", [c for c in CASES if c.shape[0] == 0], ids=str)
def test_zero_batch_like_torch(case: Case) -> None:
    for training in (True, False):
        ours, theirs = _pair(case, training)
        x = _input(case, seed=0)
        dy = torch.empty(case.shape, dtype=torch.float64)
        for a, b in zip(_step(ours, x, dy), _step(theirs, x, dy), strict=True):
            torch.testing.assert_close(a, b, **TOL)


def _noncontiguous_like(t: torch.Tensor) -> torch.Tensor:
    """The same values in every other element of a twice-as-long last dim (torch's
    common_utils.noncontiguous_like)."""
    return t.repeat_interleave(2, dim=-1)[..., ::2]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_non_contiguous_tensors(case: Case, training: bool) -> None:
    """Non-contiguous input and output gradient give the contiguous results."""
    results = []
    for noncontiguous in (False, True):
        ours, _ = _pair(case, training)
        x, dy = _input(case, seed=0), _input(case, seed=1)
        if noncontiguous:
            x, dy = _noncontiguous_like(x), _noncontiguous_like(dy)
            assert not x.is_contiguous() or x.numel() == 0
        results.append(_step(ours, x, dy))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", [c for c in CASES if len(c.shape) in (4, 5)], ids=str)
def test_memory_format(case: Case, training: bool) -> None:
    """channels_last input and module: same numbers, output stays channels_last."""
    fmt = torch.channels_last if len(case.shape) == 4 else torch.channels_last_3d
    x, dy = _input(case, seed=0), _input(case, seed=1)
    ref = _step(_pair(case, training)[0], x, dy)
    ours = _pair(case, training)[0].to(memory_format=fmt)
    x_cl = x.contiguous(memory_format=fmt).requires_grad_(True)
    y = ours(x_cl)
    y.backward(dy.contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt)
    got = [y, x_cl.grad, *(p.grad for p in ours.parameters()), *ours.state_dict().values()]
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_pickle(case: Case) -> None:
    ours, _ = _pair(case, training=True)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is case.ours
    x = _input(case, seed=0)
    torch.testing.assert_close(loaded(x), ours(x), **TOL)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_factory_kwargs(case: Case) -> None:
    """dtype and device reach every parameter and buffer (num_batches_tracked stays long),
    and the meta device makes no storage, like torch's."""
    for dtype in (torch.float32, torch.float64):
        ours = case.ours(*case.args, **case.kwargs, device="cpu", dtype=dtype)
        theirs = case.theirs(*case.args, **case.kwargs, device="cpu", dtype=dtype)
        got = {n: (t.dtype, t.device, t.shape) for n, t in ours.state_dict().items()}
        want = {n: (t.dtype, t.device, t.shape) for n, t in theirs.state_dict().items()}
        assert got == want
    meta = case.ours(*case.args, **case.kwargs, device="meta")
    assert all(t.is_meta for t in meta.state_dict().values())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_train_eval_and_repr(case: Case) -> None:
    ours, theirs = _pair(case, training=True)
    for mode in (False, True):
        assert ours.train(mode).training is mode
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls", [bnn.BatchNorm1d, bnn.BatchNorm2d, bnn.BatchNorm3d])
def test_errors(cls: type[nn.Module], training: bool) -> None:
    """module_error_inputs_torch_nn_BatchNorm1d_2d_3d: eps must be positive (in training; in
    eval torch only refuses a negative eps), plus the wrong-rank input torch refuses."""
    shape = {bnn.BatchNorm1d: (2, 10), bnn.BatchNorm2d: (2, 10, 5, 5)}.get(cls, (2, 10, 4, 4, 4))
    x = make_tensor(shape, device="cpu", dtype=torch.float64)
    for eps in (-1.0, 0.0):
        layer = cls(10, eps=eps).train(training)
        if training:
            with pytest.raises(ValueError, match="eps must be positive"):
                layer(x)
        elif eps < 0:
            with pytest.raises(ValueError, match="eps must be non-negative"):
                layer(x)
    with pytest.raises(ValueError, match="expected .*D input"):
        cls(10)(x[0])
