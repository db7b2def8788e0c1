"""Moved to ``service.analysis.plots``; this shim keeps old imports working until callers move."""

from service.analysis.plots import *  # noqa: F403
from service.analysis.plots import comparison_figure, run_figure  # noqa: F401
