"""API request and response models. Separate from the ORM (service.models) so that the wire
format is a deliberate contract (docs/api-contract.md), not whatever the tables hold.

The job spec itself is ``bncore.spec.JobSpec``: the one definition, reused here as the body of
POST /runs and as the base of a sweep.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bncore.spec import JobSpec
from service.vocab import MAX_SWEEP_RUNS


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC, so say so on the wire."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: str = Field(description="queued, running, succeeded, failed, diverged or cancelled")
    status_reason: str | None = Field(None, description="Why the run is in this state.")
    spec: dict[str, Any]
    sweep_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    worker: str | None = None
    attempt: int = 0
    cancel_requested: bool = False
    last_step: int | None = None
    diverged_step: int | None = None
    device: str | None = None
    torch_version: str | None = None
    wall_time: float | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None

    _times = field_validator(
        "created_at", "started_at", "finished_at", "heartbeat_at", mode="after"
    )(_utc)


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= for the next page; null on the last page."
    )


class KeyInfo(BaseModel):
    count: int
    first_step: int
    last_step: int


class SeriesOut(BaseModel):
    steps: list[int]
    values: list[float | None] = Field(description="null where the trainer saw a non-finite value")
    total_points: int = Field(description="Points of this key in the requested step range.")
    downsampled: bool


class MetricsOut(BaseModel):
    run_id: str
    keys: dict[str, KeyInfo] = Field(description="Every key the run has, over all steps.")
    series: dict[str, SeriesOut]
    next_cursor: str | None = Field(
        None, description="More points follow: pass as ?cursor= (continues after the last step)."
    )


SWEEP_EXAMPLE: dict[str, Any] = {
    "name": "bn-vs-none",
    "base": {
        "dataset": "mnist1d",
        "model": {"arch": "mlp", "hidden": [100, 100, 100], "activation": "sigmoid"},
        "optimizer": {"name": "sgd", "lr": 0.5},
        "batch_size": 60,
        "steps": 3000,
        "eval_every": 100,
    },
    "grid": {
        "model.norm": ["none", "batchnorm"],
        "optimizer.lr": [0.1, 0.5],
        "seed": [0, 1, 2],
    },
}


class SweepIn(BaseModel):
    """A base spec and a grid of dotted spec paths → values; one run per combination."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SWEEP_EXAMPLE]})

    name: str = Field(min_length=1, max_length=200)
    base: JobSpec = Field(default_factory=JobSpec)
    grid: dict[str, list[Any]] = Field(
        description='Dotted spec path ("model.norm", "optimizer.lr", "seed") → values. '
        f"The product of the list lengths is the number of runs (at most {MAX_SWEEP_RUNS}).",
        max_length=32,
    )

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        total = 1
        for path, values in grid.items():
            if not values:
                raise ValueError(f"grid '{path}' has no values")
            _check_path(path)
            total *= len(values)
            # Checked as we go so a hostile grid cannot make us compute a huge product.
            if total > MAX_SWEEP_RUNS:
                raise ValueError(f"grid expands to more than {MAX_SWEEP_RUNS} runs")
        return grid


def _check_path(path: str) -> None:
    """A grid key must name a field of JobSpec (nested through its sub-models)."""
    model: type[BaseModel] | None = JobSpec
    parts = path.split(".")
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            raise ValueError(f"grid key '{path}' is not a spec field")
        annotation = model.model_fields[part].annotation
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1 and not is_model:
            raise ValueError(f"grid key '{path}': '{part}' has no sub-fields")
        model = annotation if is_model else None


class SweepOut(BaseModel):
    id: str
    name: str
    base_spec: dict[str, Any]
    grid: dict[str, list[Any]]
    created_at: datetime
    runs: list[RunOut]
    counts: dict[str, int] = Field(description="Runs per status.")

    _times = field_validator("created_at", mode="after")(_utc)


class WorkerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    device: str
    current_run_id: str | None = None
    last_heartbeat: datetime
    alive: bool = Field(description="Heard from within the heartbeat timeout.")

    _times = field_validator("last_heartbeat", mode="after")(_utc)


class WorkersOut(BaseModel):
    workers: list[WorkerOut]
    queue_depth: int = Field(description="Runs waiting for a worker.")


class Problem(BaseModel):
    """application/problem+json (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = Field(
        None, description="Field problems (422): [{loc, msg, type}]"
    )


class HealthOut(BaseModel):
    status: str
    database: bool | None = None
    broker: bool | None = None
