"""The store: every query and every write to the database, one module per concept.

- ``runs``     every write to a run; the state machine (one guarded ``_transition``)
- ``queries``  reads of runs: one, several, a filtered page, counts
- ``metrics``  metric points: idempotent batched writes, per-key series
- ``sweeps``   a base spec over a grid: expansion, creation, reads
- ``workers``  worker rows and their heartbeats
- ``cursors``  newest-first cursor pages (runs and sweeps)
- ``errors``   NotFound and Conflict, for the API to map to 404 and 409

Callers use the package (``from service import store; store.claim_run(...)``); the names
below are its public surface. Run statuses and reasons are ``service.vocab``'s, re-exported.
"""

from __future__ import annotations

from service.models import as_utc
from service.store.cursors import decode_cursor, encode_cursor
from service.store.errors import Conflict, NotFound
from service.store.metrics import (
    add_metrics,
    count_metrics,
    delete_metrics_after,
    get_metric_arrays,
    get_metrics,
    metric_summary,
    metric_versions,
    read_series,
)
from service.store.queries import (
    SPEC_FILTERS,
    count_by_status,
    get_run,
    get_runs,
    list_runs,
    queue_depth,
    queued_run_ids,
    spec_value,
    submit_failed_run_ids,
)
from service.store.runs import (
    annotate_run,
    claim_run,
    create_run,
    db_now,
    delete_run,
    fail_queued,
    finish_run,
    heartbeat,
    holds_claim,
    reap_stale,
    record_resume,
    record_start,
    release_run,
    request_cancel,
    running_workers,
    set_queued_reason,
)
from service.store.sweeps import create_sweep, expand_grid, get_sweep, list_sweeps, sweep_runs
from service.store.workers import list_workers, prune_workers, worker_alive, worker_seen
from service.vocab import FINISHED_STATUSES as FINISHED
from service.vocab import SUBMIT_FAILED, WAITING, RunStatus

__all__ = [
    "delete_metrics_after",
    "running_workers",
    "record_resume",
    "holds_claim",
    "db_now",
    "SPEC_FILTERS",
    "FINISHED",
    "SUBMIT_FAILED",
    "WAITING",
    "Conflict",
    "NotFound",
    "RunStatus",
    "add_metrics",
    "annotate_run",
    "as_utc",
    "claim_run",
    "count_by_status",
    "count_metrics",
    "delete_metrics_after",
    "create_run",
    "create_sweep",
    "decode_cursor",
    "delete_run",
    "encode_cursor",
    "expand_grid",
    "fail_queued",
    "finish_run",
    "get_metric_arrays",
    "get_metrics",
    "get_run",
    "get_runs",
    "get_sweep",
    "heartbeat",
    "list_runs",
    "list_sweeps",
    "list_workers",
    "prune_workers",
    "metric_summary",
    "metric_versions",
    "read_series",
    "queue_depth",
    "queued_run_ids",
    "reap_stale",
    "record_start",
    "release_run",
    "request_cancel",
    "set_queued_reason",
    "spec_value",
    "submit_failed_run_ids",
    "sweep_runs",
    "worker_alive",
    "worker_seen",
]
