"""All runtime configuration, read once from the environment (``BNLAB_*``) or a ``.env`` file.

This is the only module that reads the environment. Job hyperparameters are not settings:
they arrive in each job's spec.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.auth import hash_key
from service.vocab import MAX_SWEEP_RUNS

__all__ = ["Settings", "get_settings", "hash_key"]  # hash_key: its old home, still imported


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
        description="Comma-separated API key entries, `NAME:SCOPES:SHA256` as `bnlab hash-key "
        "NAME --scope SCOPE` prints them (scopes read, submit, admin, joined by +), or bare "
        "SHA-256 digests (keys with every scope). No keys here or in api_key_file: no "
        "authentication (the embedded default; `bnlab serve` then refuses non-loopback addresses).",
    )
    api_key_file: Path | None = Field(
        None,
        description="A file of API key entries, one per line (# comments), added to those "
        "of api_key_hashes: keeps the digests out of the environment.",
    )
    auth_reads: bool = Field(False, description="Require a key for reads too, not only writes.")
    allow_open: bool = Field(
        False,
        description="Let `bnlab serve` bind a non-loopback address without API keys (anyone "
        "who can reach it can then submit, cancel and delete runs). Off: it refuses to start.",
    )
    # Per-key limits (service/quotas.py); beyond one: 429 with Retry-After. Not on an open server.
    quota_active_runs: int = Field(
        500, ge=1, description="Queued + running runs one API key may have at once."
    )
    quota_runs_per_sweep: int = Field(
        250, ge=1, le=MAX_SWEEP_RUNS, description="Runs one API key may create in one sweep."
    )
    quota_posts_per_minute: int = Field(
        60, ge=1, description="POST requests one API key may make in any 60 seconds."
    )
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
    max_replicas: int | None = Field(
        None,
        ge=1,
        le=8,
        description="Replicas one run may have on this worker (its capacity; default: the GPU "
        "count on a CUDA worker, else the CPU count, at most 8). A Celery worker consumes the "
        "queues of the run sizes it can hold (service.vocab.queues_for_capacity).",
    )
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

    # Durable runs (issue 12): checkpoints, resume, the reaper's grace, stream bounds.
    artifact_dir: Path = Field(
        Path("artifacts"),
        description="Checkpoints and final models, one folder per run (a shared volume when "
        "workers run on several hosts).",
    )
    checkpoint_every: int = Field(
        500, ge=0, description="Training steps between checkpoints (0: only the final one)."
    )
    checkpoint_keep: int = Field(
        2,
        ge=1,
        description="Checkpoints kept per run: the newest whose step the stored "
        "curve reaches (a retry may resume from them), besides any later ones; the final "
        "model is extra.",
    )
    reap_grace_s: float | None = Field(
        None,
        ge=0,
        description="After the database was unreachable, the reaper waits this long (default: "
        "heartbeat_timeout_s) before judging heartbeats, which could not land meanwhile.",
    )
    worker_retention_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="A worker row silent this long (a stopped worker or process; every process "
        "has a name of its own) is removed from GET /api/v1/workers by the maintenance pass.",
    )
    max_streams: int = Field(
        100, ge=1, description="Concurrent event streams (SSE) the server serves in all."
    )
    max_streams_per_client: int = Field(
        10, ge=1, description="Concurrent event streams (SSE) per client address."
    )

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        # Bare digests are lower-cased here; NAME:SCOPES:DIGEST entries are checked by
        # service.auth.load_keys, whose errors never quote an entry (it may be a pasted key).
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            parts = [str(part).strip() for part in value if str(part).strip()]
            return [part if ":" in part else part.lower() for part in parts]
        return value

    @property
    def embedded(self) -> bool:
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
