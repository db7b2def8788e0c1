r"""Synchronized batch normalization across the ranks of a torch.distributed process group.

``SyncBatchNorm`` normalizes each rank's slice of the batch with the statistics of the *global*
batch (every rank's slice together), written from scratch on torch.distributed's collectives:
no ``torch.batch_norm_stats`` / ``batch_norm_gather_stats`` / cuDNN. It runs wherever the
process group's backend does: gloo on CPU, NCCL on CUDA (torch's own SyncBatchNorm refuses CPU
tensors). Ranks may hold different batch sizes, including none at all (N = 0): such a rank
still joins every collective and returns an empty output.

Forward (training)
------------------
Rank r holds n_r values of a channel (n_r = N_r·spatial size, possibly 0) and computes, in two
passes as :func:`bncore._math.forward_train` does::

    μ_r = (1/n_r) Σ x,      M2_r = Σ (x − μ_r)²                 (μ_r = M2_r = 0 if n_r = 0)

One ``all_gather`` of the packed vector [n_r, μ_r (C values), M2_r (C values)] gives every rank
every rank's triple, merged with Chan et al.'s parallel formula::

    n = Σ n_r,    μ = Σ n_r·μ_r / n,    M2 = Σ M2_r + Σ n_r·(μ_r − μ)²,    σ² = M2 / n

It is exact and stable: nothing like Σx² − n·μ² is formed, which loses every digit when
|μ| ≫ σ (an all_reduce of [n, Σx, Σx²] would). Each rank then normalizes its own slice::

    x̂ = (x − μ)·invstd,   invstd = 1/√(σ² + ε),   y = γ·x̂ + β

and, if tracked, updates the running estimates as torch does, with the *global* count:
``r ← (1 − momentum)·r + momentum·stat``, the variance entering unbiased, n/(n − 1)·σ²
(``momentum=None``: cumulative average, factor 1/num_batches_tracked). The statistics are
identical on every rank, so the running buffers stay equal across ranks. A step where every
rank is empty (n = 0) leaves them as they were.

Backward
--------
For the loss L = Σ_r L_r summed over the ranks, with S1 = Σ dy and S2 = Σ dy·x̂ over the whole
global batch (one ``all_reduce(SUM)`` of the packed local [Σdy, Σdy·(x − μ)], 2C values)::

    ∂L/∂x_i = γ·invstd·(dy_i − S1/n − x̂_i·S2/n)

The parameter gradients are *local*: dγ = Σ_local dy·x̂ = ∂L_r/∂γ and dβ = Σ_local dy.

Gradient convention with DistributedDataParallel
------------------------------------------------
DDP *averages* parameter gradients over the W ranks. The input gradient above is that of the
sum Σ_r L_r, so after DDP every parameter, γ, β and those of the layers before this one alike,
receives (1/W)·∂(Σ_r L_r)/∂θ: training minimizes the mean over ranks of the per-rank losses
(torch.nn.SyncBatchNorm's convention too). With equal per-rank batches and each rank's loss a
mean over its own examples, that is the mean loss over the global batch; with uneven batches,
scale rank r's mean loss by W·N_r/N to get it. Without DDP, all_reduce(SUM) of the parameter
gradients gives ∂(Σ_r L_r)/∂θ.

When nothing is synchronized
----------------------------
In eval mode, outside an initialized process group, or in a group of one rank, the layer *is*
bncore's BatchNorm (its forward runs: ``backend``, ``inference_stats``,
:func:`bncore.nn.population_statistics`, which computes per-rank statistics). The synchronized
path runs plain eager torch ops whatever ``backend`` says. Every rank of the group must call
forward and backward of each layer in the same order (as with any collective), and a global
batch of one value per channel gives an infinite unbiased running variance, as torch's does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from bncore._math import acc_dtype, per_channel, reduce_dims
from bncore.nn import _BatchNorm

__all__ = ["SyncBatchNorm", "SyncBatchNormFunction", "convert_sync_batchnorm"]


def local_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """(n_r, μ_r, M2_r) of this rank's slice, in the accumulation dtype; zeros when empty."""
    acc = acc_dtype(x.dtype)
    count = x.numel() // x.shape[1]
    xf = x.to(acc)
    dims = reduce_dims(x)
    mean = xf.sum(dims) / max(count, 1)  # an empty sum is 0, so an empty rank has μ_r = 0
    m2 = (xf - per_channel(mean, x)).square().sum(dims)
    return count, mean, m2


