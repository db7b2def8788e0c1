"""bncore.functional.batch_norm under torch's OpInfo samples and functorch's batch-norm patterns.

Ported from PyTorch: the OpInfo ``nn.functional.batch_norm`` (its ``sample_inputs_batch_norm``
cases; consistency with ``F.batch_norm``, gradcheck with batched gradients, gradgradcheck with
forward-over-reverse, forward-mode AD, as ``supports_forward_ad`` / ``supports_fwgrad_bwgrad``
promise) and functorch's patterns (test/functorch/test_eager_transforms.py and test_vmap.py:
``torch.func.grad``, ``vmap`` with batched and unbatched running statistics, per-sample
gradients with ``functional_call``, ``replace_all_batch_norm_modules_``, ``jvp``, ``jacrev``,
``jacfwd``). ``torch.nn.functional`` / ``torch.nn`` is the oracle throughout.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import (
    functional_call,
    grad,
    jacfwd,
    jacrev,
    jvp,
    replace_all_batch_norm_modules_,
    vmap,
)
from torch.testing import make_tensor

from bncore import functional as BF
from bncore.nn import BatchNorm1d, BatchNorm2d

# The compiled backend compiles every variant (seconds each): opt in with BNCORE_TEST_COMPILED=1.
RUN_COMPILED = os.environ.get("BNCORE_TEST_COMPILED") == "1" and BF.compiled_available("cpu")
BACKENDS = ["eager", "compiled"] if RUN_COMPILED else ["eager"]
TOL = {"atol": 1e-10, "rtol": 1e-10}


@pytest.fixture(autouse=True)
def eager_backend() -> Iterator[None]:
    before = BF.get_backend()
    BF.set_backend("eager")
    yield
    BF.set_backend(before)


# (input shape, kwargs) as in torch's sample_inputs_batch_norm (S = 5 there; 3 here, for speed)
OPINFO_CASES: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    ((3, 3, 3), {"training": True, "momentum": 0.5, "eps": 0.6}),
    ((3, 2, 4), {"training": False, "momentum": -1.2}),
    ((3, 1), {"training": True, "momentum": 0.0}),
    ((0,), {"training": True}),
    ((0,), {"training": False}),
    ((3, 2, 3, 4), {"training": True, "momentum": -1.0, "eps": 0.5}),
    ((3, 2, 3, 4), {"training": False, "momentum": -1.0, "eps": 0.5}),
    ((2, 1), {}),
]


def _sample(shape: tuple[int, ...], affine: bool = True, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(input, running_mean, running_var, weight, bias) as torch's sample function makes them."""
    torch.manual_seed(seed)
    make = partial(make_tensor, device="cpu", dtype=torch.float64)
    channels = shape[1] if len(shape) > 1 else 0
    x = make(shape, requires_grad=True)
    w = make(channels, requires_grad=True) if channels > 0 and affine else None
    b = make(channels, requires_grad=True) if channels > 0 and affine else None
    rm = make(channels, low=0)
    rv = make(channels, low=0)
    return x, rm, rv, w, b


def _grad_inputs(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None) -> list:
    return [t for t in (x, w, b) if t is not None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "kwargs"), OPINFO_CASES)
def test_opinfo_consistency_with_f_batch_norm(
    shape: tuple[int, ...], kwargs: dict[str, Any], backend: str
) -> None:
    """Output, running statistics and gradients agree with F.batch_norm (float64)."""
    if backend == "compiled" and (len(shape) < 2 or shape[0] == 0):
        pytest.skip("empty inputs never reach the compiled math")
    results = []
    for fn in (partial(BF.batch_norm, backend=backend), F.batch_norm):
        x, rm, rv, w, b = _sample(shape)
        y = fn(x, rm, rv, w, b, **kwargs)
        dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
        inputs = _grad_inputs(x, w, b)
        grads = torch.autograd.grad(y, inputs, dy, allow_unused=True)
        results.append([y, rm, rv, *grads])
    for ours, ref in zip(*results, strict=True):
        torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize(("shape", "kwargs"), OPINFO_CASES)
