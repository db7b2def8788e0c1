"""The words and limits that the server, the client, the CLI and the dashboard share.

One home for them so a status or a bound is spelled once. No dependencies (not even
pydantic): the client and the CLI import it without pulling in the server, and the dashboard
reads the same values from ``GET /api/v1/vocab`` instead of restating them in JavaScript.

Run lifecycle (the state machine itself lives in ``service.store``)::

    queued ──claim──▶ running ──finish──▶ succeeded | failed | diverged | cancelled
      │                  │
      └──cancel──▶ cancelled          └──heartbeat lost──▶ queued (retry) | failed
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    diverged = "diverged"
    cancelled = "cancelled"


ACTIVE_STATUSES: tuple[RunStatus, ...] = (RunStatus.queued, RunStatus.running)
FINISHED_STATUSES: tuple[RunStatus, ...] = (
    RunStatus.succeeded,
    RunStatus.failed,
    RunStatus.diverged,
    RunStatus.cancelled,
)
ALL_STATUSES: tuple[RunStatus, ...] = ACTIVE_STATUSES + FINISHED_STATUSES

# status_reason texts that code (not only people) reads back.
SUBMIT_FAILED = "broker unavailable; will retry"
WAITING = "waiting for a worker"

# The Celery task the executor sends by name (the service never imports workers).
TASK_NAME = "bnlab.run_training"

# Celery routes a run by its size (spec.replicas): 1 replica → the base queue (settings.queue),
# 2 → "<base>.r2", 3-4 → "<base>.r4", 5-8 → "<base>.r8". A worker consumes the base queue and
# each ".rK" with K ≤ its capacity (max_replicas), so a run only reaches a worker that can hold
# it (a worker of capacity 3 takes runs of 1 and 2 replicas).
REPLICA_QUEUE_SIZES = (2, 4, 8)


def queue_for_replicas(base: str, replicas: int) -> str:
    """The Celery queue for a run of ``replicas`` processes."""
    if replicas <= 1:
        return base
    for size in REPLICA_QUEUE_SIZES:
        if replicas <= size:
            return f"{base}.r{size}"
    raise ValueError(f"no queue for {replicas} replicas (at most {REPLICA_QUEUE_SIZES[-1]})")


def queues_for_capacity(base: str, capacity: int) -> list[str]:
    """The queues a worker that holds ``capacity`` replicas consumes."""
    return [base] + [f"{base}.r{size}" for size in REPLICA_QUEUE_SIZES if size <= capacity]


# Limits of the API that clients need to know.
MAX_SWEEP_RUNS = 1000  # runs one sweep (the product of its grid's list lengths) may create
MAX_PAGE_SIZE = 200  # the cap on GET /runs?limit= (and every other cursor page)
DEFAULT_PAGE_SIZE = 50
SHORT_ID_LENGTH = 8  # how many characters of a UUID the CLI and dashboard show

# A run's tags and note.
MAX_TAGS = 16
MAX_TAG_LENGTH = 40
MAX_NOTE_LENGTH = 2000
# Letters, digits and a few separators, so a tag is one word in a shell, a URL and a CSV cell
# (ASCII: JSON Schema, Python and pydantic's Rust regexes agree on what it matches).
TAG_PATTERN = r"^[A-Za-z0-9._:=+/@-]+$"


def short_id(run_id: str) -> str:
    """The first characters of an id: what people read and type (unique prefixes are accepted)."""
    return run_id[:SHORT_ID_LENGTH]


def as_dict() -> dict[str, object]:
    """Everything above as JSON, for the dashboard."""
    return {
        "statuses": [s.value for s in ALL_STATUSES],
        "active_statuses": [s.value for s in ACTIVE_STATUSES],
        "finished_statuses": [s.value for s in FINISHED_STATUSES],
        "max_sweep_runs": MAX_SWEEP_RUNS,
        "max_page_size": MAX_PAGE_SIZE,
        "default_page_size": DEFAULT_PAGE_SIZE,
        "short_id_length": SHORT_ID_LENGTH,
        "max_tags": MAX_TAGS,
        "max_tag_length": MAX_TAG_LENGTH,
        "max_note_length": MAX_NOTE_LENGTH,
        "tag_pattern": TAG_PATTERN,
    }
