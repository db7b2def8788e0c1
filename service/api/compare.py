"""/api/v1/compare: steps-to-target and speed-up over runs or a sweep, as JSON, CSV or a plot.

The statistics live in service.analysis (pure functions), the figure in its plots module; this
module only loads runs and their metrics from the store into ``RunData``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NoReturn

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from service import store
from service.analysis.compare import Comparison, ComparisonError, RunData, compare
from service.analysis.runs import Curve, curve_of
from service.analysis.table import to_csv
from service.analysis.targets import DEFAULT_FRACTIONS, MAX_TARGETS
from service.api.cache import etag, finished_cache, heavy_slot, live_cache, not_modified
from service.api.common import PROBLEM
from service.api.deps import SessionDep, in_session
from service.models import Run
from service.problems import ApiError
from service.schemas import MAX_SWEEP_RUNS
from service.store import FINISHED
from service.store.series import Arrays, as_lists

router = APIRouter(prefix="/compare", tags=["compare"])

MAX_POINTS = 5000
EMPTY: Arrays = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
ERRORS = {
    400: {**PROBLEM, "description": "Neither or both of runs and sweep; bad baseline."},
    404: {**PROBLEM, "description": "An unknown run or sweep id."},
    422: {
        **PROBLEM,
        "description": "A bad query value: an unknown metric (the valid ones are named), no "
        "baseline arm (the arms found are named), or a target or fraction out of bounds.",
    },
}


class CompareQuery:
    """The query shared by /compare and /compare/plot."""

    def __init__(
        self,
        runs: Annotated[
            str | None, Query(max_length=40_000, description="Comma-separated run ids.")
        ] = None,
        sweep: Annotated[str | None, Query(max_length=64, description="A sweep id.")] = None,
        baseline: Annotated[
            str | None,
            Query(max_length=64, description="Baseline run id; default: the first with no norm."),
        ] = None,
        target: Annotated[
            str | None,
            Query(
                max_length=400,
                description="Target value(s), comma-separated (e.g. `0.9` or `0.85,0.9`); "
                f"with target_fractions, at most {MAX_TARGETS} targets in all.",
            ),
        ] = None,
        target_fractions: Annotated[
            str | None,
            Query(
                max_length=400,
                description="Fractions of the baseline's best, each in (0, 1], comma-separated "
                "(e.g. `1,0.99,0.95,0.9`): f × best, or best ÷ f for a loss. Default when no "
                "target is given: " + ",".join(f"{f:g}" for f in DEFAULT_FRACTIONS) + ".",
            ),
        ] = None,
        metric: Annotated[str, Query(pattern=r"^[A-Za-z0-9_]{1,64}$")] = "test_acc",
        points: Annotated[
            int, Query(ge=4, le=MAX_POINTS, description="Max points per curve.")
        ] = 200,
    ) -> None:
        self.runs, self.sweep, self.baseline = runs, sweep, baseline
        self.targets = _numbers("target", target)
        self.fractions = _numbers("target_fractions", target_fractions)
        if self.fractions is not None:
            bad = [f for f in self.fractions if not 0 < f <= 1]
            if bad:
                _invalid("target_fractions", f"target_fractions: {bad[0]:g} is not in (0, 1]")
        count = len(self.targets or ()) + len(self.fractions or ())
        if count > MAX_TARGETS:
            field = "target_fractions" if self.fractions else "target"
            _invalid(field, f"{field}: at most {MAX_TARGETS} targets in all, got {count}")
        self.metric, self.points = metric, points

    def key(self) -> tuple:
        """What the result depends on besides the runs (for the cache)."""
        targets = None if self.targets is None else tuple(self.targets)
        fractions = None if self.fractions is None else tuple(self.fractions)
        return (self.baseline, targets, fractions, self.metric, self.points)


def _invalid(field: str, detail: str) -> NoReturn:
    errors = [{"loc": ["query", field], "msg": detail, "type": "value_error"}]
    raise ApiError(422, detail, title="Validation failed", errors=errors)


def _numbers(field: str, text: str | None) -> list[float] | None:
    """ "0.9, 0.95" → [0.9, 0.95]; None when not given; 422 for anything but finite numbers."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        _invalid(field, f"{field}: expected comma-separated numbers, got {text[:80]!r}")
    if not all(math.isfinite(n) for n in numbers):
        _invalid(field, f"{field}: numbers must be finite, got {text[:80]!r}")
    return numbers


