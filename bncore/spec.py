"""The training-job spec: the one definition shared by the trainer, the workers and the API.

A spec is plain data (pydantic, no torch), validated with bounds so that a job that would
exhaust the machine is refused up front with an error naming the field and the limit::

    {"name": "mnist-bn", "dataset": "mnist1d",
     "model": {"arch": "mlp", "hidden": [100, 100, 100], "activation": "sigmoid",
               "norm": "batchnorm"},
     "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
     "batch_size": 60, "steps": 3000, "eval_every": 100, "seed": 0}

Unknown keys are rejected (``extra="forbid"``), numbers must be finite. ``replicas`` > 1 runs
the job data-parallel (bncore/distributed.py): ``batch_size`` stays the global batch and must
divide evenly across the replicas.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Hard limits. They keep one job within what a single worker can hold; raise them with care.
MAX_STEPS = 200_000
MAX_BATCH_SIZE = 8192
MAX_WIDTH = 4096
MAX_DEPTH = 16
MAX_PARAMETERS = 20_000_000
MAX_LR = 100.0
MAX_REPLICAS = 8  # processes of one data-parallel run (a worker may hold fewer: its capacity)

Dataset = Literal["mnist1d", "digits", "synthetic", "fashion_mnist", "mnist_idx", "npz"]
FILE_DATASETS = ("fashion_mnist", "mnist_idx", "npz")  # the ones data_path applies to
Activation = Literal["sigmoid", "tanh", "relu"]
# With replicas > 1, "batchnorm"/"torch_batchnorm" normalize each replica's slice of the batch
# on its own ("ghost" batches); the sync variants normalize over the whole global batch.
# "torch_sync_batchnorm" (torch.nn.SyncBatchNorm, the oracle) needs GPUs when replicas > 1.
Norm = Literal["none", "batchnorm", "torch_batchnorm", "sync_batchnorm", "torch_sync_batchnorm"]
SYNC_NORMS = ("sync_batchnorm", "torch_sync_batchnorm")

# (example shape as (channels, *spatial), number of classes) for the datasets whose shape is
# known up front; npz files are checked when loaded. "synthetic" uses synthetic_features.
# The MLP flattens an example; the CNN convolves over its spatial axes (1-D or 2-D).
KNOWN_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist1d": ((1, 40), 10),
    "digits": ((1, 8, 8), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "mnist_idx": ((1, 28, 28), 10),
}

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSpec(_Strict):
    """The network. Normalization sits before each nonlinearity; the layer in front of a
    normalization has no bias (the paper: β takes its role)."""

    arch: Literal["mlp", "cnn", "inception"] = "mlp"
    hidden: list[Width] = Field(
        default_factory=lambda: [100, 100, 100],
        min_length=1,
        max_length=MAX_DEPTH,
        description="MLP: units per hidden layer. CNN: channels per conv block. Inception: "
        "the stem conv's channels, then each Inception module's output channels (multiples of "
        "4: four equal branches), e.g. [32, 64, 64, 128].",
    )
    activation: Activation = "sigmoid"
    norm: Norm = Field(
        "batchnorm",
        description="batchnorm: bncore's, from scratch; torch_batchnorm: torch.nn's. With "
        "replicas > 1 both normalize each replica's slice alone (ghost batches); "
        "sync_batchnorm (bncore's) and torch_sync_batchnorm (torch.nn.SyncBatchNorm, GPUs "
        "only when replicas > 1) use the statistics of the whole global batch. With "
        "replicas = 1 every BN variant is plain BN.",
    )
    init: Literal["default", "poor"] = Field(
        "default",
        description="'poor' draws weights from N(0, 1) regardless of fan-in (badly scaled on "
        "purpose, to show BN's insensitivity to initialisation).",
    )
    bn_momentum: float | None = Field(
        0.1, gt=0.0, le=1.0, description="None = cumulative moving average, as in torch."
    )
    bn_eps: float = Field(1e-5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_inception_widths(self) -> ModelSpec:
        if self.arch == "inception":
            if len(self.hidden) < 2:
                raise ValueError(
                    "inception needs hidden = [stem channels, module widths...]: 2+ entries"
                )
            odd = [w for w in self.hidden[1:] if w % 4]
            if odd:
                raise ValueError(
                    f"inception module widths (hidden[1:]) must be multiples of 4, got {odd}"
                )
        return self

    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout rate after every hidden block's nonlinearity (training only; "
        "0 = none). The paper removed dropout from its BN networks (Sec. 4.2.1).",
    )


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.5, gt=0.0, le=MAX_LR)
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD only.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    schedule: Literal["constant", "step", "exponential"] = "constant"
    step_size: int = Field(1000, ge=1, le=MAX_STEPS, description="'step': decay every N steps.")
    gamma: float = Field(
        0.1, gt=0.0, le=1.0, description="'step': factor per decay; 'exponential': per step."
    )


class JobSpec(_Strict):
    """One training job."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "name": "mnist1d-bn",
                    "dataset": "mnist1d",
                    "model": {
                        "arch": "mlp",
                        "hidden": [100, 100, 100],
                        "activation": "sigmoid",
                        "norm": "batchnorm",
                    },
                    "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
                    "batch_size": 60,
                    "steps": 3000,
                    "eval_every": 100,
                    "seed": 0,
                }
            ]
        },
    )

    name: str = Field("run", min_length=1, max_length=200)
    dataset: Dataset = "mnist1d"
    data_path: str | None = Field(
        None,
        max_length=500,
        description="mnist_idx / npz (required) and fashion_mnist (optional: default "
        "<data dir>/fashion-mnist if present, else Debian's /usr/share/datasets/fashion-mnist): "
        "a path relative to the server's data directory.",
    )
    synthetic_features: int = Field(32, ge=1, le=MAX_WIDTH, description="'synthetic' only.")
    train_size: int | None = Field(
        None, ge=1, le=1_000_000, description="Cap on training examples (None = all)."
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: int = Field(
        60,
        ge=2,
        le=MAX_BATCH_SIZE,
        description="The global mini-batch: with replicas > 1 each replica takes batch_size / "
        "replicas examples of it.",
    )
    replicas: int = Field(
        1,
        ge=1,
        le=MAX_REPLICAS,
        description="Data-parallel processes (torch.distributed, DistributedDataParallel): one "
        "per GPU on a CUDA worker, CPU processes otherwise. Must divide batch_size; a run only "
        "goes to a worker that can hold this many.",
    )
    steps: int = Field(3000, ge=1, le=MAX_STEPS)
    checkpoint_every: int | None = Field(
        None,
        ge=0,
        le=MAX_STEPS,
        description="Steps between checkpoints (0: only the final one), which a retried run "
        "resumes from. Default: the server's BNLAB_CHECKPOINT_EVERY (500).",
    )
    eval_every: int = Field(100, ge=1, le=MAX_STEPS)
    log_every: int = Field(1, ge=1, le=MAX_STEPS, description="Emit train metrics every N steps.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    probe_layer: int = Field(
        -1,
        ge=-MAX_DEPTH,
        lt=MAX_DEPTH,
        description="Hidden layer whose pre-activation percentiles (15/50/85th, the paper's "
        "Fig. 1b/c) are tracked; -1 = the last.",
    )
    divergence_factor: float = Field(
        1e3, gt=1.0, le=1e12, description="Stop as diverged when loss > factor × first loss."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("data_path")
    @classmethod
    def _check_data_path(cls, value: str | None) -> str | None:
        """Refuse paths that obviously leave the data directory (absolute, a drive, a ``..``
        component, a NUL). Symlinks can only be judged where the data is: the trainer resolves
        every path inside the directory (bncore.data.resolve_data_path)."""
        if value is None:
            return value
        parts = value.replace("\\", "/").split("/")
        drive = len(value) > 1 and value[1] == ":" and value[0].isalpha()  # C:\\data
        outside = "it could point outside the data directory"
        if value.startswith(("/", "\\")) or drive:
            raise ValueError(f"data_path must be relative: absolute, {outside}")
        if ".." in parts:
            raise ValueError(f"data_path may not contain '..': {outside}")
        if "\0" in value:
            raise ValueError("data_path may not contain a NUL character")
        return value

    @field_validator("replicas")
    @classmethod
    def _check_replicas(cls, value: int, info: ValidationInfo) -> int:
        """The global batch splits evenly: replica r takes the r-th slice of each batch."""
        batch = info.data.get("batch_size")  # absent when batch_size itself was refused
        if batch is not None and batch % value:
            raise ValueError(
                f"batch_size {batch} must be divisible by replicas {value} (each replica "
                f"takes an equal slice of the global batch)"
            )
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> JobSpec:
        if self.dataset in ("mnist_idx", "npz") and not self.data_path:
            raise ValueError(f"data_path is required for dataset '{self.dataset}'")
        if self.data_path is not None and self.dataset not in FILE_DATASETS:
            raise ValueError(f"data_path is only used by the datasets {', '.join(FILE_DATASETS)}")
        shape = self.input_shape()
        if self.model.arch == "inception" and shape is not None and len(shape[0]) != 3:
            raise ValueError(
                f"arch 'inception' needs (C, H, W) images; dataset '{self.dataset}' has examples "
                f"of shape {shape[0]}"
            )
        per_replica = self.batch_size // self.replicas
        if per_replica < 2 and self.model.norm in ("batchnorm", "torch_batchnorm"):
            raise ValueError(
                f"norm '{self.model.norm}' normalizes each replica's slice alone, and "
                f"batch_size {self.batch_size} / replicas {self.replicas} leaves 1 example: "
                "use a larger batch_size or sync_batchnorm"
            )
        if (
            self.replicas > 1
            and self.model.norm == "torch_sync_batchnorm"
            and (self.device == "cpu")
        ):
            raise ValueError(
                "torch_sync_batchnorm (torch.nn.SyncBatchNorm) runs on GPUs only; on CPU use "
                "sync_batchnorm (bncore's)"
            )
        depth = len(self.model.hidden)
        if not -depth <= self.probe_layer < depth:
            raise ValueError(
                f"probe_layer {self.probe_layer} out of range for {depth} hidden layers"
            )
        n_params = self.parameter_count()
        if n_params is not None and n_params > MAX_PARAMETERS:
            raise ValueError(
                f"model has {n_params:,} parameters, more than the limit of {MAX_PARAMETERS:,}"
            )
        return self

    def input_shape(self) -> tuple[tuple[int, ...], int] | None:
        """(input shape, classes) where known without loading data."""
        if self.dataset == "synthetic":
            return (1, self.synthetic_features), 10
        return KNOWN_SHAPES.get(self.dataset)

    def parameter_count(self) -> int | None:
        """Parameters of the model this spec builds (None where the input shape is unknown)."""
        shape = self.input_shape()
        if shape is None:
            return None
        example, classes = shape
        per_unit_extra = 2 if self.model.norm != "none" else 1  # γ, β or a bias
        if self.model.arch == "inception":
            return _inception_parameters(example[0], self.model.hidden, classes, per_unit_extra)
        if self.model.arch == "mlp":
            fan_in, taps = math.prod(example), 1
        else:  # 3-wide kernels over each spatial axis (see bncore.models.CNN)
            fan_in, taps = example[0], 3 ** (len(example) - 1)
        total = 0
        for width in self.model.hidden:
            total += taps * fan_in * width + per_unit_extra * width
            fan_in = width
        return total + fan_in * classes + classes


def _inception_parameters(channels: int, hidden: list[int], classes: int, extra: int) -> int:
    """bncore.models.Inception's parameters; ``extra`` per output channel of every conv (γ, β
    with a norm, else a bias). A module of width 4b on c input channels has four 1×1 convs
    c→b, three 3×3 convs b→b (one in the 3×3 branch, two in the double 3×3) and seven conv
    outputs of b channels."""
    stem, *widths = hidden
    total = 9 * channels * stem + extra * stem
    channels = stem
    for width in widths:
        b = width // 4
        total += 4 * channels * b + 3 * 9 * b * b + 7 * extra * b
        channels = width
    return total + channels * classes + classes


def parse_spec(data: dict | str | bytes) -> JobSpec:
    """Validate a spec from a dict or JSON text."""
    if isinstance(data, str | bytes):
        return JobSpec.model_validate_json(data)
    return JobSpec.model_validate(data)
