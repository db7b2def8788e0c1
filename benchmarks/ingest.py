"""Metric ingest throughput: points/s through ``store.add_metrics`` (the worker's write path:
chunked series, see service/store/series.py) on SQLite and PostgreSQL, batch sizes 100 and 1000.
Also times re-writing the same batches (a re-delivered batch must change nothing, cheaply).

    python benchmarks/ingest.py [--points 50000] [--pg postgresql://postgres@127.0.0.1/test]
                                [--no-pg]

PostgreSQL: a scratch database ``bnlab_bench_<hex>`` is created on the server named by --pg
and dropped afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import migrate, store
from service.db import make_engine

KEYS = ("train_loss", "train_acc", "lr", "grad_norm", "steps_per_sec")


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{Path(tmp) / 'ingest.db'}"


@contextmanager
def postgres_url(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"bnlab_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def batches(total: int, size: int) -> list[list[tuple[str, int, float]]]:
    """Points as the trainer produces them: every key at each step, steps increasing."""
    points = [(KEYS[i % len(KEYS)], i // len(KEYS), float(i)) for i in range(total)]
    return [points[i : i + size] for i in range(0, total, size)]


def bench(url: str, total: int, size: int) -> tuple[float, float]:
    """(points/s for new points, points/s re-writing the same points)."""
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            run_id = store.create_run(session, JobSpec())[0].id
            work = batches(total, size)
            started = time.perf_counter()
            for batch in work:
                store.add_metrics(session, run_id, batch)
            fresh = total / (time.perf_counter() - started)
            started = time.perf_counter()
            for batch in work:
                store.add_metrics(session, run_id, batch)
            again = total / (time.perf_counter() - started)
            stored = sum(c["count"] for c in store.metric_summary(session, run_id).values())
            assert stored == total, (stored, total)
        return fresh, again
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()

    targets = [("sqlite", sqlite_url())]
    if not args.no_pg:
        targets.append(("postgresql", postgres_url(args.pg)))
    print(f"{args.points} points per measurement ({len(KEYS)} keys per step)")
    print(f"{'database':<12}{'batch':>7}{'new points/s':>16}{'re-written points/s':>22}")
    for name, target in targets:
        with target as url:
            migrate.upgrade(url)
            for size in (100, 1000):
                fresh, again = bench(url, args.points, size)
                print(f"{name:<12}{size:>7}{fresh:>16,.0f}{again:>22,.0f}", flush=True)


if __name__ == "__main__":
    main()