def load_runs(session: Session, query: CompareQuery) -> list[RunData]:
    return run_data(session, load_rows(session, query))


def load_rows(session: Session, query: CompareQuery) -> list[Run]:
    if (query.runs is None) == (query.sweep is None):
        raise HTTPException(400, "pass exactly one of runs (comma-separated ids) and sweep")
    if query.runs is not None:
        ids = list(dict.fromkeys(i.strip() for i in query.runs.split(",") if i.strip()))
        if not ids:
            raise HTTPException(400, "runs: no run ids given")
        if len(ids) > MAX_SWEEP_RUNS:
            raise HTTPException(400, f"runs: at most {MAX_SWEEP_RUNS} runs per comparison")
        rows = store.get_runs(session, ids)
    else:
        store.get_sweep(session, query.sweep)
        rows = store.sweep_runs(session, query.sweep)
        if not rows:
            raise HTTPException(400, f"sweep {query.sweep} has no runs")
    return rows


def run_data(session: Session, rows: list[Run]) -> list[RunData]:
    """The runs with their metrics, read in one query for all of them."""
    series = store.read_series(session, [run.id for run in rows])
    return [
        StoredRun(
            id=run.id,
            name=run.name,
            spec=run.spec,
            status=run.status,
            summary=run.summary or {},
            torch_version=run.torch_version,
            device=run.device,
            wall_time=run.wall_time,
            diverged_step=run.diverged_step,
            arrays=series.get(run.id, {}),
        )
        for run in rows
    ]


class _Pairs(Mapping[str, list]):
    """A run's series as (step, value) pairs per key, each built from the stored arrays only
    when something asks for it (the comparison mostly asks for keys and ``series``)."""

    def __init__(self, arrays: dict[str, Arrays]) -> None:
        self._arrays = arrays
        self._built: dict[str, list] = {}

    def __getitem__(self, key: str) -> list:
        if key not in self._built:
            self._built[key] = list(zip(*as_lists(*self._arrays[key]), strict=True))
        return self._built[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)


@dataclass
class StoredRun(RunData):
    """A RunData over the store's arrays: ``series(key)`` (the finite points in step order, as
    ``clean`` makes them) is built once per key from the arrays, not once per use from pairs.
    A comparison asks for each series several times; over 10 runs x 10k steps that repetition
    was most of its time."""

    arrays: dict[str, Arrays] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = _Pairs(self.arrays)
        self._curves: dict[str, Curve] = {}

    def series(self, key: str) -> Curve:
        if key not in self._curves:
            self._curves[key] = curve_of(*self.arrays.get(key, EMPTY))
        return self._curves[key]

    @property
    def budget(self) -> int:
        last = max((int(steps[-1]) for steps, _ in self.arrays.values() if len(steps)), default=0)
        return max(int(self.spec.get("steps") or 0), last)


def comparison_tag(session: Session, rows: list[Run], query: CompareQuery, form: str) -> str:
    """The ETag of a comparison: what it depends on, the query, each run's row and the version
    of each run's points (one small query), so a repeat is known current before computing."""
    versions = store.metric_versions(session, [run.id for run in rows])
    facts = [
        (
            run.id,
            run.name,
            repr(run.spec),
            run.status,
            repr(run.summary),
            run.torch_version,
            run.device,
            run.wall_time,
            run.diverged_step,
            versions[run.id],
        )
        for run in rows
    ]
    return etag("compare", form, facts, *query.key())


