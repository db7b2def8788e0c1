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

Where the maths lives
--------------------
:mod:`bncore._math` holds these formulas as pure functions of tensors (what the Python path
runs, eagerly or through torch.compile); ``bncore/csrc/batch_norm.cpp`` holds the same
formulas as one C++ operator (:mod:`bncore._native` builds and loads it), which is what a
plain CPU float32/float64 call runs by default: at the paper's shapes a layer costs op
dispatch, not arithmetic, and one call replaces ten. This module is the public entry:
argument checks, the choice between the two, and the autograd Functions of the Python path.

Public API
----------
``batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
momentum=0.1, eps=1e-5, *, backend=None)``
    Same semantics as :func:`torch.nn.functional.batch_norm`: in training the running stats (if
    given) are updated in place, ``running_var`` receiving the *unbiased* batch variance. Works
    under autograd (also double backward and batched gradients), forward-mode AD and
    torch.func (grad, vmap, jvp, functional_call), like torch's.
``set_backend("auto" | "eager" | "compiled" | "cpp")`` / ``get_backend()`` / ``compile_stats()``
    Which implementation of the same maths runs: the C++ operator, plain torch ops, or the
    same functions through :func:`torch.compile` (see :mod:`bncore._backend`).
``BatchNormFunction``
    The Python path's :class:`torch.autograd.Function` (forward, closed-form backward, jvp).

No ``torch.batch_norm`` / ``F.batch_norm`` / cuDNN is called anywhere here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from bncore import _backend, _native
from bncore._backend import (  # noqa: F401  (re-exported: the public backend switch)
    AUTO_COMPILE_MIN_NUMEL,
    BACKENDS,
    compile_stats,
    compiled_available,
    get_backend,
    set_backend,
)
from bncore._math import (  # noqa: F401  (_ROW_BLOCK: read by the compiled backend's tests)
    _ROW_BLOCK,
    acc_dtype,
    affine,
    backward,
    batch_stats,
    eval_coefficients,
    forward_train,
    per_channel,
    reduce_dims,
    update_running_stats,
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
            update_running_stats(running_mean, running_var, mean, var, m, momentum, reuse)
        return y, mean, invstd
    assert running_mean is not None and running_var is not None
    invstd, scale, shift = eval_coefficients(
        running_mean, running_var, weight, bias, eps, acc_dtype(x.dtype)
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
        acc = acc_dtype(x.dtype)
        istd = per_channel(invstd, x)
        xhat = (x.to(acc) - per_channel(mean.to(acc), x)) * istd
        dy = torch.zeros_like(xhat)
        if dx is not None:
            dxf = dx.to(acc)
            if ctx.training:
                dims = reduce_dims(x)
                centred = dxf - per_channel(dxf.mean(dims), x)
                dxhat = istd * (centred - xhat * per_channel((xhat * dxf).mean(dims), x))
            else:
                dxhat = istd * dxf
            dy = dy + (dxhat if weight is None else dxhat * per_channel(weight.to(acc), x))
        if dw is not None:
            dy = dy + xhat * per_channel(dw.to(acc), x)
        if db is not None:
            dy = dy + per_channel(db.to(acc), x)
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
    _backend.check_backend(backend)
    if _backend.use_cpp(backend, x, training, running_mean, running_var, weight, bias):
        # One C++ call for the whole layer (bncore/csrc/batch_norm.cpp); None where it does
        # not apply, including every input error, which the Python path below reports.
        y = _native.try_batch_norm(
            x, weight, bias, running_mean, running_var, training, momentum, eps
        )
        if y is not None:
            return y
    if training:
        _verify_batch_size(x.size())
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    else:
        if eps < 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be defined in evaluation mode")
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
        # much as the layer's math on small inputs). The coefficients are computed on every
        # call, not cached: a cache keyed on version counters cannot see writes that bypass
        # them, such as DDP's buffer broadcast (a c10d collective) or `.data` updates.
        assert running_mean is not None and running_var is not None
        _, scale, shift = eval_coefficients(
            running_mean, running_var, weight, bias, eps, acc_dtype(x.dtype)
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
