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
    given) are updated in place, ``running_var`` receiving the *unbiased* batch variance. Works
    under autograd (also double backward and batched gradients), forward-mode AD and
    torch.func (grad, vmap, jvp, functional_call), like torch's.
``set_backend("auto" | "eager" | "compiled")`` / ``get_backend()`` / ``compile_stats()``
    Which implementation of the same math runs: plain torch ops, or the same functions through
    :func:`torch.compile` (see :mod:`bncore._backend`, which chooses and caches).
``BatchNormFunction``
    The :class:`torch.autograd.Function` itself (forward, closed-form backward, jvp).

No ``torch.batch_norm`` / ``F.batch_norm`` / cuDNN is called anywhere here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from bncore import _backend
from bncore._backend import (  # noqa: F401  (re-exported: the public backend switch)
    AUTO_COMPILE_MIN_NUMEL,
    BACKENDS,
    compile_stats,
    compiled_available,
    get_backend,
    set_backend,
)

__all__ = [
    "BatchNormFunction",
    "BatchNormFunctionWithJvp",
    "batch_norm",
    "compile_stats",
    "compiled_available",
    "get_backend",
    "set_backend",
]


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
    itself (and dynamo rejects ``out=`` tensors that are channels_last); ``buf=None`` when
    the math is being transformed (vmap, double backward), where ``out=`` is not allowed."""
    if buf is None or torch.compiler.is_compiling():
        return torch.addcmul(a, b, c)
    return torch.addcmul(a, b, c, out=buf)


def forward_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, reuse: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Algorithm 1 on a mini-batch. Returns (y, μ_B, σ²_B biased, 1/√(σ²_B + ε)).

    ``reuse``: y may be written into the temporary x − μ_B (not under vmap, where the
    temporary and the coefficients may differ in batching).

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
        y = xc.mul_(pc(scale)) if reuse else xc * pc(scale)  # y goes into our temporary
    else:
        y = _addcmul_into(xc if reuse else None, pc(bias.to(acc)), xc, pc(scale))
    return y.to(x.dtype), mean, var, invstd


# Below this many elements a BN call costs kernel dispatches, not memory passes: the small
# backward uses as few ops as the maths allows (measured on the paper's MLP, (60, 100)).
# (torch.var_mean, one op for both statistics, is no help: 120 µs at (60, 100) on CPU.)
_FEW_OPS_MAX_NUMEL = 1 << 16


def _few_ops(x: Tensor) -> bool:
    return x.numel() <= _FEW_OPS_MAX_NUMEL and not torch.compiler.is_compiling()


def _backward_train_small(
    dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, acc: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """The paper's closed form as written, for small inputs (fewest ops)::

    dx = γ·invstd · (dy − Σdy/m − x̂ · Σ(dy·x̂)/m),   dγ = Σ dy·x̂,   dβ = Σ dy
    """
    dyf = dy if dy.dtype == acc else dy.to(acc)
    xf = x if x.dtype == acc else x.to(acc)
    dims, m = _reduce_dims(x), x.numel() // x.shape[1]
    xhat = (xf - _per_channel(mean, x)) * _per_channel(invstd, x)
    sum_dy, sum_dy_xhat = dyf.sum(dims), (dyf * xhat).sum(dims)
    centred = dyf - _per_channel(sum_dy / m, x)
    dx = torch.addcmul(centred, xhat, _per_channel(sum_dy_xhat / m, x), value=-1)
    k = invstd if weight is None else invstd * weight
    dx = dx * _per_channel(k, x)
    return (dx if dx.dtype == x.dtype else dx.to(x.dtype)), sum_dy_xhat, sum_dy


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
    reuse: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Closed-form gradients. Returns (dx, dγ, dβ); dγ/dβ are None unless ``need_dparams``.

    Written with differentiable torch ops: with ``reuse=False`` (no temporaries overwritten),
    autograd can differentiate it again (double backward, given μ and invstd as functions of
    x) and vmap can batch it over dy (batched gradients).

    With k = γ·invstd and x̂ = (x − μ)·invstd, the paper's dx is one affine combination of
    dy and x per channel, so it takes a single pass::

        dx = k·dy + a·x + b,   a = −k·invstd·Σ(dy·x̂)/m,   b = −a·μ − k·Σdy/m     (training)
        dx = k·dy                                                            (fixed stats)

    Σ(dy·x̂) is computed from the centred x − μ (not Σ dy·x − μ Σ dy, which cancels badly when
    |μ| ≫ σ). Compiled, inductor fuses everything into one reduction pass and one output pass.
    """
    acc = _acc_dtype(x.dtype)
    if training and need_dx and _few_ops(x):
        dx, dw, db = _backward_train_small(dy, x, mean.to(acc), invstd, weight, acc)
        return (dx, dw, db) if need_dparams else (dx, None, None)
    dyf, xf = dy.to(acc), x.to(acc)
    k = invstd if weight is None else invstd * weight.to(acc)
    if not training and not need_dparams:
        return (dyf * _per_channel(k, x)).to(x.dtype) if need_dx else None, None, None

    mean = mean.to(acc)
    sum_dy = _channel_sum(lambda pc, d: d.to(acc), dy)
    if torch.compiler.is_compiling():  # fused with the sum above into one pass over dy and x
        tmp = None
        sum_dy_xc = _channel_sum(lambda pc, d, v: d.to(acc) * (v.to(acc) - pc(mean)), dy, x)
    elif reuse:  # our temporary: x − μ, then (x − μ)·dy, then dx
        tmp = xf - _per_channel(mean, x)
        sum_dy_xc = tmp.mul_(dyf).sum(_reduce_dims(x))
    else:
        tmp = None
        sum_dy_xc = ((xf - _per_channel(mean, x)) * dyf).sum(_reduce_dims(x))
    sum_dy_xhat = sum_dy_xc * invstd
    dx = None
    if need_dx and not training:
        dx = dyf * _per_channel(k, x)
    elif need_dx:
        m = x.numel() // x.shape[1]
        a = -k * invstd * sum_dy_xhat / m
        b = -a * mean - k * sum_dy / m
        dx = _addcmul_into(tmp, _per_channel(b, x), dyf, _per_channel(k, x))
        add_ax = dx.addcmul_ if reuse else dx.addcmul  # in place into our own temporary
        dx = add_ax(xf, _per_channel(a, x))
    if dx is not None:
        dx = dx.to(x.dtype)
    if not need_dparams:
        return dx, None, None
    return dx, sum_dy_xhat, sum_dy


