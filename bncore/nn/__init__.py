"""bncore's layers, drop-in for ``torch.nn``'s batch normalization (like torch, one module per
kind: ``bncore.nn.batchnorm`` for BatchNorm1d/2d/3d, conversion and population statistics;
``bncore.nn.sync_batchnorm`` for SyncBatchNorm over a torch.distributed process group)."""

from bncore.nn.batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    convert_batchnorm,
    population_statistics,
    set_inference_stats,
)
from bncore.nn.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "convert_batchnorm",
    "convert_sync_batchnorm",
    "population_statistics",
    "set_inference_stats",
]
