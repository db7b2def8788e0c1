"""What the trainer measures inside the network: the paper's Fig. 1b/c probe and gradient norms.

The Fig. 1b/c probe, exactly: hidden layer ``layer`` (``spec.probe_layer``, -1 = last) of a
model from ``bncore.models``; its pre-activation is the input of that block's nonlinearity,
i.e. ``act(·)``'s argument: ``Wu`` without BN, ``BN(Wu)`` (with γ, β) with BN. We track ONE
fixed unit, unit 0 (for a CNN: channel 0, all spatial positions; for an Inception module:
channel 0 of its output, i.e. of its 1×1 branch, before that branch's nonlinearity), over a
fixed probe batch (the first ``PROBE_SIZE`` test examples), with the model in eval mode (BN
uses its running statistics, so the probe itself changes nothing and is not affected by batch
composition).
The 15th, 50th and 85th percentiles of those values (linear interpolation, ``torch.quantile``)
are ``act_p15``, ``act_p50``, ``act_p85``.

Note for step 0: before any training-mode pass BN's running statistics are still their
initial (0, 1), so the BN model's step-0 probe shows Wu almost unnormalized.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

PROBE_SIZE = 1000
PROBE_UNIT = 0
PERCENTILES = {"act_p15": 0.15, "act_p50": 0.50, "act_p85": 0.85}


@torch.no_grad()
def preactivations(model: nn.Module, x: torch.Tensor, layer: int) -> torch.Tensor:
    """What enters hidden block ``layer``'s nonlinearity for inputs ``x``, in the model's
    current mode: (N, units) for an MLP, (N, channels, *spatial) for a CNN or Inception."""
    captured: list[torch.Tensor] = []
    hook = model.blocks[layer].act.register_forward_hook(
        lambda _module, inputs, _output: captured.append(inputs[0])
    )
    try:
        model(x)
    finally:
        hook.remove()
    return captured[0]


@torch.no_grad()
def unit_percentiles(
    model: nn.Module, probe_x: torch.Tensor, layer: int, unit: int = PROBE_UNIT
) -> dict[str, torch.Tensor]:
    """act_p15/p50/p85 of one unit's pre-activation over ``probe_x``, in eval mode.

    Returns 0-d tensors (no device sync); restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        values = preactivations(model, probe_x, layer)[:, unit].flatten().float()
    finally:
        model.train(was_training)
    q = torch.quantile(values, torch.tensor(list(PERCENTILES.values()), device=values.device))
    return dict(zip(PERCENTILES, q.unbind(), strict=True))


def grad_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """Total L2 norm of all gradients, as one 0-d tensor (no device sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)  # one fused (foreach) kernel, not one per tensor
