"""Mixed read traffic against a real server while runs write metrics: throughput, latency, errors.

A uvicorn subprocess serves the app on loopback, on a throwaway PostgreSQL database
(``bnlab_load_<hex>`` on 127.0.0.1:5432, user postgres, dropped at the end) or, with
``--sqlite``, on a SQLite file. The database is seeded through service.store with a finished
sweep (``--runs`` runs of ``--steps`` steps; train metrics every step, evaluation and
pre-activation percentiles every 100) and ``--live`` runs left ``running``. During the test a
writer thread appends points to the live runs through ``store.add_metrics`` in batches, as
workers do, and heartbeats them.

Requests are sent open-loop at ``--rps`` (each at its scheduled time, whether or not earlier
ones have returned, by a pool of client threads), for ``--duration`` seconds:

    30%  GET /api/v1/runs?limit=50              list, newest first
    10%  GET /api/v1/runs?status=running        list, filtered
     5%  GET /api/v1/runs/{id}                   one run
    30%  GET /runs/{id}/metrics?max_points=200  downsampled series (finished and live runs)
    15%  GET /runs/{id}/metrics?keys=…&limit=500 a page of two series
    10%  GET /api/v1/compare?sweep=…&points=200 steps-to-target and curves over the sweep

Latency is measured from each request's *scheduled* time, so a server (or client) falling
behind shows up in the figures instead of silently lowering the rate. An error is a transport
failure, any status other than 200, or a request still unsent ``--timeout`` s after the end
of the schedule (a saturated server). The run is bounded: at most duration × rps requests,
each timing out after ``--timeout`` s, so it stops by itself.

    python benchmarks/load.py [--duration 60] [--rps 200] [--sqlite] [--json out.json]

Target: p99 < 50 ms at 200 requests/s, 0 errors. Client, server and database share the
machine: on a small or busy machine the figures include that contention.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from bncore.spec import JobSpec
from service import migrate, store
from service.db import make_engine
from service.store import RunStatus

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TRAIN_KEYS = ("train_loss", "train_acc", "grad_norm")
EVAL_KEYS = ("test_loss", "test_acc", "p15", "p50", "p85")
EVAL_EVERY = 100


# ----------------------------------------------------------------------------- database


@contextlib.contextmanager
def database(sqlite: bool, url: str | None) -> Iterator[str]:
    """A fresh database URL for the test, removed afterwards (unless ``url`` was given)."""
    if url is not None:
        yield url
        return
    if sqlite:
        folder = Path(tempfile.mkdtemp(prefix="bnlab_load_"))
        try:
            yield f"sqlite:///{folder}/bnlab.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = f"bnlab_load_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def points_for(step: int, rng: random.Random) -> list[tuple[str, int, float | None]]:
    decay = math.exp(-step / 800)
    points = [
        ("train_loss", step, 2.3 * decay + 0.05 * rng.random()),
        ("train_acc", step, 1 - 0.9 * decay),
        ("grad_norm", step, 1 + rng.random()),
    ]
    if step % EVAL_EVERY == 0:
        points += [
            ("test_loss", step, 2.3 * decay + 0.1),
            ("test_acc", step, 0.95 - 0.85 * decay),
            ("p15", step, -1 + rng.random() * 0.1),
            ("p50", step, rng.random() * 0.1),
            ("p85", step, 1 + rng.random() * 0.1),
        ]
    return points


@dataclass
class Seeded:
    sweep_id: str
    finished: list[str]
    live: list[str]


def seed(url: str, runs: int, steps: int, live: int) -> Seeded:
    """A finished sweep (norm × seeds) with full metrics, and ``live`` running runs."""
    engine = make_engine(url)
    rng = random.Random(0)
    with store_session(engine) as session:
        norms = ["none", "batchnorm"]
        specs = [
            JobSpec(name="load", steps=steps, seed=i // 2, model={"norm": norms[i % 2]})
            for i in range(runs)
        ]
        grid = {"model.norm": norms, "seed": list(range(max(1, runs // 2)))}
        sweep, created = store.create_sweep(
            session, "load", specs[0].model_dump(mode="json"), grid, specs
        )
        finished = []
        for run in created:
            store.claim_run(session, run.id, "load-seeder")
            batch = [p for step in range(1, steps + 1) for p in points_for(step, rng)]
            for i in range(0, len(batch), 5000):
                store.add_metrics(session, run.id, batch[i : i + 5000])
            store.finish_run(session, run.id, RunStatus.succeeded, "seeded", wall_time=1.0)
            finished.append(run.id)
        live_ids = []
        for i in range(live):
            run, _ = store.create_run(session, JobSpec(name=f"live-{i}", steps=steps))
            store.claim_run(session, run.id, "load-writer")
            live_ids.append(run.id)
    engine.dispose()
    return Seeded(sweep.id, finished, live_ids)


@contextlib.contextmanager
def store_session(engine):  # noqa: ANN001, ANN201
    from sqlalchemy.orm import Session

    with Session(engine, expire_on_commit=False) as session:
        yield session


class Writer(threading.Thread):
    """Appends points to the live runs through store.add_metrics, as a worker's batched flush
    does (every ``interval`` s, ``steps_per_flush`` steps per run), and heartbeats them."""

    def __init__(self, url: str, run_ids: list[str], interval: float = 0.5, steps_per_flush=50):
        super().__init__(name="load-writer", daemon=True)
        self.engine = make_engine(url)
        self.run_ids = run_ids
        self.interval = interval
        self.steps_per_flush = steps_per_flush
        self.stop = threading.Event()
        self.points = 0
        self.flushes = 0
        self.errors = 0
        self.flush_times: list[float] = []

    def run(self) -> None:
        rng = random.Random(1)
        step = 0
        while not self.stop.wait(self.interval):
            first, step = step + 1, step + self.steps_per_flush
            for run_id in self.run_ids:
                batch = [p for s in range(first, step + 1) for p in points_for(s, rng)]
                start = time.perf_counter()
                try:
                    with store_session(self.engine) as session:
                        store.add_metrics(session, run_id, batch)
                        store.heartbeat(session, run_id, "load-writer")
                except Exception as exc:  # report, keep writing
                    self.errors += 1
                    print(f"writer: {exc}", file=sys.stderr)
                    continue
                self.flush_times.append(time.perf_counter() - start)
                self.points += len(batch)
                self.flushes += 1

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        with store_session(self.engine) as session:
            for run_id in self.run_ids:
                store.finish_run(session, run_id, RunStatus.succeeded, "load test over")
        self.engine.dispose()


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(url: str, port: int, log_path: Path) -> Iterator[str]:
    env = {
        **os.environ,
        "BNLAB_DATABASE_URL": url,
        "BNLAB_AUTO_MIGRATE": "false",  # migrated before seeding
        "PYTHONPATH": str(ROOT),
    }
    for name in ("BNLAB_BROKER_URL", "BNLAB_API_KEY_HASHES"):
        env.pop(name, None)  # embedded executor (nothing is submitted), no auth
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited ({process.returncode}): {log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready after 60 s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ----------------------------------------------------------------------------- traffic


@dataclass
class Result:
    route: str
    latency: float  # from the scheduled time
    service: float  # from the actual send
    status: int | None
    error: str | None = None


@dataclass
class Mix:
    seeded: Seeded
    rng: random.Random = field(default_factory=lambda: random.Random(2))

    def next(self) -> tuple[str, str, dict]:
        r = self.rng.random()
        s = self.seeded
        every = s.finished + s.live
        if r < 0.30:
            return "runs:list", "/api/v1/runs", {"limit": 50}
        if r < 0.40:
            return "runs:list-running", "/api/v1/runs", {"status": "running"}
        if r < 0.45:
            return "runs:get", f"/api/v1/runs/{self.rng.choice(every)}", {}
        if r < 0.75:
            run_id = self.rng.choice(every)
            return "metrics:max_points", f"/api/v1/runs/{run_id}/metrics", {"max_points": 200}
        if r < 0.90:
            run_id = self.rng.choice(every)
            params = {"keys": "train_loss,test_acc", "limit": 500}
            return "metrics:page", f"/api/v1/runs/{run_id}/metrics", params
        return "compare", "/api/v1/compare", {"sweep": s.sweep_id, "points": 200}


def drive(base: str, mix: Mix, rps: float, duration: float, timeout: float, threads: int):
    """Open loop: request i is due at start + i / rps; a pool thread sends it then."""
    total = int(rps * duration)
    plan = [mix.next() for _ in range(total)]
    results: list[Result] = []
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with httpx.Client(base_url=base, timeout=timeout, limits=limits) as client:
        start = time.perf_counter() + 0.5
        cutoff = start + duration + timeout  # nothing is sent after this: the run is bounded

        def send(i: int) -> None:
            route, path, params = plan[i]
            due = start + i / rps
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            status, error = None, None
            if sent > cutoff:  # saturated: far behind schedule; count it, do not send it
                with lock:
                    results.append(Result(route, sent - due, 0.0, None, "not sent: overloaded"))
                return
            try:
                response = client.get(path, params=params)
                response.read()
                status = response.status_code
                if status != 200:
                    error = f"HTTP {status}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            done = time.perf_counter()
            with lock:
                results.append(Result(route, done - due, done - sent, status, error))

        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="load") as pool:
            # Submitted in order; a thread picks request i up before it is due and waits.
            for i in range(total):
                lead = start + i / rps - time.perf_counter()
                if lead > 0.05:
                    time.sleep(lead - 0.05)
                pool.submit(send, i)
        elapsed = time.perf_counter() - start
    return results, elapsed


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def report(results: list[Result], elapsed: float, args, writer: Writer) -> dict:  # noqa: ANN001
    ok = [r for r in results if r.error is None]
    errors = [r for r in results if r.error is not None]
    latencies = [r.latency for r in results]
    summary = {
        "backend": "sqlite" if args.sqlite else "postgresql",
        "target_rps": args.rps,
        "duration_s": args.duration,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "throughput_rps": round(len(ok) / elapsed, 1),
        "p50_ms": round(pct(latencies, 50) * 1000, 1),
        "p90_ms": round(pct(latencies, 90) * 1000, 1),
        "p99_ms": round(pct(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
        "service_p99_ms": round(pct([r.service for r in results], 99) * 1000, 1),
        "writer_points": writer.points,
        "writer_flushes": writer.flushes,
        "writer_errors": writer.errors,
        "writer_flush_p99_ms": round(pct(writer.flush_times, 99) * 1000, 1),
        "routes": {},
    }
    by_route: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_route[r.route].append(r)
    for route, rows in sorted(by_route.items()):
        lat = [r.latency for r in rows]
        summary["routes"][route] = {
            "n": len(rows),
            "errors": sum(r.error is not None for r in rows),
            "p50_ms": round(pct(lat, 50) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1),
        }
    print(
        f"\n{summary['backend']}: {summary['requests']} requests in {elapsed:.1f} s "
        f"(target {args.rps}/s): {summary['throughput_rps']} ok/s, {len(errors)} errors"
    )
    print(
        f"latency from scheduled time: p50 {summary['p50_ms']} ms, p90 {summary['p90_ms']} ms, "
        f"p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms "
        f"(send→done p99 {summary['service_p99_ms']} ms)"
    )
    print(f"{'route':<22}{'n':>7}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for route, row in summary["routes"].items():
        print(f"{route:<22}{row['n']:>7}{row['errors']:>8}{row['p50_ms']:>9}{row['p99_ms']:>9}")
    print(
        f"writer: {writer.points} points in {writer.flushes} flushes "
        f"(flush p99 {summary['writer_flush_p99_ms']} ms), {writer.errors} errors"
    )
    for sample in sorted({r.error for r in errors})[:3]:
        print(f"  error: {sample}")
    verdict = summary["p99_ms"] < 50 and not errors
    print(f"target p99 < 50 ms and 0 errors: {'met' if verdict else 'MISSED'}")
    summary["target_met"] = verdict
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--rps", type=float, default=200.0, help="requests per second")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--database-url", help="use this (existing) database; not dropped")
    parser.add_argument("--runs", type=int, default=8, help="finished runs in the sweep")
    parser.add_argument("--steps", type=int, default=3000, help="steps per seeded run")
    parser.add_argument("--live", type=int, default=4, help="running runs being written")
    parser.add_argument("--threads", type=int, default=32, help="client threads")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rps <= 0:
        parser.error("--duration and --rps must be positive")

    with database(args.sqlite, args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        migrate.upgrade(url)
        seeded = seed(url, args.runs, args.steps, args.live)
        print(
            f"seeded {args.runs} finished runs × {args.steps} steps and {args.live} live runs "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        log_path = Path(tmp) / "server.log"
        with server(url, free_port(), log_path) as base:
            writer = Writer(url, seeded.live)
            writer.start()
            try:
                results, elapsed = drive(
                    base, Mix(seeded), args.rps, args.duration, args.timeout, args.threads
                )
            finally:
                writer.finish()
        summary = report(results, elapsed, args, writer)
        server_log = log_path.read_text(errors="replace").strip()
        if server_log:
            print("server log (tail):\n" + "\n".join(server_log.splitlines()[-10:]))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
