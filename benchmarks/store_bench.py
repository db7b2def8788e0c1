"""The store targets of issue 14, measured side by side with MLflow's SQL tracking store, on
SQLite and PostgreSQL, in one run:

- ingest through the worker's write path (``MetricWriter.write``, one flush: a session and the
  fenced ``store.add_metrics``; batches as the worker sends them: 500 points, its flush size,
  and 5000, its slice of a backlog), points/s; beside it the
  floor on the same database: a bare driver ``executemany`` of the same points as rows, and bare
  commits (one per batch);
- one 10k-point history over HTTP (uvicorn on a socket), uncached, p50/p95 ms;
- ``GET /api/v1/compare`` over 10 runs x 10k steps (3 keys), live runs, uncached, p50/p95 ms;
- listing 100k runs: the newest page, a filtered page (status + spec fields) and a name page.

MLflow (``pip install .[bench]``; skipped if absent) gets the same points through
``SqlAlchemyStore.log_batch`` (1 run: its rate per point is what compares) and reads them back
with ``get_metric_history`` (store calls: MLflow has no server here). "Uncached" means every
request differs in a parameter that does not change the answer, so no cache can serve it.

    python benchmarks/store_bench.py [--json out.json] [--no-pg] [--no-mlflow]
                                     [--pg postgresql://postgres@127.0.0.1:5432/test]
                                     [--only listing]

Timings only: the machine is shared, so read ratios measured in the same run, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import migrate, store
from service.db import make_engine
from service.models import Run, spec_filter_values
from service.settings import Settings
from workers.ingest import MetricWriter

sys.path.insert(0, str(Path(__file__).parent))
from ingest import postgres_url  # noqa: E402  (same folder; a scratch PostgreSQL database)

KEYS = ("train_loss", "train_acc", "test_acc")
STEPS = 10_000
RUNS = 10
LIST_RUNS = 100_000
TARGETS = {
    "ingest_points_per_s": 300_000,
    "history_10k_p95_ms": 10,
    "compare_10x10k_p95_ms": 50,
    "list_newest_p95_ms": 20,
    "list_filtered_p95_ms": 20,
}


def run_points(seed: int) -> list[tuple[str, int, float]]:
    """A run's points as the trainer sends them: every key at each step."""
    return [
        (key, step, (step * 7919 + seed * 31 + i) % 1000 / 1000.0)
        for step in range(STEPS)
        for i, key in enumerate(KEYS)
    ]


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p95_ms": samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))],
    }


# ------------------------------------------------------------------------------ bnlab


def bnlab_ingest(url: str, session: Session, batch: int) -> tuple[float, list[str]]:
    """points/s writing RUNS runs of KEYS x STEPS points through the worker's own flush
    (``MetricWriter.write``: a session, the fenced ``store.add_metrics``, the claim check), in
    batches of ``batch``; the run ids (claimed, live)."""
    settings = Settings(_env_file=None, database_url=url, auto_migrate=False)
    writers = []
    for i in range(RUNS):
        norm = "none" if i % 2 == 0 else "batchnorm"
        run, _ = store.create_run(session, JobSpec(seed=i, model={"norm": norm}))
        token = store.claim_run(session, run.id, "bench")
        assert token is not None
        writers.append((MetricWriter(run.id, token, settings), run_points(i)))
    started = time.perf_counter()
    for writer, points in writers:
        for j in range(0, len(points), batch):
            writer.write(None, points[j : j + batch])
    return RUNS * STEPS * len(KEYS) / (time.perf_counter() - started), [
        writer.run_id for writer, _ in writers
    ]


