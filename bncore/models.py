"""The networks a JobSpec builds: an MLP (the paper's MNIST net), a small CNN and a small
Inception-style net (the paper's ImageNet experiments, scaled to 28×28 images).

Each is a stack of hidden blocks (``model.blocks``, one per entry of ``spec.hidden``) and a
linear head. The unit everywhere is ``Block``: weights → norm → nonlinearity → dropout (the
last only when ``spec.dropout`` > 0). As the paper prescribes, normalization sits on the
pre-activation Wu, before the nonlinearity, per unit (MLP) or per feature map (convolutions,
Sec. 3.2), and the layer in front of a normalization has no bias (the mean subtraction cancels
it; β takes its role). ``model.blocks[i].act``'s input is the "sigmoid input" of the paper's
Fig. 1b/c; see ``bncore.probes``. Parameter counts equal ``JobSpec.parameter_count()``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bncore.spec import ModelSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def make_norm(norm: str, spatial_dims: int, features: int, spec: ModelSpec) -> nn.Module:
    """A normalization over ``features`` channels of inputs with 0 (MLP), 1 or 2 spatial axes.

    The synchronized variants are the plain layer converted (bncore's
    ``convert_sync_batchnorm``, or torch's ``SyncBatchNorm.convert_sync_batchnorm``): inside a
    torch.distributed process group they normalize over every replica's batch; outside one
    they are plain BN."""
    if norm == "none":
        return nn.Identity()
    if norm in ("sync_batchnorm", "torch_sync_batchnorm"):
        plain = make_norm(
            norm.removesuffix("sync_batchnorm") + "batchnorm", spatial_dims, features, spec
        )
        if norm == "torch_sync_batchnorm":
            return nn.SyncBatchNorm.convert_sync_batchnorm(plain)
        from bncore import nn as bnn

        return bnn.convert_sync_batchnorm(plain)
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


def conv_block(spec: ModelSpec, channels: int, width: int, kernel: int, stride: int = 1) -> Block:
    """Conv2d (same padding) → BatchNorm2d (one γ, β per feature map, Sec. 3.2) → act."""
    return Block(
        nn.Conv2d(channels, width, kernel, stride, padding=kernel // 2, bias=spec.norm == "none"),
        make_norm(spec.norm, 2, width, spec),
        ACTIVATIONS[spec.activation](),
    )


class AvgPool3x3(nn.Module):
    """3×3 average pooling, zero padded (= ``nn.AvgPool2d(3, stride, 1)``), computed as a
    depthwise convolution with a constant kernel: on CPU torch's pooling kernels are ~10× slower
    than the convolution for these shapes (measured: 13 ms vs 1.4 ms for 64×32×14×14)."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = x.new_full((x.shape[1], 1, 3, 3), 1 / 9)
        return F.conv2d(x, kernel, stride=self.stride, padding=1, groups=x.shape[1])


class InceptionModule(nn.Module):
    """Four branches side by side, concatenated along channels (GoogLeNet/BN-Inception):
    1×1; 1×1 → 3×3; 1×1 → 3×3 → 3×3 (BN-Inception's "double 3×3", replacing a 5×5); 3×3
    average pooling → 1×1. Each branch has ``width // 4`` channels; every convolution is a
    ``Block``, so BN (when on) follows every convolution. Spatial size is kept."""

    def __init__(self, channels: int, width: int, spec: ModelSpec):
        super().__init__()
        b = width // 4
        self.branch1 = conv_block(spec, channels, b, 1)
        self.branch3 = nn.Sequential(conv_block(spec, channels, b, 1), conv_block(spec, b, b, 3))
        self.branch33 = nn.Sequential(
            conv_block(spec, channels, b, 1), conv_block(spec, b, b, 3), conv_block(spec, b, b, 3)
        )
        self.branch_pool = nn.Sequential(AvgPool3x3(), conv_block(spec, channels, b, 1))
        self.drop = make_dropout(spec.dropout)

    @property
    def act(self) -> nn.Module:
        """The nonlinearity that produces the module's first output channels (its 1×1
        branch): channel 0 of the module is this act's channel 0, which the probe tracks."""
        return self.branch1.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch3, self.branch33, self.branch_pool)
        return self.drop(torch.cat([branch(x) for branch in branches], dim=1))


class Inception(nn.Module):
    """A small Inception-style net for (C, H, W) images such as 28×28×1.

    ``hidden = [stem, w1, w2, ...]``: a 3×3 stride-2 conv stem with ``stem`` channels (28 → 14),
    then one InceptionModule per ``w`` (output ``w`` channels, a multiple of 4), with 3×3/2
    average pooling before the second half of the modules (14 → 7); then global average
    pooling and a linear head. E.g. ``hidden=[32, 64, 64, 128]``: one module at 14×14, two at
    7×7. (Strided conv and average pooling rather than max pooling: same role, and torch's CPU
    max pooling costs more than the rest of a step; see AvgPool3x3.)"""

    def __init__(self, example_shape: tuple[int, ...], classes: int, spec: ModelSpec):
        super().__init__()
        if len(example_shape) != 3:
            raise ValueError(f"inception needs (C, H, W) image examples, got {example_shape}")
        stem_width, *module_widths = spec.hidden
        stem = conv_block(spec, example_shape[0], stem_width, 3, stride=2)
        stem.drop = make_dropout(spec.dropout)
        blocks: list[nn.Module] = [stem]
        channels = stem_width
        for width in module_widths:
            blocks.append(InceptionModule(channels, width, spec))
            channels = width
        self.blocks = nn.ModuleList(blocks)
        self.reduce_after = len(module_widths) // 2  # block index (0 = the stem)
        self.reduce = AvgPool3x3(stride=2)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.reduce_after:
                x = self.reduce(x)
        return self.head(x.mean(dim=(2, 3)))


ARCHS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "inception": Inception}


def build_model(spec: ModelSpec, example_shape: tuple[int, ...], classes: int) -> nn.Module:
    """The network for one example shape ``(channels, *spatial)`` and class count."""
    cls = ARCHS[spec.arch]
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
    """The normalization modules of every Block, in order (empty for norm 'none')."""
    return [
        m.norm
        for m in model.modules()
        if isinstance(m, Block) and not isinstance(m.norm, nn.Identity)
    ]
