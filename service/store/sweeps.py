"""Sweeps: a base spec fanned out over a grid, one run per combination, compared as one.

``expand_grid`` is here for now; the architecture gives grid expansion over specs to
``bncore/spec.py`` (it is spec logic, not storage), and it should move there with a re-export
left behind.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service.models import Run, Sweep
from service.store.cursors import newest_first_page
from service.store.errors import NotFound
from service.store.runs import new_run


def expand_grid(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` over ``base``; keys are dotted paths into the spec
    (``"model.norm"``, ``"optimizer.lr"``, ``"seed"``)."""
    keys = list(grid)
    specs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        spec = _deep_copy(base)
        for path, value in zip(keys, values, strict=True):
            node = spec
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        pairs = zip(keys, values, strict=True)
        suffix = ",".join(f"{path.split('.')[-1]}={value}" for path, value in pairs)
        spec["name"] = f"{base.get('name', 'run')}[{suffix}]"[:200]
        specs.append(spec)
    return specs


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def create_sweep(
    session: Session,
    name: str,
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    specs: Sequence[JobSpec],
    *,
    tags: Sequence[str] = (),
    created_by: str | None = None,
) -> tuple[Sweep, list[Run]]:
    """Insert a sweep and its (already validated) run specs in one transaction; every run
    carries ``tags`` and the name of the API key that created it (``created_by``)."""
    sweep = Sweep(name=name, base_spec=base, grid=grid)
    session.add(sweep)
    session.flush()
    runs = [new_run(spec, sweep_id=sweep.id, tags=tags) for spec in specs]
    for run in runs:
        run.created_by = created_by
    session.add_all(runs)
    session.commit()
    return sweep, runs


def get_sweep(session: Session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found")
    return sweep


def sweep_runs(session: Session, sweep_id: str) -> list[Run]:
    return list(
        session.scalars(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.created_at))
    )


def list_sweeps(
    session: Session, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[tuple[Sweep, dict[str, int]]], str | None]:
    """Newest first, paginated like runs. Returns ([(sweep, runs per status)], next cursor or
    None); statuses without runs are left out of the counts. Raises ValueError for a cursor
    that is not one of ours."""
    sweeps, next_cursor = newest_first_page(
        session, select(Sweep), Sweep, limit=limit, cursor=cursor
    )
    counts: dict[str, dict[str, int]] = {sweep.id: {} for sweep in sweeps}
    if sweeps:  # one grouped query for the whole page
        rows = session.execute(
            select(Run.sweep_id, Run.status, func.count())
            .where(Run.sweep_id.in_(list(counts)))
            .group_by(Run.sweep_id, Run.status)
        )
        for sweep_id, status, n in rows:
            counts[sweep_id][status] = n
    return [(sweep, counts[sweep.id]) for sweep in sweeps], next_cursor
