"""Deleting a lost attempt's metric points after the step a retry resumed from.

TRANSITIONAL (issue 12): the fast-store helper adds ``delete_metrics_after`` to
``service/store/metrics.py``; once merged, this module goes and ``store.runs.record_resume``
imports it from there.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from service.models import MetricPoint


def delete_metrics_after(session: Session, run_id: str, step: int) -> int:
    """Delete the run's points with a step above ``step`` (in the caller's transaction: the
    caller commits). Returns how many went."""
    result = session.execute(
        delete(MetricPoint).where(MetricPoint.run_id == run_id, MetricPoint.step > step)
    )
    return result.rowcount
