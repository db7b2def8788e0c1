"""API request and response models. Separate from the ORM (service.models) so that the wire
format is a deliberate contract (docs/api-contract.md), not whatever the tables hold.

The job spec itself is ``bncore.spec.JobSpec``: the one definition, reused here as the body of
POST /runs and as the base of a sweep.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from bncore.spec import JobSpec, ModelSpec, OptimizerSpec
from service.vocab import (
    DEFAULT_PAGE_SIZE,
    MAX_NOTE_LENGTH,
    MAX_PAGE_SIZE,
    MAX_SWEEP_RUNS,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    TAG_PATTERN,
    RunStatus,
)

Tag = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TAG_LENGTH, pattern=TAG_PATTERN)
]
Tags = Annotated[
    list[Tag],
    Field(
        max_length=MAX_TAGS,
        description=f"At most {MAX_TAGS} tags of 1 to {MAX_TAG_LENGTH} characters: letters, "
        "digits and . _ : = + / @ - (duplicates are dropped).",
    ),
]
Note = Annotated[
    str,
    Field(
        max_length=MAX_NOTE_LENGTH,
        pattern=r"^[^\x00]*$",  # PostgreSQL text cannot hold NUL
        description=f"Free text, at most {MAX_NOTE_LENGTH} characters, no NUL; "
        "empty or null clears it.",
    ),
]


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
    tags: list[str] = Field(default_factory=list, description="People's labels (PATCH sets them).")
    note: str | None = Field(None, description="People's note (PATCH sets it).")
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
    created_by: str | None = Field(None, description="Name of the API key that submitted it.")

    _times = field_validator(
        "created_at", "started_at", "finished_at", "heartbeat_at", mode="after"
    )(_utc)


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= for the next page; null on the last page."
    )


def _spec_field(model: type[BaseModel], name: str) -> Any:
    """A spec field's type with its bounds, for a query parameter filtering on it (so the
    filter accepts exactly the values a spec can hold, and says so in the OpenAPI document)."""
    field = model.model_fields[name]
    bounded = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return bounded | None


class RunQuery(BaseModel):
    """GET /runs query: every filter given must hold. Spec filters compare with the stored
    spec (defaults included); ``tag`` may repeat (all must be on the run)."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus | None = None
    sweep_id: str | None = Field(None, max_length=64)
    name: str | None = Field(None, max_length=200, description="The exact run name.")
    dataset: _spec_field(JobSpec, "dataset") = None
    arch: _spec_field(ModelSpec, "arch") = None
    activation: _spec_field(ModelSpec, "activation") = None
    norm: _spec_field(ModelSpec, "norm") = None
    optimizer: _spec_field(OptimizerSpec, "name") = Field(None, description="Optimizer name.")
    lr: _spec_field(OptimizerSpec, "lr") = None
    batch_size: _spec_field(JobSpec, "batch_size") = None
    seed: _spec_field(JobSpec, "seed") = None
    tag: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Repeatable; all must match."
    )
    id_prefix: str | None = Field(
        None,
        min_length=4,
        max_length=36,
        pattern=r"^[0-9a-fA-F-]+$",
        description="Runs whose id starts with this (a short id as the CLI shows it).",
    )
    q: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Substring of the name or the note, any case.",
    )
    limit: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(
        None, max_length=500, description="The next_cursor of the previous page."
    )


class RunPatch(BaseModel):
    """PATCH /runs/{id}: the fields given replace the run's; the others stay as they are."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"tags": ["baseline", "paper-fig1"], "note": "lr sweep"}]},
    )

    tags: Tags | None = Field(None, description="The new tags ([] or null removes them all).")
    note: Note | None = None


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
    tags: Tags = Field(default_factory=list)

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


class SweepSummary(BaseModel):
    """One sweep in a list: what it is and how far its runs got, without the runs."""

    id: str
    name: str
    grid: dict[str, list[Any]]
    created_at: datetime
    run_count: int
    counts: dict[str, int] = Field(description="Runs per status (statuses with runs only).")

    _times = field_validator("created_at", mode="after")(_utc)


class SweepPage(BaseModel):
    items: list[SweepSummary]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= for the next page; null on the last page."
    )


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
