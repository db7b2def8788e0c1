"""Batch normalization written from scratch (Ioffe & Szegedy 2015, Algorithm 1).

For one channel and a mini-batch B of m values x_1..x_m (m = N for (N, C) inputs and
m = N·L, N·H·W, N·D·H·W for convolutional ones)::

    μ_B  = 1/m Σ x_i                       σ²_B = 1/m Σ (x_i − μ_B)²       (biased)
    x̂_i  = (x_i − μ_B) / √(σ²_B + ε)       y_i  = γ x̂_i + β

and its closed-form gradients (what :class:`BatchNormFunction.backward` computes)::

    ∂L/∂β = Σ dy_i        ∂L/∂γ = Σ dy_i x̂_i
    ∂L/∂x_i = γ / (m √(σ²_B + ε)) · (m dy_i − Σ_j dy_j − x̂_i Σ_j dy_j x̂_j)

In eval mode the statistics are fixed (running averages, or the paper's population statistics,
see :mod:`bncore.nn`) and the layer is one affine map per channel::

    y = γ/√(Var + ε) · x + (β − γ E[x]/√(Var + ε))          ∂L/∂x = γ/√(Var + ε) · dy

Public API
----------
``batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
momentum=0.1, eps=1e-5, *, backend=None)``
    Same semantics as :func:`torch.nn.functional.batch_norm`: in training the running stats (if
    given) are updated in place, ``running_var`` receiving the *unbiased* batch variance.
``set_backend("auto" | "eager" | "compiled")`` / ``get_backend()``
    Which implementation of the math runs. ``"eager"`` is plain torch ops; ``"compiled"`` is the
    same math through :func:`torch.compile` (fused C++ loops on CPU, Triton on CUDA); ``"auto"``
    (default) compiles the training math (statistics, output, closed-form backward: fused, they
    take fewer passes over memory than eager ops) where a compiler is available and the input is
    large enough (``AUTO_COMPILE_MIN_NUMEL`` elements) to pay back seconds of compiling; the
    paper's small MLPs stay eager, and so does eval mode, a single pass that eager ops already
    make as fast as compiled code (measured; see :func:`affine`). The environment variable
    ``BNCORE_BACKEND`` sets the initial value. If compiling fails, a warning is logged once and
    the eager math is used from then on.
``BatchNormFunction``
    The :class:`torch.autograd.Function` itself (forward + closed-form backward).

No ``torch.batch_norm`` / ``F.batch_norm`` / cuDNN is called anywhere here.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BatchNormFunction",
    "batch_norm",
    "compiled_available",
    "get_backend",
    "set_backend",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compiled")


# ---------------------------------------------------------------------------------------------
# The math, as pure functions of tensors. The same functions run eagerly or through
# torch.compile, so the two backends cannot drift apart.
# ---------------------------------------------------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 accumulate in float32 (sums of many halves lose too many digits)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _reduce_dims(x: Tensor) -> list[int]:
    """Every dim but the channel dim 1: batch and spatial positions share the statistics."""
    return [0, *range(2, x.dim())]


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a (C,) vector as (1, C, 1, ...) so it broadcasts against x."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


# Rows per partial sum for (N, C) inputs on the compiled path. At (4096, 1024) float32, train
# fwd+bwd measured 0.93-1.14x native with 8 or 16 rows and 1.45-1.6x with 32 (AMD EPYC, one
# thread): a block of 16 rows of 4 KiB (64 KiB) is still summed from cache.
_ROW_BLOCK = 16


def _channel_sum(fn: Callable[..., Tensor], *ts: Tensor) -> Tensor:
    """Σ over every dim but the channel dim of the elementwise expression ``fn(pc, *ts)``,
    where ``pc(v)`` shapes a (C,) vector to broadcast against the tensors fn is given.

    Eagerly this is one aten reduction. Compiled, one reduction per channel would make
    inductor stride through memory (for (N, C): 64 bytes out of every 4 KiB row), so the sum
    goes in two levels whose first level reads memory in order: spatial dims first, then the
    batch; for (N, C), blocks of rows first. Measured 2-3× faster than the flat reduction at
    (256, 128, 8, 8) and (4096, 1024). The inputs, not fn's result, are cut into blocks:
    inductor cannot view a computed buffer with a symbolic batch size.
    """
    x = ts[0]

    def pc(v: Tensor) -> Tensor:
        return _per_channel(v, x)  # for (N, C), (1, C) also broadcasts against row blocks

    if not torch.compiler.is_compiling():
        return fn(pc, *ts).sum(_reduce_dims(x))
    if x.dim() > 2:
        return fn(pc, *ts).sum(list(range(2, x.dim()))).sum(0)
    n, c = x.shape
    g = n // _ROW_BLOCK
    blocks = [t[: g * _ROW_BLOCK].view(g, _ROW_BLOCK, c) for t in ts]
    rest = [t[g * _ROW_BLOCK :] for t in ts]  # the rows left over (an empty sum is 0)
    return fn(pc, *blocks).sum(1).sum(0) + fn(pc, *rest).sum(0)


def _sum_sq_eager(t: Tensor) -> Tensor:
    """Σ t² per channel without a temporary where aten allows (vector_norm; it is slow for
    (N, C) on CPU though, where the square is materialized)."""
    if t.dim() > 2:
        return torch.linalg.vector_norm(t, 2, _reduce_dims(t)).square()
    return t.square().sum(0)


def _addcmul_into(buf: Tensor | None, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """a + b·c. Eagerly it is written into ``buf``, a temporary of ours that is no longer
    needed: a fresh large tensor costs page faults on CPU. Compiled, inductor plans memory
    itself (and dynamo rejects ``out=`` tensors that are channels_last)."""
    if buf is None or torch.compiler.is_compiling():
        return torch.addcmul(a, b, c)
    return torch.addcmul(a, b, c, out=buf)


def forward_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Algorithm 1 on a mini-batch. Returns (y, μ_B, σ²_B biased, 1/√(σ²_B + ε)).

    Two passes for the statistics (mean, then mean of squared deviations): as accurate as
    Welford and much faster than ``torch.var_mean`` on CPU. Eagerly this is four passes over
    x and one allocation (x − μ, overwritten by y); compiled, three passes (mean, variance,
    output), like aten's own kernel.
    """
    acc = _acc_dtype(x.dtype)
    m = x.numel() // x.shape[1]

    def pc(v: Tensor) -> Tensor:
        return _per_channel(v, x)

    mean = _channel_sum(lambda pc, v: v.to(acc), x) / m
    if torch.compiler.is_compiling():  # inductor fuses each line into one pass over x
        var = _channel_sum(lambda pc, v: (v.to(acc) - pc(mean)).square(), x) / m
        xc = None
    else:
        xc = x.to(acc) - pc(mean)  # keeps x's memory format (channels_last stays so)
        var = _sum_sq_eager(xc) / m
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight.to(acc)
    if xc is None:
        shift = -mean * scale if bias is None else bias.to(acc) - mean * scale
        y = torch.addcmul(pc(shift), x.to(acc), pc(scale))
    elif bias is None:
        y = xc.mul_(pc(scale))  # xc is our own temporary: y goes into it
    else:
        y = _addcmul_into(xc, pc(bias.to(acc)), xc, pc(scale))
    return y.to(x.dtype), mean, var, invstd