def test_opinfo_gradcheck_batched_and_forward_ad(shape: tuple[int, ...], kwargs: dict) -> None:
    """torch's default gradcheck (batched gradients on) plus forward-mode AD."""
    x, rm, rv, w, b = _sample(shape)

    def fn(*inputs: torch.Tensor) -> torch.Tensor:
        return BF.batch_norm(inputs[0], rm.clone(), rv.clone(), *inputs[1:], **kwargs)

    assert gradcheck(
        fn,
        _grad_inputs(x, w, b),
        check_batched_grad=True,
        check_forward_ad=True,
        check_backward_ad=True,
        check_undefined_grad=True,
    )


@pytest.mark.parametrize(("shape", "kwargs"), OPINFO_CASES)
def test_opinfo_gradgradcheck_with_forward_over_reverse(
    shape: tuple[int, ...], kwargs: dict
) -> None:
    x, rm, rv, w, b = _sample(shape)

    def fn(*inputs: torch.Tensor) -> torch.Tensor:
        return BF.batch_norm(inputs[0], rm.clone(), rv.clone(), *inputs[1:], **kwargs)

    assert gradgradcheck(
        fn, _grad_inputs(x, w, b), check_batched_grad=True, check_fwd_over_rev=True
    )


def test_opinfo_weight_and_bias_none_permutations() -> None:
    """The sample function's last cases: weight/bias present or absent, train and eval."""
    for training in (True, False, False):
        for affine in (True, False):
            x, rm, rv, w, b = _sample((3, 2, 3, 4), affine=affine, seed=2)
            ref_rm, ref_rv = rm.clone(), rv.clone()
            y = BF.batch_norm(x, rm, rv, w, b, training=training)
            ref = F.batch_norm(x, ref_rm, ref_rv, w, b, training=training)
            torch.testing.assert_close(y, ref, **TOL)
            torch.testing.assert_close(rm, ref_rm, **TOL)


def test_second_derivative_matches_torch() -> None:
    """A gradient penalty: d/dx ‖∂L/∂x‖² through the backward (create_graph=True)."""
    results = []
    for fn in (BF.batch_norm, F.batch_norm):
        x, _, _, w, b = _sample((6, 3, 2))
        y = fn(x, None, None, w, b, training=True)
        (gx,) = torch.autograd.grad((y.sin() * y).sum(), x, create_graph=True)
        penalty = gx.square().sum()
        results.append(torch.autograd.grad(penalty, [x, w, b]))
    for ours, ref in zip(*results, strict=True):
        torch.testing.assert_close(ours, ref, **TOL)


def test_vmap_over_the_backward_is_grads_batched() -> None:
    x, _, _, w, b = _sample((5, 3, 2))
    dys = torch.randn(4, 5, 3, 2, dtype=torch.float64)
    grads = []
    for fn in (BF.batch_norm, F.batch_norm):
        y = fn(x, None, None, w, b, training=True)
        grads.append(torch.autograd.grad(y, [x, w, b], dys, is_grads_batched=True))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, **TOL)


def test_forward_ad_in_eval_raises_for_running_stat_tangents_like_torch() -> None:
    """test_nn.py's test_batchnorm_raises_error_if_running_var_or_running_mean_have_forward_grad."""
    torch.manual_seed(0)
    args = tuple(torch.randn(s) for s in ((3, 2, 5), (2,), (2,), (2,), (2,)))
    for dual_indices in ((0,), (1,), (1, 2), (0, 1), (0, 1, 2)):
        tangents = tuple(torch.rand_like(a) for a in args)
        with fwAD.dual_level():
            duals = [
                fwAD.make_dual(p, t) if i in dual_indices else p
                for i, (p, t) in enumerate(zip(args, tangents, strict=True))
            ]
            fn = partial(BF.batch_norm, training=False, momentum=-1.2)
            if (1 in dual_indices or 2 in dual_indices) and 0 in dual_indices:
                with pytest.raises(RuntimeError, match="not differentiable wrt running_mean"):
                    fn(*duals)
            else:
                y = fn(*duals)
                if 0 not in dual_indices:  # tangents on the statistics alone reach nothing
                    assert fwAD.unpack_dual(y).tangent is None