def run_comparison(
    session: Session,
    query: CompareQuery,
    caches: Request | None = None,
    render: Callable[[Comparison], Any] = lambda comparison: comparison,
    form: str = "comparison",
    slot: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    request: Request | None = None,
) -> tuple[str, Any]:
    """(ETag, ``render(comparison)``), the rendered body (JSON, CSV, an image) None when
    ``request`` already has this version (If-None-Match). With ``caches`` (the request whose
    app holds them), a repeat of the same query and ``form`` over unchanged runs and points
    comes from memory: over finished runs from the large cache, over live runs from the small
    one (a new point changes the key). The computation runs inside ``slot()`` (the API bounds
    how many run at once)."""
    rows = load_rows(session, query)
    tag = comparison_tag(session, rows, query, form)
    if request is not None and not_modified(request, tag):
        return tag, None

    def compute() -> Any:
        with slot():
            return render(_compare(session, rows, query))

    if caches is None:
        return tag, compute()
    live = not all(run.status in FINISHED for run in rows)
    cache = live_cache(caches) if live else finished_cache(caches)
    return tag, cache.get_or_compute(("compare", tag), compute)


def _compare(session: Session, rows: list[Run], query: CompareQuery) -> Comparison:
    runs = run_data(session, rows)
    try:
        return compare(
            runs,
            baseline_id=query.baseline,
            target=query.targets,
            metric=query.metric,
            points=query.points,
            target_fractions=query.fractions,
        )
    except ComparisonError as exc:  # an unknown metric, no baseline arm, a bad target
        _invalid(exc.field, str(exc))
    except ValueError as exc:  # a baseline that is not among the runs
        raise HTTPException(400, str(exc)) from exc


@router.get(
    "",
    summary="Compare runs",
    description="Steps to reach each target (default: the baseline arm's best value and 0.99, "
    "0.95, 0.9 of it) and the speed-up over the baseline, per run and per arm (runs differing "
    "only in seed), with bootstrap CIs; whether the baseline had plateaued; downsampled curves. "
    "`format=csv` gives one table: a row per run and target, then per arm and target.",
    responses={
        200: {"content": {"application/json": {}, "text/csv": {}}},
        **ERRORS,
    },
)
async def get_comparison(
    request: Request,
    query: Annotated[CompareQuery, Depends()],
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Response:
    slot = functools.partial(heavy_slot, request)
    if format == "csv":
        render: Callable[[Comparison], Any] = to_csv
        media_type = "text/csv; charset=utf-8"
        headers = {"Content-Disposition": 'attachment; filename="comparison.csv"'}
    else:
        render = Comparison.to_json
        media_type, headers = "application/json", {}

    def work(session: Session) -> tuple[str, Any]:
        return run_comparison(session, query, request, render, format, slot, request)

    tag, body = await in_session(request, work)
    headers |= {"ETag": tag, "Cache-Control": "no-cache"}
    if body is None:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


@router.get(
    "/plot",
    summary="Plot a comparison",
    description="Accuracy and loss against steps per run (a colour per arm, the target "
    "marked) and the pre-activation percentiles per arm (the paper's Fig. 1).",
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}, **ERRORS},
)
def plot_comparison(
    request: Request,
    session: SessionDep,
    query: Annotated[CompareQuery, Depends()],
    format: Annotated[Literal["png", "svg"], Query()] = "png",
) -> Response:
    # matplotlib loads only when a plot is asked for.
    from service.analysis.plots import comparison_figure

    render = lambda comparison: comparison_figure(comparison, format)  # noqa: E731
    slot = functools.partial(heavy_slot, request)
    tag, image = run_comparison(session, query, request, render, format, slot, request)
    media_type = "image/png" if format == "png" else "image/svg+xml"
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if image is None:
        return Response(status_code=304, headers=headers)
    return Response(image, media_type=media_type, headers=headers)
