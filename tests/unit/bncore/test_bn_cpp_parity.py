"""The parity suites of the Python path, run again against bncore's C++ operator.

Every test of test_bn_functional, test_torch_nn_batchnorm and test_torch_func_batchnorm runs
here with the "cpp" backend (float64 parity ~1e-10 and torch's own tolerances against
torch.nn, gradcheck, double backward, errors, zero-size batches, torch.func), plus the
module-level parity of test_torch_modules_batchnorm. Inputs the operator does not handle
(channels_last, half precision, torch.func transforms, forward AD) must still match: they
take the Python path. ``calls_the_operator`` checks the operator really ran.

Skipped only where no C++ compiler exists; a compiler with a failing build is a failure.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_bn_functional import *  # noqa: F403
from test_bn_functional import _inputs
from test_torch_func_batchnorm import *  # noqa: F403
from test_torch_modules_batchnorm import CASES, TOL, _input, _pair, _step
from test_torch_nn_batchnorm import *  # noqa: F403

from bncore import _native
from bncore import functional as BF

pytestmark = pytest.mark.skipif(
    not _native.compiler_found(), reason="no C++ compiler: the Python path is the only one"
)


def _use_cpp() -> Iterator[None]:
    before = BF.get_backend()
    BF.set_backend("cpp")
    yield
    BF.set_backend(before)


# The imported suites' autouse fixtures, by the same names, now choosing the operator.
eager_backend = pytest.fixture(autouse=True)(_use_cpp)
eager_by_default = pytest.fixture(autouse=True)(_use_cpp)


@pytest.fixture
def backend() -> str:  # test_torch_nn_batchnorm's parametrized backend, now only "cpp"
    return "cpp"


def test_backward_is_the_custom_function() -> None:
    """test_bn_functional's test of the same name, for the operator's C++ autograd node."""
    x, w, b, _, _ = _inputs((4, 3))
    y = BF.batch_norm(x.requires_grad_(), None, None, w.requires_grad_(), b, True)
    # torch::autograd::CppNode<BatchNormFunction> (the Python path's: BatchNormFunctionBackward)
    assert "CppNode" in y.grad_fn.name() and "BatchNormFunction" in y.grad_fn.name()
    # Its inputs are x and w directly: no autograd-generated ops in between.
    assert {type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None} == {
        "AccumulateGrad"
    }


def test_the_operator_is_built_and_runs() -> None:
    assert _native.module() is not None, BF.compile_stats()["cpp"]
    x, w, b, rm, rv = _inputs((6, 4))
    before = BF.compile_stats()["cpp"]["calls"]
    y = BF.batch_norm(x.requires_grad_(True), rm, rv, w, b, True, 0.1, 1e-5)
    assert BF.compile_stats()["cpp"]["calls"] == before + 1
    assert "CppNode" in y.grad_fn.name()  # the operator's C++ autograd node
    # Registered with torch.library: callable as an ordinary torch operator too.
    y2 = torch.ops.bncore.batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
    torch.testing.assert_close(y2, y, atol=0, rtol=0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_modules_match_torch_through_the_operator(case: object, training: bool) -> None:
    """test_torch_modules_batchnorm's forward/backward parity (two steps, every grad and
    state-dict entry), with the layer on the C++ operator."""
    ours, theirs = _pair(case, training)
    ours.backend = "cpp"
    for step in range(2):
        x = _input(case, seed=step)
        dy = _input(case, seed=10 + step)
        for a, b in zip(_step(ours, x, dy), _step(theirs, x, dy), strict=True):
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("shape", [(60, 100), (4, 3, 5, 5)])
def test_batched_and_double_backward_through_the_operator(shape: tuple[int, ...]) -> None:
    """A node recorded by the operator, differentiated again or with a batch of grad outputs:
    its backward switches to differentiable ops (statistics recomputed from x)."""
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    w = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_(True)
    dys = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    outs = {}
    for name in ("cpp", "torch"):
        fn = torch.nn.functional.batch_norm if name == "torch" else BF.batch_norm
        y = fn(x, None, None, w, b, True, 0.1, 1e-5)
        (gx,) = torch.autograd.grad((y * y.sin()).sum(), x, create_graph=True)
        (ggw,) = torch.autograd.grad(gx.square().sum(), w, retain_graph=True)
        (bx,) = torch.autograd.grad(y, x, dys, is_grads_batched=True)
        outs[name] = (gx, ggw, bx)
    for a, b_ in zip(outs["cpp"], outs["torch"], strict=True):
        torch.testing.assert_close(a, b_, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("n", [8, 9], ids=["in-cache pass", "streaming pass"])
@pytest.mark.parametrize("spatial", [(), (32, 32)], ids=["(N, C)", "(N, C, H, W)"])
def test_both_builds_of_the_elementwise_pass(
    n: int, spatial: tuple[int, ...], dtype: torch.dtype
) -> None:
    """The output and input-gradient passes run a vector build (AVX2 where the CPU has it)
    up to 1 MiB of input and the portable one above: both match torch, train and eval."""
    c = (1 << 20) // (8 * math.prod(spatial) * dtype.itemsize)  # N = 8: exactly 1 MiB
    g = torch.Generator().manual_seed(0)
    shape = (n, c, *spatial)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * 2 + 1
    assert (x.numel() * x.element_size() <= 1 << 20) == (n == 8)
    w, b = torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    tol = TOL if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    for training in (True, False):
        grads = []
        for fn in (BF.batch_norm, torch.nn.functional.batch_norm):
            stats = [torch.zeros(c, dtype=dtype) + 0.3, torch.ones(c, dtype=dtype) * 1.7]
            args = [t.clone().requires_grad_() for t in (x, w, b)]
            y = fn(args[0], *stats, args[1], args[2], training, 0.1, 1e-5)
            y.backward(dy)
            grads.append((y, *stats, *(t.grad for t in args)))
        for ours, theirs in zip(*grads, strict=True):
            torch.testing.assert_close(ours, theirs, **tol)


def test_gradcheck_through_the_operator() -> None:
    x, w, b, rm, rv = _inputs((6, 3, 2))
    for training in (True, False):
        args = (x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True))

        def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, t: bool = training):
            return BF.batch_norm(x, rm.clone(), rv.clone(), w, b, t, 0.1, 1e-5)

        assert torch.autograd.gradcheck(fn, args, check_batched_grad=True)
        assert torch.autograd.gradgradcheck(fn, args)


def test_inference_mode_tensors() -> None:
    x, w, b, rm, rv = _inputs((5, 4))
    with torch.inference_mode():
        y = BF.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5)
    ref = torch.nn.functional.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)


def test_a_build_lock_left_by_a_killed_build_does_not_hang_the_next_one(tmp_path: Path) -> None:
    """torch's build lock is a plain file: a process killed mid-build leaves it, and every
    later first use would wait on it forever. Under bncore's flock it is known stale and
    removed, and the (already built) operator loads."""
    assert _native.module() is not None  # built: the copy below only needs loading
    built = _native._build_dir()
    copy = tmp_path / built.name
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("lock", "*.flock"))
    (copy / "lock").touch()  # what the killed build left

    probe = "from bncore import _native; print(_native.module() is not None)"
    env = {**os.environ, "BNCORE_EXT_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.strip() == "True", done.stderr[-2000:]
    assert "stale build lock" in done.stderr and not (copy / "lock").exists()
