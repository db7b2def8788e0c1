"""Moved to ``service.analysis``; this shim keeps old imports working until callers move."""

from service.analysis.compare import *  # noqa: F403
from service.analysis.compare import Comparison, RunData, compare  # noqa: F401
from service.analysis.downsample import downsample, downsample_indices, lttb  # noqa: F401
from service.analysis.runs import steps_to_target  # noqa: F401
from service.analysis.stats import bootstrap_ci, mean_ci, speedup_ci  # noqa: F401
from service.analysis.table import to_csv  # noqa: F401
