"""Mixed read traffic against a real server while runs write metrics: throughput, latency, errors.

A uvicorn subprocess serves the app on loopback, on a throwaway PostgreSQL database
(``bnlab_load_<hex>`` on 127.0.0.1:5432, user postgres, dropped at the end) or, with
``--sqlite``, on a SQLite file. The database is seeded through service.store with a finished
sweep (``--runs`` runs of ``--steps`` steps; train metrics every step, evaluation and
pre-activation percentiles every 100) and ``--live`` runs left ``running``. During the test a
writer process appends points to the live runs through ``store.add_metrics`` in batches, as
workers do, and heartbeats them.

Requests are sent open-loop at ``--rps`` (each at its scheduled time, whether or not earlier
ones have returned, over at most ``--connections`` keep-alive connections driven by one asyncio
loop with a minimal HTTP/1.1 client, cheap enough not to be the bottleneck), for ``--duration``
seconds:

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
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import httpx2 as httpx
from sqlalchemy import create_engine, text

from bncore import events
from bncore.spec import JobSpec
from service import migrate, store
from service.db import make_engine
from service.store import RunStatus

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
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
        # The trainer's own evaluation keys (bncore.events), so the reads ask for real names.
        test_loss, test_acc, act_p15, act_p50, act_p85 = events.EVAL_KEYS
        points += [
            (test_loss, step, 2.3 * decay + 0.1),
            (test_acc, step, 0.95 - 0.85 * decay),
            (act_p15, step, -1 + rng.random() * 0.1),
            (act_p50, step, rng.random() * 0.1),
            (act_p85, step, 1 + rng.random() * 0.1),
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


class Writer:
    """Appends points to the live runs through store.add_metrics, as a worker's batched flush
    does (every ``interval`` s, ``steps_per_flush`` steps per run), and heartbeats them. It runs
    in its own process, as workers do, so it does not hold the load generator's GIL."""

    def __init__(self, url: str, run_ids: list[str], interval: float = 0.5, steps_per_flush=50):
        self.url = url
        self.run_ids = run_ids
        self.interval = interval
        self.steps_per_flush = steps_per_flush
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.results = context.Queue()
        self.process = context.Process(
            target=_write,
            args=(url, run_ids, interval, steps_per_flush, self.stop, self.results),
            name="load-writer",
            daemon=True,
        )
        self.points = 0
        self.flushes = 0
        self.errors = 0
        self.flush_times: list[float] = []

    def start(self) -> None:
        self.process.start()

    def finish(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            stats = self.results.get(timeout=60)
            self.points, self.flushes, self.errors, self.flush_times = stats
        self.process.join(timeout=30)
        engine = make_engine(self.url)
        with store_session(engine) as session:
            for run_id in self.run_ids:
                store.finish_run(session, run_id, RunStatus.succeeded, "load test over")
        engine.dispose()


def _write(url, run_ids, interval, steps_per_flush, stop, results) -> None:  # noqa: ANN001
    engine = make_engine(url)
    rng = random.Random(1)
    step = points = flushes = errors = 0
    flush_times: list[float] = []
    while not stop.wait(interval):
        first, step = step + 1, step + steps_per_flush
        for run_id in run_ids:
            batch = [p for s in range(first, step + 1) for p in points_for(s, rng)]
            start = time.perf_counter()
            try:
                with store_session(engine) as session:
                    store.add_metrics(session, run_id, batch)
                    store.heartbeat(session, run_id, "load-writer")
            except Exception as exc:  # report, keep writing
                errors += 1
                print(f"writer: {exc}", file=sys.stderr)
                continue
            flush_times.append(time.perf_counter() - start)
            points += len(batch)
            flushes += 1
    engine.dispose()
    results.put((points, flushes, errors, flush_times))


# ----------------------------------------------------------------------------- server


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


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
        yield base, process.pid
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
    at: float = 0.0  # scheduled time, seconds into the test


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


class Connection:
    """One keep-alive HTTP/1.1 connection: a request line out, a status, headers and a
    Content-Length (or chunked) body back. A client this small costs a few tens of µs per
    request, so the load generator, sharing the machine with the server, stays out of the
    figures (a thread pool of httpx clients took most of a core at 200 requests/s)."""

    IDLE_S = 4.0  # uvicorn closes keep-alive connections idle for 5 s: never reuse one that old

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = False  # has answered a request (a failure on reuse may be a server close)
        self.idle_since = time.monotonic()

    async def get(self, target: str, host: str) -> tuple[int, bytes, bool]:
        """(status, body, keep-alive)."""
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(c[:-2] for c in chunks)
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, body, headers.get("connection", "").lower() != "close"

    def close(self) -> None:
        self.writer.close()


async def _drive(base: str, plan: list, rps: float, duration: float, timeout: float, conns: int):
    """Open loop: request i is due at start + i / rps; it is sent then on an idle connection
    (at most ``conns`` open; a request waits for one when all are busy)."""
    hostport = base.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    idle: list[Connection] = []
    opened = 0
    freed = asyncio.Condition()
    results: list[Result] = []
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.5
    cutoff = start + duration + timeout  # nothing is sent after this: the run is bounded

    async def connection() -> Connection:
        nonlocal opened
        async with freed:
            while not idle and opened >= conns:
                await freed.wait()
            while idle:
                conn = idle.pop()
                if time.monotonic() - conn.idle_since < Connection.IDLE_S:
                    return conn
                conn.close()
                opened -= 1
            opened += 1
        try:
            return Connection(*await asyncio.open_connection(host, int(port)))
        except BaseException:
            async with freed:
                opened -= 1
                freed.notify()
            raise

    async def release(conn: Connection | None, keep: bool) -> None:
        nonlocal opened
        async with freed:
            if conn is not None and keep:
                conn.used, conn.idle_since = True, time.monotonic()
                idle.append(conn)
            else:
                if conn is not None:
                    conn.close()
                opened -= 1
            freed.notify()

    async def send(i: int, due: float) -> None:
        route, path, params = plan[i]
        target = path + ("?" + urlencode(params) if params else "")
        status, error, sent = None, None, time.perf_counter()
        conn, keep = None, False
        try:
            async with asyncio.timeout(max(0.001, due + timeout - sent)):
                conn = await connection()
                sent = time.perf_counter()
                if sent > cutoff:  # saturated: far behind schedule; count it, do not send it
                    await release(conn, True)
                    results.append(
                        Result(route, sent - due, 0.0, None, "not sent: overloaded", due - start)
                    )
                    return
                try:
                    status, body, keep = await conn.get(target, hostport)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    if not conn.used or getattr(exc, "partial", b""):
                        raise
                    # A reused connection the server closed meanwhile: once more on a new one
                    # (what any HTTP client does).
                    await release(conn, False)
                    conn = None
                    conn = await connection()
                    status, body, keep = await conn.get(target, hostport)
                if status != 200:
                    error = f"HTTP {status}: {body[:200].decode(errors='replace')}"
        except TimeoutError:
            error = f"timeout after {timeout} s"
            keep = False
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            keep = False
        done = time.perf_counter()
        if conn is not None:
            await release(conn, keep)
        results.append(Result(route, done - due, done - sent, status, error, due - start))

    tasks = []
    for i in range(len(plan)):
        due = start + i / rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(send(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for conn in idle:
        conn.close()
    return results, elapsed


def drive(base: str, mix: Mix, rps: float, duration: float, timeout: float, conns: int):
    plan = [mix.next() for _ in range(int(rps * duration))]
    return asyncio.run(_drive(base, plan, rps, duration, timeout, conns))


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
        "timeline": {},
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
    # Where in the run the slow requests were (a warm-up, a stall, or all along).
    by_window: dict[int, list[float]] = defaultdict(list)
    for r in results:
        by_window[int(r.at // 10) * 10].append(r.latency)
    for start_s, lat in sorted(by_window.items()):
        summary["timeline"][start_s] = {
            "p50_ms": round(pct(lat, 50) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1),
        }
    print(
        "p99 ms per 10 s: "
        + ", ".join(f"{t}s {row['p99_ms']:.0f}" for t, row in summary["timeline"].items())
    )
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
    parser.add_argument(
        "--connections", "--threads", type=int, default=32, help="client connections (at most)"
    )
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
        with server(url, free_port(), log_path) as (base, pid):
            print(f"server pid {pid} at {base}", flush=True)
            writer = Writer(url, seeded.live)
            writer.start()
            cpu = cpu_seconds(pid), time.process_time()
            try:
                results, elapsed = drive(
                    base, Mix(seeded), args.rps, args.duration, args.timeout, args.connections
                )
            finally:
                cpu = cpu_seconds(pid) - cpu[0], time.process_time() - cpu[1]
                writer.finish()
        summary = report(results, elapsed, args, writer)
        summary["cpu_s"] = {"server": round(cpu[0], 1), "client": round(cpu[1], 1)}
        print(
            f"CPU over the {elapsed:.0f} s: server {cpu[0]:.1f} s, client {cpu[1]:.1f} s "
            f"({os.cpu_count()} cores)"
        )
        server_log = log_path.read_text(errors="replace").strip()
        if server_log:
            print("server log (tail):\n" + "\n".join(server_log.splitlines()[-10:]))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