@pytest.mark.parametrize("training", [True, False])
def test_jvp_jacrev_jacfwd_match_torch(training: bool) -> None:
    x, rm, rv, w, b = (t.detach() if t is not None else None for t in _sample((4, 3, 2)))
    t = torch.randn_like(x)

    def ours(x: torch.Tensor) -> torch.Tensor:
        return BF.batch_norm(x, rm.clone(), rv.clone(), w, b, training)

    def ref(x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, rm.clone(), rv.clone(), w, b, training)

    torch.testing.assert_close(jvp(ours, (x,), (t,)), jvp(ref, (x,), (t,)), **TOL)
    torch.testing.assert_close(jacrev(ours)(x), jacrev(ref)(x), **TOL)
    torch.testing.assert_close(jacfwd(ours)(x), jacfwd(ref)(x), **TOL)


def test_vmap_with_batched_running_stats_updates_each() -> None:
    """functorch's test_vmap pattern: running stats batched along with the input."""
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    outs, stats = [], []
    for fn in (BF.batch_norm, F.batch_norm):
        rm, rv = torch.zeros(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64)
        outs.append(vmap(partial(fn, training=True))(x, rm, rv))
        stats.append((rm, rv))
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    torch.testing.assert_close(stats[0], stats[1], **TOL)


def test_vmap_with_unbatched_running_stats_raises_like_torch() -> None:
    x = torch.randn(4, 6, 3)
    for layer in (BatchNorm1d(3), nn.BatchNorm1d(3)):
        with pytest.raises(RuntimeError, match="Batch norm got a batched tensor as input"):
            vmap(layer)(x)
    for layer in (BatchNorm1d(3), nn.BatchNorm1d(3)):  # eval: nothing is written, fine
        layer.eval()
        vmap(layer)(x)


def _net(bn: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), bn(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).double()


def test_per_sample_grads_with_functional_call_and_replaced_batch_norms() -> None:
    """functorch's per-sample-gradient recipe: replace_all_batch_norm_modules_, then
    vmap(grad(loss)) over functional_call; bncore layers are found and patched like torch's."""
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    target = torch.randint(0, 3, (5,))
    results = []
    for bn in (BatchNorm2d, nn.BatchNorm2d):
        model = replace_all_batch_norm_modules_(_net(bn))
        assert model[1].running_mean is None and not model[1].track_running_stats
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p: dict, xi: torch.Tensor, ti: torch.Tensor, model: nn.Module = model) -> Any:
            out = functional_call(model, p, (xi.unsqueeze(0).expand(2, -1, -1, -1),))
            return F.cross_entropy(out, ti.expand(2))

        results.append(vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target))
    for name in results[1]:
        torch.testing.assert_close(results[0][name], results[1][name], **TOL)


def test_grad_of_functional_call_in_training_and_eval() -> None:
    """torch.func.grad through a model with bncore layers, buffers passed in functionally."""
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
    for training in (True, False):
        grads, buffers = [], []
        for bn in (BatchNorm2d, nn.BatchNorm2d):
            model = _net(bn).train(training)
            params = {k: v.detach() for k, v in model.named_parameters()}
            bufs = {k: v.clone() for k, v in model.named_buffers()}
            if training:  # the counter update is an in-place write the transform refuses
                bufs = {k: v for k, v in bufs.items() if "num_batches" not in k}
                model[1].momentum = 0.1
                model[1].num_batches_tracked = None

            def loss(p: dict, model: nn.Module = model, bufs: dict = bufs) -> torch.Tensor:
                return functional_call(model, {**p, **bufs}, (x,)).square().mean()

            grads.append(grad(loss)(params))
            buffers.append(bufs)
        for name in grads[1]:
            torch.testing.assert_close(grads[0][name], grads[1][name], **TOL)
        for name in buffers[1]:
            torch.testing.assert_close(buffers[0][name], buffers[1][name], **TOL)


def test_deepcopy_and_hessian_of_a_small_input() -> None:
    """torch.func.hessian (forward over reverse) agrees with torch's."""
    x = torch.randn(3, 2, dtype=torch.float64)
    w = torch.rand(2, dtype=torch.float64) + 0.5
    hs = []
    for fn in (BF.batch_norm, F.batch_norm):
        f = copy.deepcopy(fn)
        hs.append(torch.func.hessian(lambda x, f=f: f(x, None, None, w, None, True).sin().sum())(x))
    torch.testing.assert_close(hs[0], hs[1], **TOL)
