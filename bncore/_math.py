"""The batch-norm maths as pure functions of tensors (Ioffe & Szegedy 2015, Algorithm 1, and
its closed-form gradients), shared by every Python path of :mod:`bncore.functional`.

The same functions run eagerly or through torch.compile (:mod:`bncore._backend` chooses), so
the two cannot drift apart; the C++ operator (``bncore/csrc/batch_norm.cpp``) computes the
same formulas and is checked against these and torch by the same parity tests. Most of the
length here is about speed on CPU (fewest ops at small shapes, no temporaries at large ones,
reductions inductor can vectorize); each formula is in its function's docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 accumulate in float32 (sums of many halves lose too many digits)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def reduce_dims(x: Tensor) -> list[int]:
    """Every dim but the channel dim 1: batch and spatial positions share the statistics."""
    return [0, *range(2, x.dim())]


def per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a (C,) vector as (1, C, 1, ...) so it broadcasts against x. Against (N, C) the
    vector already does: no view, which costs a dispatch on every small call."""
    return v if x.dim() == 2 else v.view(1, -1, *([1] * (x.dim() - 2)))


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
        return per_channel(v, x)  # for (N, C), (C,) also broadcasts against row blocks

    if not torch.compiler.is_compiling():
        return fn(pc, *ts).sum(reduce_dims(x))
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
        return torch.linalg.vector_norm(t, 2, reduce_dims(t)).square()
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
    acc = acc_dtype(x.dtype)
    m = x.numel() // x.shape[1]

    def pc(v: Tensor) -> Tensor:
        return per_channel(v, x)

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
    dims, m = reduce_dims(x), x.numel() // x.shape[1]
    xhat = (xf - per_channel(mean, x)) * per_channel(invstd, x)
    sum_dy, sum_dy_xhat = dyf.sum(dims), (dyf * xhat).sum(dims)
    centred = dyf - per_channel(sum_dy / m, x)
    dx = torch.addcmul(centred, xhat, per_channel(sum_dy_xhat / m, x), value=-1)
    k = invstd if weight is None else invstd * weight
    dx = dx * per_channel(k, x)
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
    scale, shift = per_channel(scale, x), per_channel(shift, x)
    if (
        not torch.compiler.is_compiling()
        and math.prod(x.shape[2:]) >= _MIN_PLANE
        and x.is_contiguous()
    ):
        plane = (1, *x.shape[1:])
        scale, shift = scale.expand(plane).contiguous(), shift.expand(plane).contiguous()
    y = torch.addcmul(shift, x if x.dtype == scale.dtype else x.to(scale.dtype), scale)
    return y if y.dtype == x.dtype else y.to(x.dtype)


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
    acc = acc_dtype(x.dtype)
    if training and need_dx and _few_ops(x):
        dx, dw, db = _backward_train_small(dy, x, mean.to(acc), invstd, weight, acc)
        return (dx, dw, db) if need_dparams else (dx, None, None)
    dyf, xf = dy.to(acc), x.to(acc)
    k = invstd if weight is None else invstd * weight.to(acc)
    if not training and not need_dparams:
        return (dyf * per_channel(k, x)).to(x.dtype) if need_dx else None, None, None

    mean = mean.to(acc)
    sum_dy = _channel_sum(lambda pc, d: d.to(acc), dy)
    if torch.compiler.is_compiling():  # fused with the sum above into one pass over dy and x
        tmp = None
        sum_dy_xc = _channel_sum(lambda pc, d, v: d.to(acc) * (v.to(acc) - pc(mean)), dy, x)
    elif reuse:  # our temporary: x − μ, then (x − μ)·dy, then dx
        tmp = xf - per_channel(mean, x)
        sum_dy_xc = tmp.mul_(dyf).sum(reduce_dims(x))
    else:
        tmp = None
        sum_dy_xc = ((xf - per_channel(mean, x)) * dyf).sum(reduce_dims(x))
    sum_dy_xhat = sum_dy_xc * invstd
    dx = None
    if need_dx and not training:
        dx = dyf * per_channel(k, x)
    elif need_dx:
        m = x.numel() // x.shape[1]
        a = -k * invstd * sum_dy_xhat / m
        b = -a * mean - k * sum_dy / m
        dx = _addcmul_into(tmp, per_channel(b, x), dyf, per_channel(k, x))
        add_ax = dx.addcmul_ if reuse else dx.addcmul  # in place into our own temporary
        dx = add_ax(xf, per_channel(a, x))
    if dx is not None:
        dx = dx.to(x.dtype)
    if not need_dparams:
        return dx, None, None
    return dx, sum_dy_xhat, sum_dy


def batch_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(μ_B, 1/√(σ²_B + ε)) in plain differentiable ops: the double backward recomputes them
    so that autograd sees how they depend on x (the saved ones are constants)."""
    xf = x.to(acc_dtype(x.dtype))
    dims = reduce_dims(x)
    mean = xf.mean(dims)
    var = (xf - per_channel(mean, x)).square().mean(dims)
    return mean, torch.rsqrt(var + eps)


_VMAP_RUNNING_STATS = (  # torch's message, for the same mistake
    "Batch norm got a batched tensor as input while the running_mean or running_var, which "
    "will be updated in place, were not batched.\nIf you are using a module and do not need "
    "eval mode, please set `track_running_stats` to be False.If you are using a prebuilt "
    "module and do not need eval mode, please see the functorch website for resources on "
    "how to patch your module to work with vmap"
)


@torch.no_grad()
def update_running_stats(
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