def merge_moments(counts: Tensor, means: Tensor, m2s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Chan's parallel merge of per-rank (n_r, μ_r, M2_r), shapes (W,), (W, C), (W, C), into
    the global (n, μ, M2). Ranks with n_r = 0 weigh nothing (no mask, hence no host sync)."""
    count = counts.sum()
    weights = counts.unsqueeze(1)
    mean = (weights * means).sum(0) / count.clamp_min(1)
    m2 = m2s.sum(0) + (weights * (means - mean).square()).sum(0)
    return count, mean, m2


def normalize(
    x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    """y = γ·(x − μ)·invstd + β, centred first (no cancellation when |μ| ≫ σ)."""
    acc = acc_dtype(x.dtype)
    scale = invstd if weight is None else invstd * weight.to(acc)
    centred = x.to(acc) - per_channel(mean, x)  # a fresh tensor of ours: y is written into it
    if bias is None:
        return centred.mul_(per_channel(scale, x)).to(x.dtype)
    y = torch.addcmul(per_channel(bias.to(acc), x), centred, per_channel(scale, x), out=centred)
    return y.to(x.dtype)


class SyncBatchNormFunction(torch.autograd.Function):
    """The synchronized training forward and its closed-form backward (module docstring).

    ``apply(x, weight, bias, running_mean, running_var, momentum, eps, process_group)``: it
    always communicates (a one-rank group included), so it can be gradchecked alone. Its
    backward is not differentiable again (it communicates).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
        process_group: Any,
    ) -> Tensor:
        channels = x.shape[1]
        count, mean, m2 = local_moments(x)
        packed = torch.cat([mean.new_full((1,), count), mean, m2])
        world = dist.get_world_size(process_group)
        gathered = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(gathered, packed, group=process_group)
        table = torch.stack(gathered)  # (W, 1 + 2C)
        total, mean, m2 = merge_moments(
            table[:, 0], table[:, 1 : 1 + channels], table[:, 1 + channels :]
        )
        var = m2 / total.clamp_min(1)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = var * (total / (total - 1))
                # An empty global batch (every rank empty) leaves the estimates as they were;
                # torch.where, not an `if`, so that no host sync waits for the count.
                seen = total > 0
                for running, stat in ((running_mean, mean), (running_var, unbiased)):
                    updated = running.lerp(stat.to(running.dtype), momentum)
                    running.copy_(torch.where(seen, updated, running))
        ctx.save_for_backward(x, weight, mean, invstd, total)
        ctx.process_group = process_group
        return normalize(x, mean, invstd, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd, total = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        acc = acc_dtype(x.dtype)
        dims = reduce_dims(x)
        dyf = dy.to(acc)
        centred = x.to(acc) - per_channel(mean, x)
        sum_dy = dyf.sum(dims)
        sum_dy_xc = (dyf * centred).sum(dims)  # Σ dy·(x − μ), local
        dx = None
        # needs_input_grad[0] is the same on every rank (same model), so either every rank
        # joins this all_reduce or none does; an empty rank joins with its zero sums.
        if need_dx:
            packed = torch.cat([sum_dy, sum_dy_xc])
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=ctx.process_group)
            global_dy, global_dy_xc = packed.split(x.shape[1])
            n = total.clamp_min(1)
            k = invstd if weight is None else invstd * weight.to(acc)
            # dy − S1/n − x̂·S2/n, with x̂·S2 = (x − μ)·invstd²·Σdy·(x − μ); into our temporary
            centred.mul_(per_channel(-invstd.square() * global_dy_xc / n, x))
            centred.add_(dyf).sub_(per_channel(global_dy / n, x))
            dx = centred.mul_(per_channel(k, x)).to(x.dtype)
        param_dtype = weight.dtype if weight is not None else x.dtype
        dw = (sum_dy_xc * invstd).to(param_dtype) if need_dw else None
        db = sum_dy.to(param_dtype) if need_db else None
        return dx, dw, db, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """Batch normalization with statistics over the global batch of a process group, for
    (N, C), (N, C, L), (N, C, H, W) and (N, C, D, H, W) inputs (see the module docstring).

    Same constructor as :class:`torch.nn.SyncBatchNorm`: ``(num_features, eps=1e-5,
    momentum=0.1, affine=True, track_running_stats=True, process_group=None, device=None,
    dtype=None, *, bias=True)``; ``process_group=None`` is the whole world. Parameters, buffers
    and the state dict are torch's (a state dict loads into torch.nn.SyncBatchNorm and back).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )
        self.process_group = process_group

    def _check_input_dim(self, x: Tensor) -> None:
        if not 2 <= x.dim() <= 5:
            raise ValueError(f"expected 2D to 5D input (got {x.dim()}D input)")

    def _sync_group(self) -> Any:
        """The group to synchronize over, or None when there is nothing to synchronize."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        group = self._sync_group() if self.training and self._collector is None else None
        if group is None:
            return super().forward(x)  # bncore's BatchNorm, exactly
        self._check_input_dim(x)
        if x.shape[1] == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats
        return SyncBatchNormFunction.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            momentum,
            self.eps,
            group,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every bncore and torch ``BatchNorm{1,2,3}d`` of ``module`` (recursively) by
        a SyncBatchNorm sharing its parameters (so requires_grad and an optimizer's references
        hold) and buffers, keeping train/eval mode and bncore's ``backend`` and
        ``inference_stats``. Modifies ``module`` in place and returns it, or the new layer if
        ``module`` is itself a batch norm (as torch's classmethod does)."""
        converted = module
        if isinstance(module, _CONVERTIBLE) and not isinstance(module, cls):
            converted = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                bias=module.bias is not None,
            )
            if module.affine:
                converted.weight = module.weight
                converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.train(module.training)
            for attr in ("backend", "inference_stats", "population_mean", "population_var"):
                if hasattr(module, attr):
                    setattr(converted, attr, getattr(module, attr))
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted


# bncore's layers subclass these, so both kinds are converted.
_CONVERTIBLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """:meth:`SyncBatchNorm.convert_sync_batchnorm` as a function."""
    return SyncBatchNorm.convert_sync_batchnorm(module, process_group)
