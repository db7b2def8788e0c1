"""Batch normalization layers built on :mod:`bncore.functional`, drop-in for ``torch.nn``.

Layers
------
``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d`` take torch's exact constructor arguments
``(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
dtype=None, *, bias=True)`` and have the same parameters and buffers (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), so their ``state_dict`` loads into
``torch.nn.BatchNorm*d`` and back. ``convert_batchnorm(model, to="bncore" | "torch")`` swaps
every BN layer of a model for the other kind, copying parameters and buffers.
``SyncBatchNorm`` (statistics over a torch.distributed process group's global batch) and
``convert_sync_batchnorm(model, process_group=None)`` live in :mod:`bncore.nn.sync_batchnorm`.

Each layer also has two plain attributes (not saved in the state dict):

- ``backend``: None (follow :func:`bncore.functional.set_backend`), "auto", "eager",
  "cpp" (the C++ operator) or "compiled".
- ``inference_stats``: which statistics eval mode normalizes with:
  "running" (default, like torch: the exponential/cumulative moving averages),
  "population" (the paper's Algorithm 2, computed by :func:`population_statistics`), or
  "batch" (the statistics of the test batch itself; no buffer is touched).

Inference with population statistics (the paper's Algorithm 2)
--------------------------------------------------------------
After training, the paper fixes each BN layer's statistics to averages over many training
mini-batches B of size m::

    E[x] = E_B[μ_B]          Var[x] = m/(m−1) · E_B[σ²_B]      (σ²_B biased, as in training)

``population_statistics(model, batches)`` computes them for every bncore BN layer of any
``nn.Module``: it runs the model over ``batches`` without gradients with every BN layer
normalizing by its batch statistics, exactly as in training, so each layer sees its inputs as
the trained network produces them; the running buffers are left alone. The results go into the
non-persistent buffers ``population_mean`` / ``population_var`` of each layer (or also into
``running_mean`` / ``running_var`` with ``write_running=True``, which puts them in the
state dict). Typical use, comparing the three kinds of inference statistics::

    from bncore.nn import population_statistics, set_inference_stats

    population_statistics(model, (x for x, _ in train_loader), max_batches=100)
    model.eval()
    for stats in ("running", "population", "batch"):
        set_inference_stats(model, stats)
        accuracy[stats] = evaluate(model, test_loader)
    set_inference_stats(model, "running")

If batches differ in size, each batch's variance is made unbiased with its own m_B
(E_B[m_B/(m_B−1)·σ²_B]), which is the paper's formula when all batches have size m.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from bncore._backend import check_backend
from bncore.functional import batch_norm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "convert_batchnorm",
    "population_statistics",
    "set_inference_stats",
]

INFERENCE_STATS = ("running", "population", "batch")


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    r"""Batch normalization over dim 1 of an (N, C, \*) input (Ioffe & Szegedy 2015).

    Training: per channel, over the m = N·(spatial size) values of the mini-batch,

    .. math::
        \mu_B = \frac1m\sum_i x_i,\quad \sigma_B^2 = \frac1m\sum_i (x_i-\mu_B)^2,\quad
        y_i = \gamma\,\frac{x_i-\mu_B}{\sqrt{\sigma_B^2+\epsilon}} + \beta

    and, if ``track_running_stats``, the running estimates are updated with
    ``r ← (1 − momentum)·r + momentum·stat`` (``momentum=None``: cumulative average, factor
    1/num_batches_tracked), the variance entering unbiased, m/(m−1)·σ²_B.

    Eval: normalize with the running estimates (or population / batch statistics, see
    ``inference_stats``). Without running stats (``track_running_stats=False``) batch
    statistics are used in eval mode too, like torch.

    A subclass of torch's batch-norm base (and each layer of ``torch.nn.BatchNorm{1,2,3}d``),
    so torch's tooling that looks for batch norms finds it; parameters, buffers, the
    state dict and its loading, ``reset_*`` and input checks are torch's, the forward ours.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
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
        self.backend: str | None = None
        self.inference_stats: str = "running"
        self._collector: _StatsCollector | None = None
        # Algorithm 2's statistics: not persistent, so the state dict stays torch's.
        self.register_buffer("population_mean", None, persistent=False)
        self.register_buffer("population_var", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        check_backend(self.backend)
        if self._collector is not None:
            return self._collector.forward(self, x)

        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)

        mean, var = self.running_mean, self.running_var
        if not self.training:
            if self.inference_stats == "population":
                if self.population_mean is None or self.population_var is None:
                    raise RuntimeError(
                        "inference_stats='population' but no population statistics were "
                        "computed: call bncore.nn.population_statistics(model, batches) first"
                    )
                mean, var = self.population_mean, self.population_var
            elif self.inference_stats == "batch":
                mean = var = None
            elif self.inference_stats != "running":
                raise ValueError(
                    f"inference_stats must be one of {INFERENCE_STATS}, "
                    f"got {self.inference_stats!r}"
                )
        # Batch statistics in training, and in eval when there are no statistics to use.
        use_batch_stats = self.training or (mean is None and var is None)
        # Running buffers are only updated when tracked, in training mode.
        if self.training and not self.track_running_stats:
            mean = var = None
        return batch_norm(
            x,
            mean,
            var,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
            backend=self.backend,
        )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """Batch normalization of (N, C) or (N, C, L) inputs; statistics over N (and L)."""


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """Batch normalization of (N, C, H, W) inputs; statistics over N, H, W per channel."""


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Batch normalization of (N, C, D, H, W) inputs; statistics over N, D, H, W per channel."""


# ---------------------------------------------------------------------------------------------
# Converting models between bncore and torch.nn batch norm layers.
# ---------------------------------------------------------------------------------------------

_TO_BNCORE: dict[type[nn.Module], type[_BatchNorm]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
}
_TO_TORCH: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in _TO_BNCORE.items()}


def _convert_layer(layer: nn.Module, to: str) -> nn.Module | None:
    table: dict[type[nn.Module], Any] = _TO_BNCORE if to == "bncore" else _TO_TORCH
    new_cls = table.get(type(layer))
    return None if new_cls is None else _rebuilt(layer, new_cls)


def _rebuilt(layer: nn.Module, new_cls: type[nn.Module]) -> nn.Module:
    """A ``new_cls`` batch norm configured as ``layer`` is, with its parameters, buffers,
    ``requires_grad`` flags and train/eval mode."""
    ref = layer.weight if layer.weight is not None else layer.running_mean
    new = new_cls(
        layer.num_features,
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        track_running_stats=layer.track_running_stats,
        device=ref.device if ref is not None else None,
        dtype=ref.dtype if ref is not None else None,
        bias=layer.bias is not None or not layer.affine,
    )
    new.load_state_dict(layer.state_dict())
    if layer.weight is not None:
        new.weight.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    new.train(layer.training)
    return new


def convert_batchnorm(module: nn.Module, to: str = "bncore") -> nn.Module:
    """Replace every ``torch.nn.BatchNorm{1,2,3}d`` by the bncore layer (``to="bncore"``) or
    back (``to="torch"``), recursively, copying parameters, buffers and train/eval mode.
    Modifies ``module`` in place and returns it (or the new layer if ``module`` is itself one).
    """
    if to not in ("bncore", "torch"):
        raise ValueError(f"to must be 'bncore' or 'torch', got {to!r}")
    converted = _convert_layer(module, to)
    if converted is not None:
        return converted
    for name, child in module.named_children():
        new_child = convert_batchnorm(child, to)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


# ---------------------------------------------------------------------------------------------
# The paper's inference statistics (Algorithm 2).
# ---------------------------------------------------------------------------------------------


class _StatsCollector:
    """Accumulates Σ_B μ_B and Σ_B m_B/(m_B−1)·σ²_B for one layer while normalizing with the
    batch statistics, as in training."""

    def __init__(self) -> None:
        self.sum_mean: Tensor | None = None
        self.sum_var: Tensor | None = None
        self.batches = 0

    @torch.no_grad()
    def forward(self, layer: _BatchNorm, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        xf = x.to(torch.float64)  # accumulate in float64: many batches are summed
        m = x.numel() // x.shape[1]
        if m < 2:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        mean = xf.mean(dims)
        var = (xf - mean.view(1, -1, *([1] * (x.dim() - 2)))).square().mean(dims)  # biased σ²_B
        if self.sum_mean is None or self.sum_var is None:
            self.sum_mean, self.sum_var = torch.zeros_like(mean), torch.zeros_like(var)
        self.sum_mean += mean
        self.sum_var += var * (m / (m - 1))
        self.batches += 1
        # Normalizing with (μ_B, σ²_B) as fixed statistics is exactly the training-mode output.
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return batch_norm(
            x,
            mean.to(acc),
            var.to(acc),
            layer.weight,
            layer.bias,
            False,
            0.0,
            layer.eps,
            backend=layer.backend,
        )


def _bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def set_inference_stats(model: nn.Module, stats: str) -> nn.Module:
    """Choose the statistics every bncore BN layer of ``model`` uses in eval mode:
    "running", "population" or "batch". Returns the model."""
    if stats not in INFERENCE_STATS:
        raise ValueError(f"stats must be one of {INFERENCE_STATS}, got {stats!r}")
    for _, layer in _bn_layers(model):
        layer.inference_stats = stats
    return model


@contextmanager
def _collecting(model: nn.Module, others_training: bool) -> Iterator[dict[str, _StatsCollector]]:
    layers = _bn_layers(model)
    modes = {m: m.training for m in model.modules()}
    collectors = {name: _StatsCollector() for name, _ in layers}
    try:
        model.train(others_training)
        for name, layer in layers:
            layer._collector = collectors[name]
        yield collectors
    finally:
        for _, layer in layers:
            layer._collector = None
        for m, training in modes.items():
            m.training = training


@torch.no_grad()
def population_statistics(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    max_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    others_training: bool = False,
    write_running: bool = False,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Compute the paper's population statistics (Algorithm 2) for every bncore BN layer.

    Runs ``model`` on each element of ``batches`` (``forward(model, batch)`` if given, else
    ``model(batch)``), at most ``max_batches`` of them, without gradients; every BN layer
    normalizes with its batch statistics (as in training) and accumulates
    E[x] = mean_B μ_B and Var[x] = mean_B m/(m−1)·σ²_B. Other layers run in eval mode
    (dropout off) unless ``others_training=True``. Running buffers, num_batches_tracked and the
    train/eval modes are left as they were.

    Stores the result in each layer's ``population_mean`` / ``population_var`` buffers (use
    with ``set_inference_stats(model, "population")``), and also copies it into
    ``running_mean`` / ``running_var`` if ``write_running=True``. Returns
    ``{layer name: (mean, var)}``.
    """
    count = 0
    with _collecting(model, others_training) as collectors:
        for batch in batches:
            if max_batches is not None and count >= max_batches:
                break
            if forward is not None:
                forward(model, batch)
            else:
                model(batch)
            count += 1
    if count == 0:
        raise ValueError("population_statistics needs at least one batch")

    result: dict[str, tuple[Tensor, Tensor]] = {}
    for name, layer in _bn_layers(model):
        c = collectors.get(name)
        if c is None or c.sum_mean is None or c.sum_var is None:
            continue  # this layer never ran (e.g. an unused branch)
        ref = layer.weight if layer.weight is not None else layer.running_mean
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        mean = (c.sum_mean / c.batches).to(dtype)
        var = (c.sum_var / c.batches).to(dtype)
        layer.population_mean, layer.population_var = mean, var
        if write_running and layer.running_mean is not None and layer.running_var is not None:
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        result[name] = (mean, var)
    return result
