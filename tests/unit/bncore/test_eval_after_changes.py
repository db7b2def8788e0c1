"""Eval mode sees every change to a layer's statistics and parameters.

Each test evaluates twice, changes the layer in one of the ways a model's statistics and
parameters change, and checks eval against torch.nn.BatchNorm2d in float64 at 1e-10, on the
Python path ("eager") and the C++ operator ("cpp"). A guard for any eval shortcut: bncore
once cached the eval coefficients keyed on the tensors' version counters, which cannot see
writes through ``.data`` or torch.distributed collectives (DDP's buffer broadcast); it was
dropped for that, and the tests below fail for such a cache.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from bncore import functional as BF
from bncore.nn import BatchNorm1d, BatchNorm2d

SHAPE = (3, 4, 5, 6)
TOL = {"rtol": 0.0, "atol": 1e-10}


def _pair(backend: str) -> tuple[BatchNorm2d, nn.BatchNorm2d]:
    g = torch.Generator().manual_seed(0)
    ref = nn.BatchNorm2d(4, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(4, generator=g, dtype=torch.float64) + 0.5)
        ref.bias.copy_(torch.randn(4, generator=g, dtype=torch.float64))
        ref.running_mean.copy_(torch.randn(4, generator=g, dtype=torch.float64))
        ref.running_var.copy_(torch.rand(4, generator=g, dtype=torch.float64) + 0.5)
    ours = BatchNorm2d(4, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    ours.backend = backend
    return ours, ref


def _x(seed: int = 1, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5


def _eval_matches(ours: nn.Module, ref: nn.Module, x: torch.Tensor | None = None) -> None:
    """Two inference calls each, equal to torch's."""
    x = _x() if x is None else x
    ours.eval()
    ref.eval()
    with torch.no_grad():
        expected = ref(x)
        for _ in range(2):
            torch.testing.assert_close(ours(x), expected, **TOL)


def _both(ours: nn.Module, ref: nn.Module, change: Callable[[nn.Module], object]) -> None:
    for module in (ours, ref):
        change(module)


@pytest.fixture(params=["eager", "cpp"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("name", ["running_mean", "running_var", "weight", "bias"])
def test_in_place_writes(backend: str, name: str) -> None:
    ours, ref = _pair(backend)
    _eval_matches(ours, ref)
    writes: list[Callable[[torch.Tensor], object]] = [
        lambda t: t.mul_(1.5).add_(0.25),  # under no_grad, as optimizers and init do
        lambda t: t.detach().add_(0.5),  # through an alias that shares the counter
        lambda t: t[1:3].mul_(0.5),  # through a view
        lambda t: t.copy_(t.flip(0)),
    ]
    for write in writes:
        with torch.no_grad():
            for module in (ours, ref):
                write(getattr(module, name))
        _eval_matches(ours, ref)


def test_load_state_dict(backend: str) -> None:
    ours, ref = _pair(backend)
    _eval_matches(ours, ref)
    other, _ = _pair("eager")
    with torch.no_grad():
        for t in (other.weight, other.bias, other.running_mean, other.running_var):
            t.mul_(1.7)
    _both(ours, ref, lambda m: m.load_state_dict(other.state_dict()))
    _eval_matches(ours, ref)


def test_dtype_round_trips_and_swapped_data(backend: str) -> None:
    """``.to()`` swaps a parameter's data without bumping its counter; a round trip through
    float32 or float16 rounds the values, and the new float64 storage could land where the
    old one was."""
    ours, ref = _pair(backend)
    _eval_matches(ours, ref)
    for low in (torch.float32, torch.float16):
        for module in (ours, ref):
            module.to(low).to(torch.float64)
        _eval_matches(ours, ref)
    new_weight = torch.linspace(0.5, 2.0, 4, dtype=torch.float64)
    for module in (ours, ref):
        module.weight.data = new_weight.clone()
    _eval_matches(ours, ref)


def test_new_data_at_the_old_address(backend: str) -> None:
    """The old storage freed and a new one of the same size allocated at once: the allocator
    may hand back the same address, with the counter untouched by ``.data =``."""
    g = torch.Generator().manual_seed(5)
    ref = nn.BatchNorm1d(1024, dtype=torch.float64)  # 8 KiB: addresses get reused here
    ours = BatchNorm1d(1024, dtype=torch.float64)
    ours.backend = backend
    x = torch.randn(3, 1024, generator=g, dtype=torch.float64)
    for step in range(4):
        _eval_matches(ours, ref, x)
        for module in (ours, ref):
            old = module.weight.data
            module.weight.data = torch.empty(0, dtype=torch.float64)
            del old
            module.weight.data = torch.full((1024,), 1.5 + step, dtype=torch.float64)
    _eval_matches(ours, ref, x)


def test_views_at_one_address_are_different_tensors() -> None:
    """Two views with the same data pointer and (shared) version counter but other strides
    hold other values: the cache keys on the tensor objects too."""
    base = torch.linspace(0.5, 4.0, 8, dtype=torch.float64)
    _, ref = _pair("eager")
    rm, rv, x = ref.running_mean, ref.running_var, _x()
    for weight in (base[:4], base[::2], base[:4]):
        with torch.no_grad():
            got = BF.batch_norm(x, rm, rv, weight, None, False, backend="eager")
        expected = torch.nn.functional.batch_norm(x, rm, rv, weight, None, False)
        torch.testing.assert_close(got, expected, **TOL)


def test_training_steps_and_optimizer_steps(backend: str) -> None:
    ours, ref = _pair(backend)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.3, momentum=0.9) for m in (ours, ref)]
    for step in range(3):
        _eval_matches(ours, ref)
        x = _x(seed=10 + step)
        for module, opt in zip((ours, ref), optimizers, strict=True):
            module.train()
            opt.zero_grad()
            (module(x) ** 2).mean().backward()  # updates the running statistics too
            opt.step()
    _eval_matches(ours, ref)