def eval_coefficients(
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    acc: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed statistics fold into one affine map per channel: y = scale·x + shift with
    scale = γ/√(Var + ε), shift = β − E[x]·scale. Returns (1/√(Var + ε), scale, shift).

    Computed eagerly (C values): inside a compiled kernel inductor would inline the rsqrt
    into the per-element loop instead of computing it once per channel. Four small ops: at
    eval time their dispatch overhead is a visible part of the layer's cost."""
    invstd = var.to(acc).add(eps).rsqrt_()
    scale = invstd if weight is None else invstd * weight.to(acc)
    mean = mean.to(acc)
    if bias is None:
        return invstd, scale, (mean * scale).neg_()
    return invstd, scale, torch.addcmul(bias.to(acc), mean, scale, value=-1)


_MIN_PLANE = 16  # spatial positions per channel below which vectorizing them cannot pay


def affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """y = scale·x + shift per channel, in one pass (the eval-mode layer).

    Eagerly, aten vectorizes addcmul's inner loop only if at most one operand is broadcast
    along it. For a contiguous (N, C, *spatial) x both coefficient vectors would be (their
    stride is 0 along the spatial dims), and the scalar loop measured 1.3-1.5× native. So
    they are expanded to one contiguous (C, *spatial) plane each: C·H·W values, small next to
    x and reused N times from cache, and every operand is contiguous along the inner loop.
    (For (N, C) and channels_last the channel dim is already the inner one; compiled,
    inductor indexes the vectors itself; with under ``_MIN_PLANE`` spatial positions the two
    extra copies would cost more than they save.)"""
    scale, shift = _per_channel(scale, x), _per_channel(shift, x)
    if (
        not torch.compiler.is_compiling()
        and math.prod(x.shape[2:]) >= _MIN_PLANE
        and x.is_contiguous()
    ):
        plane = (1, *x.shape[1:])
        scale, shift = scale.expand(plane).contiguous(), shift.expand(plane).contiguous()
    return torch.addcmul(shift, x.to(scale.dtype), scale).to(x.dtype)


def backward(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    training: bool,
    need_dx: bool,
    need_dparams: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Closed-form gradients. Returns (dx, dγ, dβ); dγ/dβ are None unless ``need_dparams``.

    With k = γ·invstd and x̂ = (x − μ)·invstd, the paper's dx is one affine combination of
    dy and x per channel, so it takes a single pass::

        dx = k·dy + a·x + b,   a = −k·invstd·Σ(dy·x̂)/m,   b = −a·μ − k·Σdy/m     (training)
        dx = k·dy                                                            (fixed stats)

    Σ(dy·x̂) is computed from the centred x − μ (not Σ dy·x − μ Σ dy, which cancels badly when
    |μ| ≫ σ). Compiled, inductor fuses everything into one reduction pass and one output pass.
    """
    acc = _acc_dtype(x.dtype)
    dyf, xf = dy.to(acc), x.to(acc)
    k = invstd if weight is None else invstd * weight.to(acc)
    if not training and not need_dparams:
        return (dyf * _per_channel(k, x)).to(x.dtype) if need_dx else None, None, None

    mean = mean.to(acc)
    sum_dy = _channel_sum(lambda pc, d: d.to(acc), dy)
    if torch.compiler.is_compiling():  # fused with the sum above into one pass over dy and x
        tmp = None
        sum_dy_xc = _channel_sum(lambda pc, d, v: d.to(acc) * (v.to(acc) - pc(mean)), dy, x)
    else:  # our temporary: x − μ, then (x − μ)·dy, then dx
        tmp = xf - _per_channel(mean, x)
        sum_dy_xc = tmp.mul_(dyf).sum(_reduce_dims(x))
    sum_dy_xhat = sum_dy_xc * invstd
    dx = None
    if need_dx and not training:
        dx = dyf * _per_channel(k, x)
    elif need_dx:
        m = x.numel() // x.shape[1]
        a = -k * invstd * sum_dy_xhat / m
        b = -a * mean - k * sum_dy / m
        dx = _addcmul_into(tmp, _per_channel(b, x), dyf, _per_channel(k, x))
        dx = dx.addcmul_(xf, _per_channel(a, x))
    if dx is not None:
        dx = dx.to(x.dtype)
    if not need_dparams:
        return dx, None, None
    return dx, sum_dy_xhat, sum_dy


# ---------------------------------------------------------------------------------------------
# Backends: eager or compiled, chosen globally, by environment variable or per call.
# ---------------------------------------------------------------------------------------------

_backend: str = os.environ.get("BNCORE_BACKEND", "auto").strip().lower() or "auto"
if _backend not in BACKENDS:
    log.warning("BNCORE_BACKEND=%r is not one of %s; using 'auto'", _backend, BACKENDS)
    _backend = "auto"

# Below this many elements a BN call costs microseconds of Python and kernel launches, which
# fusing cannot save, while compiling a shape family costs seconds: "auto" stays eager there.
AUTO_COMPILE_MIN_NUMEL = 1 << 18

_compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}
_compile_broken = False  # set after the first compile failure: from then on, eager only
_available: dict[str, bool] = {}


def set_backend(name: str) -> None:
    """Choose the implementation for every call that does not name one: "auto", "eager" or
    "compiled". ("compiled" still falls back to eager, with a warning, if compiling fails.)"""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


def compiled_available(device_type: str = "cpu") -> bool:
    """Whether torch.compile can be expected to work here: a C++ compiler on CPU, Triton on
    CUDA, and a Python version dynamo supports. (Checked once per device type.)"""
    if device_type not in _available:
        ok = False
        try:
            import torch._dynamo

            ok = torch._dynamo.is_dynamo_supported()
            if ok and device_type == "cpu":
                cxx = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
                ok = any(c and shutil.which(c) for c in cxx)
            elif ok and device_type == "cuda":
                from torch.utils._triton import has_triton

                ok = has_triton()
            elif ok:
                ok = False  # other devices: not tried
        except Exception:  # an odd build of torch: just use eager
            ok = False
        _available[device_type] = ok
    return _available[device_type]


def _use_compiled(backend: str | None, x: Tensor, training: bool) -> bool:
    backend = backend or _backend
    if backend == "eager" or _compile_broken:
        return False
    if torch.compiler.is_compiling():  # inside a user's torch.compile: it fuses our math itself
        return False
    if backend == "compiled":
        return True
    # Eval is one pass, as fast eagerly; training's reductions and backward gain from fusing.
    return training and x.numel() >= AUTO_COMPILE_MIN_NUMEL and compiled_available(x.device.type)


_EAGER: dict[str, Callable[..., Any]] = {
    "forward_train": forward_train,
    "affine": affine,
    "backward": backward,
}


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _compiled_fn(name: str, x: Tensor) -> Callable[..., Any]:
    """The compiled math for one shape family: everything about x but the batch size.

    Dynamo caches compiled code per Python code object and gives up (silently running eager)
    after ``torch._dynamo.config.recompile_limit`` (8) variants of one. A network with many
    BN shapes would hit that, so each family compiles its own copy of the function's code
    object. Within a family the batch dim is symbolic (a short last batch reuses the kernel)
    and only flags (training, affine, which grads) can add variants.
    """
    key = (name, x.device.type, x.dtype, tuple(x.shape[1:]), _memory_format(x))
    fn = _compiled.get(key)
    if fn is None:
        f = _EAGER[name]
        copy = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__)
        fn = _compiled[key] = torch.compile(copy, dynamic=False, fullgraph=True)
    return fn


def _run(name: str, use_compiled: bool, x: Tensor, *args: Any) -> Any:
    """Run one of the math functions, compiled if asked, falling back to eager on failure."""
    global _compile_broken
    if not (use_compiled and not _compile_broken):
        return _EAGER[name](x, *args)
    try:
        if name == "backward":  # dy = x here; dy may come strided (e.g. expanded from .sum())
            x = x.contiguous(memory_format=_memory_format(args[0]))
        for t in (x, *args):
            if isinstance(t, Tensor) and t.dim() > 1:
                torch._dynamo.maybe_mark_dynamic(t, 0)
        return _compiled_fn(name, x)(x, *args)
    except Exception as err:
        out = _EAGER[name](x, *args)  # a genuine input error raises here, as it should
        _compile_broken = True
        log.warning(
            "bncore: torch.compile failed (%s: %s); using eager batch norm from now on",
            type(err).__name__,
            err,
        )
        return out


# ---------------------------------------------------------------------------------------------
# The autograd Function and the public functional.
# ---------------------------------------------------------------------------------------------


def _forward_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    use_compiled: bool,
) -> tuple[Tensor, Tensor]:
    """Normalize with fixed statistics. Returns (y, 1/√(Var + ε))."""
    invstd, scale, shift = eval_coefficients(
        running_mean, running_var, weight, bias, eps, _acc_dtype(x.dtype)
    )
    return _run("affine", use_compiled, x, scale, shift), invstd


class BatchNormFunction(torch.autograd.Function):
    """Batch normalization with its own forward and closed-form backward (no autograd graph
    of primitive ops is recorded: ``y.grad_fn`` is ``BatchNormFunctionBackward``)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
        use_compiled: bool,
    ) -> Tensor:
        if training:
            y, mean, var, invstd = _run("forward_train", use_compiled, x, weight, bias, eps)
            if running_mean is not None and running_var is not None:
                m = x.numel() // x.shape[1]
                unbiased = var * (m / (m - 1))
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                running_var.lerp_(unbiased.to(running_var.dtype), momentum)
        else:
            assert running_mean is not None and running_var is not None
            y, invstd = _forward_eval(x, running_mean, running_var, weight, bias, eps, use_compiled)
            mean = running_mean
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.training = training
        ctx.use_compiled = use_compiled
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx, dw, db = _run(
            "backward",
            ctx.use_compiled,
            dy,
            x,
            mean,
            invstd,
            weight,
            ctx.training,
            need_dx,
            need_dw or need_db,
        )
        if dw is not None and weight is not None:
            dw = dw.to(weight.dtype)
        if db is not None:
            db = db.to(weight.dtype if weight is not None else x.dtype)
        return (
            dx if need_dx else None,
            dw if need_dw else None,
            db if need_db else None,
            *([None] * 6),
        )


def _verify_batch_size(size: torch.Size) -> None:
    """Same check and message as torch: the variance of a single value is undefined."""
    values = size[0]
    for s in size[2:]:
        values *= s
    if values == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Batch normalization of x (N, C, *), mirroring :func:`torch.nn.functional.batch_norm`.

    training=True: normalize with the batch statistics and, if running stats are given,
    update them in place: ``r ← (1 − momentum)·r + momentum·stat`` with the unbiased batch
    variance m/(m−1)·σ²_B going into ``running_var``. training=False: normalize with the
    running stats. ``backend`` overrides :func:`set_backend` for this call.
    """
    if x.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, *), got {tuple(x.shape)}")
    if training:
        _verify_batch_size(x.size())
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    else:
        if eps < 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be defined in evaluation mode")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    use_compiled = _use_compiled(backend, x, training)
    differentiable = (x, weight, bias)
    if not training and not (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable)
    ):
        # Inference: nothing to differentiate, so no autograd node (its bookkeeping costs as
        # much as the layer's math on small inputs).
        assert running_mean is not None and running_var is not None
        return _forward_eval(x, running_mean, running_var, weight, bias, eps, use_compiled)[0]
    return BatchNormFunction.apply(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        training,
        momentum,
        eps,
        use_compiled,
    )
