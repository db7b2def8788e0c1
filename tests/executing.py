"""Runs executed for real in unit tests (a worker's execute_run, the embedded executor) on a
SQLite file: their settings, and creating and reading a run. The integration tests
(PostgreSQL, Redis, Celery) have their own in tests/integration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bncore.spec import JobSpec
from service import migrate, store
from service.db import open_session
from service.models import Run
from service.settings import Settings


def executing_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on a fresh, migrated SQLite file in ``tmp_path``: data and artifacts there,
    heartbeats every 0.2 s (a stop reaches the trainer quickly), no broker, no .env;
    ``overrides`` on top."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'bnlab.db'}",
        "data_dir": tmp_path,
        "artifact_dir": tmp_path / "artifacts",
        "heartbeat_interval_s": 0.2,
        "broker_url": None,
    }
    settings = Settings(_env_file=None, **(values | overrides))
    migrate.upgrade(settings.database_url)
    return settings


# A run long enough to be caught mid-way (3000 steps, a checkpoint every checkpoint_every) and
# short enough to finish in a test (digits, a 16-unit layer).
LONG_SPEC: dict[str, Any] = {
    "name": "long",
    "dataset": "digits",
    "model": {"hidden": [16]},
    "steps": 3000,
    "log_every": 20,
    "eval_every": 500,
    "batch_size": 32,
}


def create(settings: Settings, spec: dict) -> str:
    """A queued run of ``spec``; its id."""
    with open_session(settings) as session:
        return store.create_run(session, JobSpec.model_validate(spec))[0].id


def load(settings: Settings, run_id: str) -> Run:
    with open_session(settings) as session:
        return store.get_run(session, run_id)