def batch_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(μ_B, 1/√(σ²_B + ε)) in plain differentiable ops: the double backward recomputes them
    so that autograd sees how they depend on x (the saved ones are constants)."""
    xf = x.to(_acc_dtype(x.dtype))
    dims = _reduce_dims(x)
    mean = xf.mean(dims)
    var = (xf - _per_channel(mean, x)).square().mean(dims)
    return mean, torch.rsqrt(var + eps)


# ---------------------------------------------------------------------------------------------
# The autograd Function and the public functional.
# ---------------------------------------------------------------------------------------------


def _forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    compiled: bool,
    reuse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The Functions' forward: (y, μ_B, invstd) in training, where the running statistics (if
    given) are updated here, as torch's kernel does (under torch.func's transforms the forward
    sees plain tensors, so the write lands in the caller's buffers); (y, empty, invstd) with
    fixed statistics."""
    if training:
        y, mean, var, invstd = _backend.run(forward_train, compiled, x, weight, bias, eps, reuse)
        if running_mean is not None and running_var is not None:
            m = x.numel() // x.shape[1]
            _update_running_stats(running_mean, running_var, mean, var, m, momentum, reuse)
        return y, mean, invstd
    assert running_mean is not None and running_var is not None
    invstd, scale, shift = eval_coefficients(
        running_mean, running_var, weight, bias, eps, _acc_dtype(x.dtype)
    )
    return _backend.run(affine, compiled, x, scale, shift), invstd.new_empty(0), invstd