def floor_ingest(session: Session, batch: int) -> dict[str, float]:
    """The same points, batches and commits, as rows through the bare driver; and bare durable
    commits (one row changed each)."""
    raw = session.connection().connection.dbapi_connection
    postgres = session.get_bind().dialect.name == "postgresql"
    mark = "%s" if postgres else "?"
    cursor = raw.cursor()
    cursor.execute("CREATE TABLE floor_points (run INTEGER, key TEXT, step INTEGER, value REAL)")
    raw.commit()
    points = run_points(0)
    rows = [(1, k, s, v) for k, s, v in points]
    started = time.perf_counter()
    for j in range(0, len(rows), batch):
        cursor.executemany(
            f"INSERT INTO floor_points VALUES ({', '.join([mark] * 4)})", rows[j : j + batch]
        )
        raw.commit()
    executemany = len(rows) / (time.perf_counter() - started)
    # A durable commit: one row changed, so the commit writes (and on PostgreSQL flushes) WAL;
    # a commit that changed nothing writes none and would understate the cost.
    cursor.execute("CREATE TABLE floor_commit (id INTEGER PRIMARY KEY, n INTEGER)")
    cursor.execute("INSERT INTO floor_commit VALUES (1, 0)")
    raw.commit()
    started = time.perf_counter()
    commits = 200
    for _ in range(commits):
        cursor.execute("UPDATE floor_commit SET n = n + 1 WHERE id = 1")
        raw.commit()
    per_commit = (time.perf_counter() - started) / commits
    cursor.execute("DROP TABLE floor_points")
    cursor.execute("DROP TABLE floor_commit")
    raw.commit()
    cursor.close()
    return {"executemany_points_per_s": executemany, "commit_only_points_per_s": batch / per_commit}


@contextmanager
def serve(url: str) -> Iterator[str]:
    """The API on a local socket (uvicorn in a thread); its base URL."""
    import uvicorn

    from service.app import create_app

    class NoExecutor:
        def submit(self, run_id: str) -> None: ...
        def start(self) -> None: ...
        def shutdown(self) -> None: ...
        def broker_ok(self) -> bool:
            return True

        def resubmit_due(self, queued: Any) -> list[str]:
            return []

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(_env_file=None, database_url=url, auto_migrate=False)
    config = uvicorn.Config(create_app(settings, NoExecutor()), port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def bnlab_reads(base: str, ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=30) as http:
        n = iter(range(10**9))

        def history() -> httpx.Response:
            # step_max beyond the last step: the same 10k points, a new cache key each time.
            # Timed to the last byte of the body; decoding it is the client's cost, not the
            # service's (stdlib json takes 3-6 ms for 10k points here), so it is checked once.
            params = {"keys": "train_loss", "step_max": STEPS + next(n)}
            response = http.get(f"/api/v1/runs/{ids[0]}/metrics", params=params)
            assert response.status_code == 200, response.text
            return response

        def compare() -> None:
            params = {"runs": ",".join(ids), "points": 200, "target": f"{0.9 + next(n) * 1e-12}"}
            response = http.get("/api/v1/compare", params=params)
            assert response.status_code == 200, response.text

        assert len(history().json()["series"]["train_loss"]["steps"]) == STEPS
        compare()
        out["history_10k"] = timed(history, 60)
        out["compare_10x10k"] = timed(compare, 20)
        tag = http.get(f"/api/v1/runs/{ids[0]}/metrics", params={"keys": "train_loss"})
        etag = tag.headers["etag"]
        out["history_10k_304"] = timed(
            lambda: http.get(
                f"/api/v1/runs/{ids[0]}/metrics",
                params={"keys": "train_loss"},
                headers={"If-None-Match": etag},
            ),
            60,
        )
    return out


def add_listing_runs(session: Session) -> None:
    """LIST_RUNS runs in one bulk insert (the listing measures reads, not run creation), with
    the spec columns ``store.new_run`` would fill."""
    base = JobSpec().model_dump(mode="json")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(LIST_RUNS):
        spec = base | {
            "seed": i % 50,
            "model": base["model"] | {"norm": ("none", "batchnorm")[i % 2]},
        }
        rows.append(
            {
                "id": str(uuid.UUID(int=i + 1)),
                "name": f"bench-{i % 1000}",
                "spec": spec,
                "status": ("succeeded", "failed", "queued", "cancelled")[i % 4],
                "created_at": start + timedelta(seconds=i),
                "attempt": 1,
                "cancel_requested": False,
                "tags": [],
                **spec_filter_values(spec),
            }
        )
    for j in range(0, len(rows), 10_000):
        session.execute(insert(Run), rows[j : j + 10_000])
    session.commit()
    if session.get_bind().dialect.name == "postgresql":
        # The statistics autovacuum gathers within a minute of such a change; without them the
        # planner guesses, e.g. ANDs the status and norm indexes (66 ms) instead of reading the
        # seed index's range (0.2 ms). The app never runs ANALYZE on SQLite, so neither do we.
        session.execute(text("ANALYZE runs"))
        session.commit()


def bnlab_listing(base: str) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=30) as http:

        def page(params: dict[str, Any]) -> Callable[[], None]:
            def get() -> None:
                response = http.get("/api/v1/runs", params=params)
                assert response.status_code == 200 and response.json()["items"], response.text

            get()  # warm, as the other reads are: first connection, first compile of the query
            return get

        filtered = {"status": "succeeded", "norm": "none", "seed": 8, "limit": 50}
        return {
            "list_newest": timed(page({"limit": 50}), 30),
            "list_filtered": timed(page(filtered), 30),
            "list_by_name": timed(page({"name": "bench-7", "limit": 50}), 30),
        }


