"""The compiled backend (torch.compile of the same math): parity with eager, few recompiles,
fallback on failure. Compiling is slow on small machines, so shapes and cases are few."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from bncore import functional as BF
from bncore.nn import BatchNorm1d

pytestmark = pytest.mark.skipif(
    not BF.compiled_available("cpu"), reason="torch.compile unavailable (no C++ compiler?)"
)


@pytest.fixture(autouse=True)
def compiled_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(BF, "_compile_broken", False)  # restored after each test
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
    assert not BF._compile_broken


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
    assert not BF._compile_broken


def test_compile_failure_falls_back_to_eager_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_compile(fn: object, **kw: object) -> object:
        def run(*args: object) -> object:
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(BF.torch, "compile", broken_compile)
    monkeypatch.setattr(BF, "_compiled", {})
    x = torch.randn(5, 4, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="bncore.functional"):
        y1 = BF.batch_norm(x, None, None, training=True)
        y2 = BF.batch_norm(x, None, None, training=True)
    assert BF._compile_broken
    assert sum("torch.compile failed" in r.message for r in caplog.records) == 1
    ref = nn.functional.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(y1, ref)
    torch.testing.assert_close(y2, ref)


def test_per_module_backend_and_outer_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BF, "_compiled", {})
    layer = BatchNorm1d(3)
    layer.backend = "eager"
    layer(torch.randn(4, 3))
    assert BF._compiled == {}  # the module's override won
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
    large = torch.empty(BF.AUTO_COMPILE_MIN_NUMEL // 64, 64)
    assert not BF._use_compiled("auto", small, training=True)
    assert BF._use_compiled("auto", large, training=True) == BF.compiled_available("cpu")
    # Eval is one pass that eager already makes at native speed: an evaluation batch of 4096
    # examples must not cost a run seconds of compiling.
    assert not BF._use_compiled("auto", large, training=False)
    assert BF._use_compiled("compiled", small, training=True)
    assert BF._use_compiled("compiled", large, training=False)
    assert not BF._use_compiled("eager", large, training=True)
