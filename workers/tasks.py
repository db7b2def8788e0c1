"""Thin Celery tasks: pass the run id on; everything else is in workers.execute."""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError

from service.vocab import TASK_NAME
from workers.celery_app import app, executing_worker_id
from workers.execute import execute_run


@app.task(
    name=TASK_NAME,  # what service/executor.py sends
    bind=True,
    # Only claiming can raise these (execution retries its own writes): the database was
    # down before the run started, so trying again later is safe.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=20,
)
def run_training(self, run_id: str) -> str:  # noqa: ANN001
    return execute_run(run_id, worker_name=executing_worker_id(self.request.hostname))
