"""The networks a JobSpec builds: an MLP (the paper's MNIST net) and a small CNN.

Both are a stack of hidden ``Block``s (weights → norm → nonlinearity → dropout, the last only
when ``spec.dropout`` > 0) and a linear head. As
the paper prescribes, normalization sits on the pre-activation Wu, before the nonlinearity, and
the layer in front of a normalization has no bias (the mean subtraction cancels it; β takes its
role). ``block.act``'s input is the "sigmoid input" of the paper's Fig. 1b/c; see
``bncore.probes``. Parameter counts equal ``JobSpec.parameter_count()``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bncore.spec import ModelSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def make_norm(norm: str, spatial_dims: int, features: int, spec: ModelSpec) -> nn.Module:
    """A normalization over ``features`` channels of inputs with 0 (MLP), 1 or 2 spatial axes."""
    if norm == "none":
        return nn.Identity()
    if norm == "batchnorm":
        from bncore import nn as bnn  # ours, from scratch

        module = bnn
    elif norm == "torch_batchnorm":
        module = nn
    else:
        raise ValueError(f"unknown norm {norm!r}")
    # (N, C) and (N, C, L) both use BatchNorm1d, as in torch.
    cls = {0: module.BatchNorm1d, 1: module.BatchNorm1d, 2: module.BatchNorm2d}[spatial_dims]
    return cls(features, eps=spec.bn_eps, momentum=spec.bn_momentum)


def make_dropout(rate: float) -> nn.Module:
    """Element-wise dropout (also on feature maps: each activation on its own), or nothing."""
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


class Block(nn.Module):
    """weights → norm → act → drop. ``forward`` keeps them as separate modules so that a hook
    on ``act`` sees exactly what enters the nonlinearity."""

    def __init__(
        self,
        weights: nn.Module,
        norm: nn.Module,
        act: nn.Module,
        drop: nn.Module | None = None,
    ):
        super().__init__()
        self.weights, self.norm, self.act = weights, norm, act
        self.drop = drop if drop is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.weights(x))))


class MLP(nn.Module):
    """Flatten → [Linear → norm → act → dropout] × len(hidden) → Linear to class logits."""

    def __init__(self, example_shape: tuple[int, ...], classes: int, spec: ModelSpec):
        super().__init__()
        fan_in = math.prod(example_shape)
        normalized = spec.norm != "none"
        blocks = []
        for width in spec.hidden:
            blocks.append(
                Block(
                    nn.Linear(fan_in, width, bias=not normalized),
                    make_norm(spec.norm, 0, width, spec),
                    ACTIVATIONS[spec.activation](),
                    make_dropout(spec.dropout),
                )
            )
            fan_in = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(fan_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class CNN(nn.Module):
    """[Conv (kernel 3, padding 1, stride 1) → norm → act → dropout] × len(hidden) → global
    average pool → Linear. Conv1d for 1-D examples (C, L), Conv2d for 2-D examples (C, H, W)."""

    def __init__(self, example_shape: tuple[int, ...], classes: int, spec: ModelSpec):
        super().__init__()
        spatial_dims = len(example_shape) - 1
        if spatial_dims not in (1, 2):
            raise ValueError(f"CNN needs examples with 1 or 2 spatial axes, got {example_shape}")
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        normalized = spec.norm != "none"
        channels = example_shape[0]
        blocks = []
        for width in spec.hidden:
            blocks.append(
                Block(
                    conv(channels, width, kernel_size=3, padding=1, bias=not normalized),
                    make_norm(spec.norm, spatial_dims, width, spec),
                    ACTIVATIONS[spec.activation](),
                    make_dropout(spec.dropout),
                )
            )
            channels = width
        self.blocks = nn.ModuleList(blocks)
        self.spatial_axes = tuple(range(2, 2 + spatial_dims))
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=self.spatial_axes))


def build_model(spec: ModelSpec, example_shape: tuple[int, ...], classes: int) -> nn.Module:
    """The network for one example shape ``(channels, *spatial)`` and class count."""
    cls = MLP if spec.arch == "mlp" else CNN
    model = cls(tuple(example_shape), classes, spec)
    if spec.init == "poor":
        poor_init_(model)
    return model


@torch.no_grad()
def poor_init_(model: nn.Module) -> None:
    """N(0, 1) for every weight matrix/kernel (head included), whatever its fan-in: far too
    large for wide layers, the badly scaled start BN is claimed to shrug off. Biases and BN's
    γ, β keep their defaults."""
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            m.weight.normal_(0.0, 1.0)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The normalization modules of the hidden blocks (empty for norm 'none')."""
    return [b.norm for b in model.blocks if not isinstance(b.norm, nn.Identity)]
