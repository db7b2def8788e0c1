"""The two errors the store raises for callers to map (the API answers 404 and 409)."""

from __future__ import annotations


class NotFound(LookupError):
    """No run or sweep with this id."""


class Conflict(RuntimeError):
    """The request is valid but the run's state forbids it (e.g. deleting a running run)."""
