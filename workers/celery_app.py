"""The Celery app, configured for long GPU jobs.

    celery -A workers.celery_app worker --concurrency 1

Queues by run size (service.vocab.queue_for_replicas): a run of 1 replica goes to
``settings.queue`` (``bnlab``), of 2 to ``bnlab.r2``, 3-4 to ``bnlab.r4``, 5-8 to ``bnlab.r8``.
Without ``-Q`` a worker consumes the queues of the sizes it can hold (``max_replicas``, default
its GPU count, or its CPU count on a CPU worker; see workers/launch.py); ``-Q`` overrides that.

One task at a time per worker, fetched only when the previous one is done (prefetch 1) and
acknowledged only after it ends (acks_late), so a worker that dies mid-run leaves its message
to be redelivered rather than lost. The redelivered task cannot run the job twice: claiming is
a guarded UPDATE; the API's reaper requeues (or fails) the lost run from its stale heartbeat.
The run's status lives in the database, so there is no result backend.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from kombu import Queue

from service import db, store
from service.db import open_session
from service.proc import clean_stale_temp_dirs, set_parent_death_signal, unique_worker_id
from service.settings import get_settings
from service.vocab import queues_for_capacity
from workers.device import detect_device  # nvidia-smi, never torch
from workers.launch import capacity

log = logging.getLogger("bnlab.worker")

settings = get_settings()

app = Celery("bnlab", broker=settings.broker_url, include=["workers.tasks"])
app.conf.update(
    task_default_queue=settings.queue,
    # Consumed when the worker is started without -Q: the run sizes this worker can hold.
    task_queues=[Queue(name) for name in queues_for_capacity(settings.queue, capacity(settings))],
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
    # A broker restart must not cancel the training in progress (Celery 6 will default to
    # cancelling it): the run's state is in the database, the worker reconnects, and a
    # redelivered message finds the run taken.
    worker_cancel_long_running_tasks_on_connection_loss=False,
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
    for path in clean_stale_temp_dirs():
        log.info("removed %s, left behind by a killed run", path)


def executing_worker_id(hostname: str | None) -> str:
    """This process's unique name (``PREFIX@HOST:PID:RANDOM``, the prefix from
    ``bnlab worker --name``): pool processes of one worker, and workers of one host, never
    share it. Fixed for the life of the process."""
    return _process_worker_id(hostname or "celery", os.getpid())


@functools.cache
def _process_worker_id(hostname: str, _pid: int) -> str:
    return unique_worker_id(hostname)


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:  # noqa: ANN003
    # Connections inherited from the parent must not be shared across processes.
    db.reset_engines()
    # If the main worker process is killed, its pool child (and so the trainer, through its
    # own PDEATHSIG) goes too, instead of training on unsupervised.
    set_parent_death_signal()


class WorkerHeartbeat(threading.Thread):
    """In the worker's main process: keeps the worker's row in ``workers`` fresh whether or not
    it runs anything, so GET /workers lists idle workers too (a run's own heartbeat, in the pool
    child, sets ``current_run_id``; this one never touches it)."""

    def __init__(self, name: str, device: str) -> None:
        super().__init__(name="bnlab-worker-heartbeat", daemon=True)
        self.worker, self.device = name, device
        self.stopped = threading.Event()

    def beat(self) -> bool:
        try:
            with open_session(settings) as session:
                store.worker_alive(session, self.worker, device=self.device)
            return True
        except Exception as exc:  # a database outage must not take the worker down
            log.warning("worker %s: heartbeat failed: %s", self.worker, str(exc)[:200])
            return False

    def run(self) -> None:
        while not self.stopped.wait(settings.heartbeat_interval_s):
            self.beat()


_heartbeat: WorkerHeartbeat | None = None


@worker_ready.connect
def _register(sender=None, **_kwargs) -> None:  # noqa: ANN001, ANN003
    """List the worker as soon as it can take work: a fresh row (a worker restarted under the
    same name runs nothing yet), then a heartbeat every ``heartbeat_interval_s``."""
    global _heartbeat
    if _heartbeat is not None:  # ready again after a broker reconnect: already beating
        return
    name = executing_worker_id(getattr(sender, "hostname", None))
    device = detect_device()
    try:
        with open_session(settings) as session:
            store.worker_seen(session, name, device=device, current_run_id=None)
        log.info("worker %s registered (%s)", name, device)
    except Exception as exc:
        log.warning("worker %s: could not register: %s", name, str(exc)[:200])
    _heartbeat = WorkerHeartbeat(name, device)
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_kwargs) -> None:  # noqa: ANN003
    if _heartbeat is not None:
        _heartbeat.stopped.set()