def test_training_by_the_operator_then_eval_on_the_python_path() -> None:
    """The C++ operator writes the running statistics through their data pointers; it bumps
    their counters, so the Python path's cached coefficients are computed again."""
    ours, ref = _pair("eager")
    _eval_matches(ours, ref)
    ours.backend = "cpp"
    for module in (ours, ref):
        module.train()
        module(_x(seed=2))
    ours.backend = "eager"
    _eval_matches(ours, ref)


def test_eps_momentum_and_resets(backend: str) -> None:
    ours, ref = _pair(backend)
    _eval_matches(ours, ref)
    _both(ours, ref, lambda m: setattr(m, "eps", 0.3))
    _eval_matches(ours, ref)
    _both(ours, ref, lambda m: m.reset_running_stats())
    _eval_matches(ours, ref)
    _both(ours, ref, lambda m: m.reset_parameters())
    _eval_matches(ours, ref)


def test_channels_last_and_float32_inputs_after_changes(backend: str) -> None:
    """Other inputs of the same layer (another accumulation dtype, another layout) get
    coefficients for themselves, computed from the current values."""
    ours, ref = _pair(backend)
    _eval_matches(ours, ref, _x().to(memory_format=torch.channels_last))
    with torch.no_grad():
        _both(ours, ref, lambda m: m.running_mean.add_(1.0))
        # A float32 input of the float64 layer: float32 coefficients (its accumulation
        # dtype), which the float64 inputs after it must not get.
        ours(_x().float())
    _eval_matches(ours, ref, _x().to(memory_format=torch.channels_last))
    _eval_matches(ours, ref)
    _both(ours, ref, lambda m: m.float())
    ours.eval()
    ref.eval()
    x = _x().float()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_gradients_in_eval_mode(backend: str) -> None:
    """With a gradient wanted, eval runs the autograd Function (the coefficients are not
    taken from the cache); inference calls before and after do not disturb it."""
    ours, ref = _pair(backend)
    _eval_matches(ours, ref)
    dy = _x(seed=3)
    for _ in range(2):
        grads = []
        for module in (ours, ref):
            x = _x().requires_grad_()
            module.zero_grad()
            y = module(x)
            y.backward(dy)
            grads.append((y, x.grad, module.weight.grad, module.bias.grad))
        for got, expected in zip(*grads, strict=True):
            torch.testing.assert_close(got, expected, **TOL)
        with torch.no_grad():
            _both(ours, ref, lambda m: m.weight.mul_(1.3))
        _eval_matches(ours, ref)


def test_gradcheck_in_eval_after_cached_calls(backend: str) -> None:
    """gradcheck perturbs its inputs through ``.data``, which no version counter sees."""
    ours, ref = _pair(backend)
    _eval_matches(ours, ref)
    x, w, b = _x(shape=(2, 4, 2, 3)), ours.weight.detach().clone(), ours.bias.detach().clone()
    rm, rv = ours.running_mean, ours.running_var
    with torch.no_grad():
        BF.batch_norm(x, rm, rv, w, b, False, backend=backend)  # cached for (w, b)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda x, w, b: BF.batch_norm(x, rm, rv, w, b, False, backend=backend), args
    )


def test_torch_func_and_forward_ad_in_eval(backend: str) -> None:
    ours, ref = _pair(backend)
    _eval_matches(ours, ref)
    x, tangent = _x(), _x(seed=4)
    new = {"weight": torch.full((4,), 2.0, dtype=torch.float64)}
    results = []
    for module in (ours, ref):
        with torch.no_grad():
            swapped = torch.func.functional_call(module, new, (x,))
        batched = torch.func.vmap(module)(x.unsqueeze(1))
        primal, jvp = torch.func.jvp(module, (x,), (tangent,))
        with fwAD.dual_level():
            dual = module(fwAD.make_dual(x, tangent))
            fw_tangent = fwAD.unpack_dual(dual).tangent
        params = {k: v.detach() for k, v in module.named_parameters()}

        def loss(p: dict[str, torch.Tensor], module: nn.Module = module) -> torch.Tensor:
            return torch.func.functional_call(module, p, (x,)).square().sum()

        grad_w = torch.func.grad(loss)(params)["weight"]
        results.append((swapped, batched.squeeze(1), primal, jvp, fw_tangent, grad_w))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, **TOL)
    _eval_matches(ours, ref)  # and plain eval after the transforms


def test_inference_mode(backend: str) -> None:
    ours, ref = _pair(backend)
    with torch.inference_mode():
        _eval_matches(ours, ref)
    with torch.no_grad():
        _both(ours, ref, lambda m: m.running_var.add_(0.5))
    _eval_matches(ours, ref)  # outside inference mode, after it filled the cache
    with torch.inference_mode():  # a layer of inference tensors: no counters, not cached
        inf_ours, inf_ref = _pair(backend)
        _eval_matches(inf_ours, inf_ref)
        _both(inf_ours, inf_ref, lambda m: m.running_mean.add_(1.0))
        _eval_matches(inf_ours, inf_ref)


def test_writes_through_data_and_collectives_are_seen(backend: str) -> None:
    """Writes that bump no version counter: ``.data`` updates (old EMA code) and what a
    torch.distributed broadcast does to a buffer (copied into it below the autograd layer)."""
    ours, ref = _pair(backend)
    _eval_matches(ours, ref)
    _both(ours, ref, lambda m: m.weight.data.mul_(3.0))
    _eval_matches(ours, ref)
    _both(ours, ref, lambda m: m.running_var.data.copy_(m.running_var * 2))
    _eval_matches(ours, ref)
