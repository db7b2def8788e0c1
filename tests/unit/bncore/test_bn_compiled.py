"""The compiled backend (torch.compile of the same math): parity with eager, few recompiles,
fallback on failure. Compiling is slow on small machines, so shapes and cases are few."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from bncore import _backend
from bncore import functional as BF
from bncore.nn import BatchNorm1d

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.fixture(autouse=True)
def compiled_backend() -> Iterator[None]:
    """The compiled backend for each test; without a C++ compiler the tests skip locally and
    fail in CI (CI has one, so a silent skip there would hide a broken install)."""
    if not BF.compiled_available("cpu"):
        reason = "torch.compile unavailable (no C++ compiler?)"
        if IN_CI:
            pytest.fail(f"{reason}: CI must exercise the compiled backend")
        pytest.skip(reason)
    before = BF.get_backend()
    BF.set_backend("compiled")
    yield
    BF.set_backend(before)


def _train_step(
    backend: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, training: bool
) -> list[torch.Tensor]:
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    rm, rv = torch.zeros_like(w), torch.ones_like(w)
    y = BF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, backend=backend)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return [y, x.grad, w.grad, b.grad, rm, rv]


@pytest.mark.parametrize(
    ("shape", "dtype", "channels_last"),
    [
        ((6, 3), torch.float64, False),
        ((2 * BF._ROW_BLOCK + 5, 3), torch.float64, False),  # row blocks and a remainder
        ((3, 4, 3, 5), torch.float32, True),
    ],
)
def test_compiled_matches_eager(
    shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(shape[1], generator=g, dtype=dtype) + 0.5
    b = torch.randn(shape[1], generator=g, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for training in (True, False):
        compiled = _train_step("compiled", x, w, b, training)
        eager = _train_step("eager", x, w, b, training)
        for c, e in zip(compiled, eager, strict=True):
            torch.testing.assert_close(c, e, atol=tol, rtol=tol)
        if channels_last:
            assert compiled[0].is_contiguous(memory_format=torch.channels_last)
    assert BF.compile_stats()["failed_keys"] == 0


def test_changing_batch_size_does_not_recompile() -> None:
    from torch._dynamo.utils import counters

    layer = BatchNorm1d(3, dtype=torch.float64)
    layer(torch.randn(10, 3, dtype=torch.float64, requires_grad=True)).sum().backward()
    compiled_frames = counters["frames"]["ok"]
    for n in (7, 9, 2, 33, 64, 70):
        x = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
        y = layer(x)
        y.sum().backward()  # dy arrives expanded (stride 0): made contiguous, no new variant
        assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"
    assert counters["frames"]["ok"] == compiled_frames
    assert BF.compile_stats()["failed_keys"] == 0


def test_compile_failure_falls_back_to_eager_for_that_key_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing variant runs eagerly (logged once, counted); other variants stay compiled."""
    real_compile = torch.compile

    def compile_failing_for_eps_0_5(fn: object, **kw: object) -> object:
        compiled = real_compile(fn, **kw)  # type: ignore[call-overload]

        def run(*args: object) -> object:
            if any(isinstance(a, float) and a == 0.5 for a in args):
                raise RuntimeError("no compiler for this one")
            return compiled(*args)

        return run

    _backend.reset_compile_cache()
    monkeypatch.setattr(_backend.torch, "compile", compile_failing_for_eps_0_5)
    x = torch.randn(5, 4, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="bncore._backend"):
        y1 = BF.batch_norm(x, None, None, training=True, eps=0.5)
        y2 = BF.batch_norm(x, None, None, training=True, eps=0.5)
        y3 = BF.batch_norm(x, None, None, training=True, eps=1e-3)
    stats = BF.compile_stats()
    assert stats["failed_keys"] == 1 and stats["fallback_calls"] == 2
    assert stats["compiled_calls"] == 1  # the eps=1e-3 variant still compiled
    assert any("no compiler for this one" in why for why in stats["failures"].values())
    assert sum("torch.compile failed" in r.message for r in caplog.records) == 1
    ref = nn.functional.batch_norm(x, None, None, training=True, eps=0.5)
    torch.testing.assert_close(y1, ref)
    torch.testing.assert_close(y2, ref)
    torch.testing.assert_close(y3, nn.functional.batch_norm(x, None, None, training=True, eps=1e-3))


def test_many_variants_of_one_shape_family_stay_compiled() -> None:
    """eps, affine, bias and strides each change the graph: each is its own cache key, so
    dynamo's per-code recompile limit (8) is never reached and nothing falls back."""
    _backend.reset_compile_cache()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    w, b = torch.rand(3, generator=g, dtype=torch.float64) + 0.5, torch.randn(3, generator=g)
    strided = x.transpose(0, 2).contiguous().transpose(0, 2)  # same shape, other strides
    params = ((w, b.double()), (w, None), (None, None))
    variants = [(x, ww, bb, eps) for ww, bb in params for eps in (1e-5, 1e-3)]
    variants += [(strided, ww, bb, 1e-5) for ww, bb in params]  # 9 in all
    for xx, ww, bb, eps in variants:
        y = BF.batch_norm(xx, None, None, ww, bb, True, 0.1, eps)
        ref = nn.functional.batch_norm(xx, None, None, ww, bb, True, 0.1, eps)
        torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    stats = BF.compile_stats()
    assert stats["failed_keys"] == 0 and stats["fallback_calls"] == 0
    assert stats["compiled_keys"] == len(variants) == stats["compiled_calls"]


def test_per_module_backend_and_outer_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    _backend.reset_compile_cache()
    layer = BatchNorm1d(3)
    layer.backend = "eager"
    layer(torch.randn(4, 3))
    assert BF.compile_stats()["compiled_calls"] == 0  # the module's override won
    # Inside a user's torch.compile our Function is traced as eager math (no nested compile).
    model = nn.Sequential(nn.Linear(4, 3), BatchNorm1d(3))
    ref = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ref.load_state_dict(model.state_dict())
    x = torch.randn(8, 4)
    y = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(y, ref(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model[1].running_var, ref[1].running_var)


def test_eval_mode_inside_an_outer_torch_compile() -> None:
    """Eval mode, traced by a user's torch.compile, with and without an autograd node."""
    from bncore.nn import BatchNorm2d

    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNorm2d(8))
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    ref.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 10, 10)
    for m in (model, ref):
        m(x)  # one training step of running statistics, then eval
        m.eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled(x), ref(x), atol=1e-5, rtol=1e-5)  # params need grad


def test_auto_backend_compiles_only_training_inputs_large_enough_to_pay_back() -> None:
    small = torch.empty(60, 100)  # the paper's MLP layer: overhead-bound, compiling is waste
    large = torch.empty(_backend.AUTO_COMPILE_MIN_NUMEL // 64, 64)
    assert not _backend.use_compiled("auto", small, training=True)
    assert _backend.use_compiled("auto", large, training=True) == BF.compiled_available("cpu")
    # Eval is one pass that eager already makes at native speed: an evaluation batch of 4096
    # examples must not cost a run seconds of compiling.
    assert not _backend.use_compiled("auto", large, training=False)
    assert _backend.use_compiled("compiled", small, training=True)
    assert _backend.use_compiled("compiled", large, training=False)
    assert not _backend.use_compiled("eager", large, training=True)