def measure_listing(engine: Any, url: str) -> dict[str, Any]:
    """Add the LIST_RUNS runs, then time their pages over HTTP."""
    with Session(engine) as session:
        add_listing_runs(session)
    with serve(url) as base:
        return bnlab_listing(base)


def bench_listing(url: str) -> dict[str, Any]:
    """The listing measures alone (``--only listing``), on a fresh database; printed here."""
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        result = measure_listing(engine, url)
    finally:
        engine.dispose()
    for measure, times in result.items():
        print(f"  {measure:<16} p50 {times['p50_ms']:7.1f} ms   p95 {times['p95_ms']:7.1f} ms")
    return result


# ----------------------------------------------------------------------------- MLflow


def mlflow_side(url: str, tmp: Path) -> dict[str, Any] | None:
    try:
        from mlflow.entities import Metric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:
        return None
    tracking = SqlAlchemyStore(url, str(tmp / "mlruns"))
    experiment = tracking.create_experiment(f"bench-{uuid.uuid4().hex[:8]}")
    run_ids = [
        tracking.create_run(experiment, "bench", 0, [], f"r{i}").info.run_id for i in range(RUNS)
    ]
    points = run_points(0)
    started = time.perf_counter()
    for j in range(0, len(points), 500):
        metrics = [Metric(k, v, 0, s) for k, s, v in points[j : j + 500]]
        tracking.log_batch(run_ids[0], metrics=metrics, params=[], tags=[])
    ingest = len(points) / (time.perf_counter() - started)
    # The other runs get the history the comparison reads, written in bigger batches (faster).
    for i, run_id in enumerate(run_ids[1:], start=1):
        pts = run_points(i)
        for j in range(0, len(pts), 1000):
            metrics = [Metric(k, v, 0, s) for k, s, v in pts[j : j + 1000]]
            tracking.log_batch(run_id, metrics=metrics, params=[], tags=[])
    history = timed(lambda: tracking.get_metric_history(run_ids[0], "train_loss"), 10)
    compare = timed(lambda: [tracking.get_metric_history(r, k) for r in run_ids for k in KEYS], 3)
    return {"ingest_points_per_s": ingest, "history_10k": history, "compare_10x10k_reads": compare}


# ------------------------------------------------------------------------------- main


def bench_database(url: str, tmp: Path, mlflow_url: Any) -> dict[str, Any]:
    """All measures on one database; ``mlflow_url``: a context giving MLflow's, or None."""
    migrate.upgrade(url)
    engine = make_engine(url)
    result: dict[str, Any] = {}
    try:
        with Session(engine, expire_on_commit=False) as session:
            result["ingest_5000_points_per_s"], _ = bnlab_ingest(url, session, 5000)
            result["ingest_500_points_per_s"], ids = bnlab_ingest(url, session, 500)
            result["floor_500"] = floor_ingest(session, 500)
        with serve(url) as base:
            result |= bnlab_reads(base, ids)
        result |= measure_listing(engine, url)
    finally:
        engine.dispose()
    if mlflow_url is not None:
        with mlflow_url as scratch:
            result["mlflow"] = mlflow_side(scratch, tmp)
    return result


