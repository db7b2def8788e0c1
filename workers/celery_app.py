"""The Celery app, configured for long GPU jobs.

    celery -A workers.celery_app worker --concurrency 1 -Q bnlab

One task at a time per worker, fetched only when the previous one is done (prefetch 1) and
acknowledged only after it ends (acks_late), so a worker that dies mid-run leaves its message
to be redelivered rather than lost. The redelivered task cannot run the job twice: claiming is
a guarded UPDATE; the API's reaper requeues (or fails) the lost run from its stale heartbeat.
The run's status lives in the database, so there is no result backend.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_init, worker_process_init

from service import db
from service.executor import set_parent_death_signal
from service.settings import get_settings

log = logging.getLogger("bnlab.worker")

settings = get_settings()

app = Celery("bnlab", broker=settings.broker_url, include=["workers.tasks"])
app.conf.update(
    task_default_queue=settings.queue,
    task_ignore_result=True,
    # No result backend, so STARTED would go nowhere: "running" in the database is the truth.
    task_track_started=False,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_concurrency=1,
    worker_prefetch_multiplier=1,
    # A fresh child now and then returns memory fragmented by long jobs.
    worker_max_tasks_per_child=50,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    # Redis redelivers an unacknowledged task after this long: it must exceed the longest job.
    broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
    task_serializer="json",
    accept_content=["json"],
)


@worker_init.connect
def _migrate(**_kwargs) -> None:  # noqa: ANN003
    """A fresh deployment works without a separate migration step."""
    from service import migrate

    migrate.upgrade(settings.database_url)
    log.info("database schema up to date")


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:  # noqa: ANN003
    # Connections inherited from the parent must not be shared across processes.
    db.reset_engine()
    # If the main worker process is killed, its pool child (and so the trainer, through its
    # own PDEATHSIG) goes too, instead of training on unsupervised.
    set_parent_death_signal()
