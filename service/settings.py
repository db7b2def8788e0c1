"""All runtime configuration, read once from the environment (``BNLAB_*``) or a ``.env`` file.

This is the only module that reads the environment. Job hyperparameters are not settings:
they arrive in each job's spec.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def hash_key(key: str) -> str:
    """API keys are kept and compared as SHA-256 digests, never in clear."""
    return hashlib.sha256(key.encode()).hexdigest()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BNLAB_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite:///bnlab.db", description="SQLAlchemy URL; default: a SQLite file in the cwd."
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://…). Unset: the embedded in-process executor."
    )
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated SHA-256 hex digests of accepted API keys "
        "(`bnlab hash-key KEY` prints one). Empty: no authentication (the embedded default).",
    )
    auth_reads: bool = Field(False, description="Require a key for reads too, not only writes.")
    data_dir: Path = Field(Path("data"), description="Root for file datasets (mnist_idx, npz).")

    heartbeat_interval_s: float = Field(5.0, gt=0)
    heartbeat_timeout_s: float = Field(
        120.0, gt=0, description="A running run whose heartbeat is older is declared lost."
    )
    max_attempts: int = Field(2, ge=1, description="Runs lost this many times are failed.")
    embedded_concurrency: int = Field(1, ge=1, le=64, description="Parallel runs, embedded mode.")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_metric_points: int = Field(
        10_000, ge=10, description="Server cap on points per key in one metrics response."
    )
    python: str | None = Field(None, description="Interpreter for trainer subprocesses.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of worker processes (embedded and Celery)."
    )
    auto_migrate: bool = Field(
        True, description="Upgrade the database schema (Alembic) when the API starts."
    )
    # Added for the Celery executor and workers (workers/celery_app.py, service/executor.py):
    # producers and workers must agree on both, so they live here rather than in code.
    queue: str = Field("bnlab", min_length=1, description="Celery queue for training tasks.")
    visibility_timeout_s: float = Field(
        86_400.0,
        gt=0,
        description="Redis broker: seconds before an unacknowledged task is redelivered. Longer "
        "than the longest job, or a running job's task is handed to a second worker (harmless, "
        "claiming is guarded, but wasteful).",
    )

    resubmit_after_s: float = Field(
        600.0,
        gt=0,
        description="Celery: a queued run still unclaimed this long after it was sent is sent "
        "again (then after twice as long, up to an hour), in case the broker lost its message; "
        "a broker restart (a new Redis run id) resends every queued run at once. Duplicates are "
        "harmless: claiming a run is guarded.",
    )

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @property
    def embedded(self) -> bool:
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