def report(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """Print one database's table; the figures for the JSON, one key per target."""
    ml = r.get("mlflow") or {}
    figures = {
        "ingest_points_per_s": r["ingest_500_points_per_s"],
        "ingest_5000_batches_points_per_s": r["ingest_5000_points_per_s"],
        "history_10k_p95_ms": r["history_10k"]["p95_ms"],
        "compare_10x10k_p95_ms": r["compare_10x10k"]["p95_ms"],
        "list_newest_p95_ms": r["list_newest"]["p95_ms"],
        "list_filtered_p95_ms": r["list_filtered"]["p95_ms"],
    }
    print(f"\n{name}")
    print(f"  {'measure':<34}{'bnlab':>11}{'MLflow':>11}{'ratio':>8}{'target':>9}")

    def row(label: str, ours: float, theirs: float | None, target: str, higher: bool) -> None:
        ratio = "" if theirs is None else f"{(ours / theirs if higher else theirs / ours):.1f}x"
        other = "" if theirs is None else f"{theirs:,.1f}"
        print(f"  {label:<34}{ours:>11,.1f}{other:>11}{ratio:>8}{target:>9}")

    row(
        "ingest, 500-pt batches, pts/s",
        figures["ingest_points_per_s"],
        ml.get("ingest_points_per_s"),
        ">=300k",
        True,
    )
    row(
        "ingest, 5000-pt batches, pts/s",
        figures["ingest_5000_batches_points_per_s"],
        None,
        "",
        True,
    )
    floor = r["floor_500"]
    row("  floor: bare executemany, pts/s", floor["executemany_points_per_s"], None, "", True)
    row("  floor: commits only, pts/s", floor["commit_only_points_per_s"], None, "", True)
    row(
        "history 10k over HTTP, p95 ms",
        figures["history_10k_p95_ms"],
        (ml.get("history_10k") or {}).get("p95_ms"),
        "<10",
        False,
    )
    row("  same, 304 (If-None-Match), p95", r["history_10k_304"]["p95_ms"], None, "", False)
    row(
        "compare 10x10k, p95 ms",
        figures["compare_10x10k_p95_ms"],
        (ml.get("compare_10x10k_reads") or {}).get("p95_ms"),
        "<50",
        False,
    )
    row("list 100k: newest page, p95 ms", figures["list_newest_p95_ms"], None, "<20", False)
    row("list 100k: filtered page, p95 ms", figures["list_filtered_p95_ms"], None, "<20", False)
    row("list 100k: by name, p95 ms", r["list_by_name"]["p95_ms"], None, "", False)
    if ml:
        figures["mlflow"] = {
            "ingest_points_per_s": ml["ingest_points_per_s"],
            "history_10k_p95_ms": ml["history_10k"]["p95_ms"],
            "compare_reads_10x10k_p95_ms": ml["compare_10x10k_reads"]["p95_ms"],
        }
    figures["floor_500"] = floor
    figures["history_10k_304_p95_ms"] = r["history_10k_304"]["p95_ms"]
    figures["list_by_name_p95_ms"] = r["list_by_name"]["p95_ms"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here, one key per target")
    parser.add_argument("--only", choices=["listing"], help="measure this part alone")
    args = parser.parse_args()
    if args.only == "listing":
        main_listing(args)
        return
    print(f"{RUNS} runs x {len(KEYS)} keys x {STEPS} steps; listing over {LIST_RUNS} runs")
    print("MLflow: ingest = log_batch of 500; compare = the 30 get_metric_history calls it needs")
    out: dict[str, Any] = {"targets": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        mlflow = None if args.no_mlflow else nullcontext(f"sqlite:///{path / 'mlflow.db'}")
        out["sqlite"] = report(
            "sqlite", bench_database(f"sqlite:///{path / 'bench.db'}", path, mlflow)
        )
        if not args.no_pg:
            with postgres_url(args.pg) as url:
                mlflow = None if args.no_mlflow else postgres_url(args.pg)
                out["postgresql"] = report("postgresql", bench_database(url, path, mlflow))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def main_listing(args: argparse.Namespace) -> None:
    print(f"listing over {LIST_RUNS} runs (target p95 < 20 ms)")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("sqlite")
        out["sqlite"] = bench_listing(f"sqlite:///{Path(tmp) / 'bench.db'}")
    if not args.no_pg:
        with postgres_url(args.pg) as url:
            print("postgresql")
            out["postgresql"] = bench_listing(url)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