def _setup_context(
    ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Saves (x, γ, μ, invstd) for the backward, μ being the running mean in eval."""
    x, weight, _, running_mean, _, training, _, eps, compiled, _ = inputs
    _, batch_mean, invstd = output
    saved = (x, weight, batch_mean if training else running_mean, invstd)
    ctx.mark_non_differentiable(batch_mean, invstd)
    ctx.save_for_backward(*saved)
    ctx.training, ctx.eps, ctx.compiled = training, eps, compiled
    return saved


class BatchNormFunction(torch.autograd.Function):
    """Batch normalization with its own forward and closed-form backward (no autograd graph
    of primitive ops is recorded: ``y.grad_fn`` is ``BatchNormFunctionBackward``).

    Returns (y, μ_B, invstd) (see :func:`_forward`); only y is differentiable. The backward
    is itself differentiable (double backward, batched gradients). This classic-style
    Function is the plain path (and what a user's torch.compile traces): torch.func's style,
    :class:`BatchNormFunctionWithJvp`, costs an ``inspect.signature`` per call.
    """

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        output = _forward(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx: Any, dy: Tensor, *_: Tensor | None) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        # create_graph=True or forward-over-reverse: the backward is being differentiated.
        # The saved statistics are constants, so they are recomputed as functions of x, and
        # no temporary is reused.
        differentiated = torch.is_grad_enabled() or _backend.has_forward_grad(dy, x, weight)
        if differentiated and ctx.training:
            mean, invstd = batch_stats(x, ctx.eps)
        plain = differentiated or _backend.transformed(dy, x)
        compiled = ctx.compiled and not plain
        if compiled:  # dy may come strided (expanded from .sum()): one layout, one graph key
            dy = dy.contiguous(memory_format=_backend.memory_format(x))
        dx, dw, db = _backend.run(
            backward,
            compiled,
            dy,
            x,
            mean,
            invstd,
            weight,
            ctx.training,
            need_dx,
            need_dw or need_db,
            not plain,
        )
        if dw is not None and weight is not None:
            dw = dw.to(weight.dtype)
        if db is not None:
            db = db.to(weight.dtype if weight is not None else x.dtype)
        return (
            dx if need_dx else None,
            dw if need_dw else None,
            db if need_db else None,
            *([None] * 7),
        )


class BatchNormFunctionWithJvp(BatchNormFunction):
    """:class:`BatchNormFunction` plus its forward-mode rule, used where a tangent can flow
    (forward AD, torch.func). A separate class because dynamo cannot trace a Function that
    defines ``jvp``, and a user's torch.compile must still see through ours. Written in
    torch.func's style (``setup_context``, ``generate_vmap_rule``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*inputs: Any) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        return _forward(*inputs)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        ctx.save_for_forward(*_setup_context(ctx, inputs, output))

    @staticmethod
    def jvp(
        ctx: Any,
        dx: Tensor | None,
        dw: Tensor | None,
        db: Tensor | None,
        *_: Any,
    ) -> tuple[Tensor | None, ...]:
        """Forward-mode AD. With x̂ = (x − μ)·invstd and tangents ẋ, γ̇, β̇::

        ẏ = γ·x̂̇ + γ̇·x̂ + β̇,   x̂̇ = invstd·(ẋ − mean(ẋ) − x̂·mean(x̂·ẋ))   (training)
                              x̂̇ = invstd·ẋ                              (fixed stats)
        """
        x, weight, mean, invstd = ctx.saved_tensors
        acc = _acc_dtype(x.dtype)
        istd = _per_channel(invstd, x)
        xhat = (x.to(acc) - _per_channel(mean.to(acc), x)) * istd
        dy = torch.zeros_like(xhat)
        if dx is not None:
            dxf = dx.to(acc)
            if ctx.training:
                dims = _reduce_dims(x)
                centred = dxf - _per_channel(dxf.mean(dims), x)
                dxhat = istd * (centred - xhat * _per_channel((xhat * dxf).mean(dims), x))
            else:
                dxhat = istd * dxf
            dy = dy + (dxhat if weight is None else dxhat * _per_channel(weight.to(acc), x))
        if dw is not None:
            dy = dy + xhat * _per_channel(dw.to(acc), x)
        if db is not None:
            dy = dy + _per_channel(db.to(acc), x)
        return dy.to(x.dtype), None, None


def _verify_batch_size(size: torch.Size) -> None:
    """Same check and message as torch: the variance of a single value is undefined."""
    values = size[0]
    for s in size[2:]:
        values *= s
    if values == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def _check_channels(x: Tensor, **per_channel: Tensor | None) -> None:
    """Every per-channel vector has C = x.shape[1] elements (torch's RuntimeError)."""
    c = x.shape[1]
    for name, t in per_channel.items():
        if t is not None and t.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")


def _empty_batch(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """An input without elements, as torch does it: an empty output still linked to weight
    and bias (so their gradients are zeros, not missing), running statistics untouched."""
    y = x.clone()
    if weight is not None:
        y = y * weight[0]
    if bias is not None:
        y = y + bias[0]
    return y


_VMAP_RUNNING_STATS = (  # torch's message, for the same mistake
    "Batch norm got a batched tensor as input while the running_mean or running_var, which "
    "will be updated in place, were not batched.\nIf you are using a module and do not need "
    "eval mode, please set `track_running_stats` to be False.If you are using a prebuilt "
    "module and do not need eval mode, please see the functorch website for resources on "
    "how to patch your module to work with vmap"
)


@torch.no_grad()
def _update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    m: int,
    momentum: float,
    plain: bool,
) -> None:
    """r ← (1 − momentum)·r + momentum·stat, the variance entering unbiased: m/(m−1)·σ²_B.
    ``plain`` (no transform): both buffers in one foreach kernel (one dispatch, not four)."""
    stats = [mean.to(running_mean.dtype), (var * (m / (m - 1))).to(running_var.dtype)]
    if plain:
        torch._foreach_lerp_([running_mean, running_var], stats, momentum)
        return
    try:
        for running, stat in zip((running_mean, running_var), stats, strict=True):
            running.mul_(1 - momentum).add_(stat, alpha=momentum)  # vmap batches these
    except RuntimeError as err:
        if torch._C._functorch.peek_interpreter_stack() is None:
            raise
        raise RuntimeError(_VMAP_RUNNING_STATS) from err


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
    if training:
        _verify_batch_size(x.size())
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    else:
        if eps < 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be defined in evaluation mode")
    _backend.check_backend(backend)
    if x.numel() == 0:
        return _empty_batch(x, weight, bias)
    if x.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, *), got {tuple(x.shape)}")
    _check_channels(x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if not training and _backend.has_forward_grad(running_mean, running_var):
        if _backend.has_forward_grad(x, weight, bias):
            raise RuntimeError(  # torch's own message
                "batch_norm is not differentiable wrt running_mean and running_var, they "
                "cannot have forward grad defined"
            )
        # Only the statistics carry tangents: like torch, the output gets none.
        running_mean, running_var = (
            fwAD.unpack_dual(t).primal for t in (running_mean, running_var)
        )
    compiled = _backend.use_compiled(backend, x, training)
    transformed = _backend.transformed(x, weight, bias, running_mean, running_var)
    if (
        not training
        and not transformed
        and not (
            torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in (x, weight, bias))
        )
    ):
        # Inference: nothing to differentiate, so no autograd node (its bookkeeping costs as
        # much as the layer's math on small inputs).
        assert running_mean is not None and running_var is not None
        _, scale, shift = eval_coefficients(
            running_mean, running_var, weight, bias, eps, _acc_dtype(x.dtype)
        )
        return _backend.run(affine, compiled, x, scale, shift)
    function = BatchNormFunction
    if transformed and not torch.compiler.is_compiling():
        function = BatchNormFunctionWithJvp
    return function.apply(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        training,
        momentum,
        eps,
        compiled,
        not transformed,
    )[0]
