"""store.get_metrics against a reference filter in Python, on SQLite (the PostgreSQL path has
the same check in tests/integration/test_store_pg.py)."""

from __future__ import annotations

import itertools
import random

from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import store

KEYS = ("train_loss", "test_acc", "grad_norm")


def seed_points(session: Session) -> tuple[str, list[tuple[str, int, float | None]]]:
    """A run with a dense key, a sparse one and one with nulls, plus a neighbour run."""
    rng = random.Random(0)
    points = [("train_loss", s, rng.random()) for s in range(1, 301)]
    points += [("test_acc", s, rng.random()) for s in range(0, 301, 25)]
    points += [("grad_norm", s, None if s % 7 == 0 else rng.random()) for s in range(5, 200, 3)]
    run_ids = []
    for name in ("target", "neighbour"):
        run, _ = store.create_run(session, JobSpec(name=name))
        store.claim_run(session, run.id, "w")
        rng.shuffle(points)  # insertion order must not matter
        store.add_metrics(session, run.id, points)
        run_ids.append(run.id)
    return run_ids[0], points


def expected(points, keys=None, step_min=None, step_max=None, after_step=None, limit=None):  # noqa: ANN001, ANN201
    series: dict[str, list] = {}
    for key, step, value in sorted(points, key=lambda p: (p[0], p[1])):
        if keys and key not in keys:
            continue
        if step_min is not None and step < step_min:
            continue
        if step_max is not None and step > step_max:
            continue
        if after_step is not None and step <= after_step:
            continue
        series.setdefault(key, []).append((step, value))
    if limit is not None:
        series = {k: v[:limit] for k, v in series.items()}
    return series


def cases():  # noqa: ANN201
    for keys, lo, hi, after, limit in itertools.product(
        (None, ["test_acc"], ["grad_norm", "train_loss", "missing"]),
        (None, 50),
        (None, 120),
        (None, 100),
        (None, 1, 7, 500),
    ):
        yield {"keys": keys, "step_min": lo, "step_max": hi, "after_step": after, "limit": limit}


def check_get_metrics(session: Session) -> None:
    run_id, points = seed_points(session)
    for case in cases():
        got = store.get_metrics(session, run_id, **case)
        assert got == expected(points, **case), case
        assert list(got) == sorted(got), case  # keys in order
    assert store.get_metrics(session, "no-such-run") == {}


def test_get_metrics_matches_a_reference_filter(session: Session) -> None:
    check_get_metrics(session)
