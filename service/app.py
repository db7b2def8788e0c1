"""The FastAPI application: ``create_app(settings, executor)`` wires the parts together.

Each app holds its settings, session factory (``service/db.py``, one engine per database URL),
executor and Prometheus registry on ``app.state``, so tests can run several apps against
different databases in one process. The lifespan migrates the database (when
``settings.auto_migrate``: the one place a server migrates, for ``bnlab serve`` and plain
uvicorn alike), starts the executor and runs the maintenance loop (``service/maintenance.py``).

Routes are in ``service/api/``, middleware in ``service/middleware.py``, errors are
problem+json (``service/problems.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI

from service import db, problems
from service.api import api_router, dashboard, health
from service.api.cache import HEAVY_SLOTS, FinishedCache
from service.executor import Executor, make_executor
from service.maintenance import maintain_once, maintenance_loop
from service.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestMetrics
from service.proc import redact_url
from service.settings import Settings, get_settings

log = logging.getLogger("bnlab.api")


def _version() -> str:
    try:
        return importlib.metadata.version("bnlab")
    except importlib.metadata.PackageNotFoundError:  # running from a plain checkout
        return "0+unknown"


DESCRIPTION = """
Run and compare Batch Normalization experiments (Ioffe & Szegedy, 2015).

Submit a training job (`POST /api/v1/runs`) or a grid of them (`POST /api/v1/sweeps`), follow
its metrics live (`GET /api/v1/runs/{id}/events`, Server-Sent Events), and compare runs:
steps to reach the baseline's accuracy and the speed-up (`GET /api/v1/compare`).

Errors are `application/problem+json`. When API keys are configured, writes (and, optionally,
reads) need `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""

TAGS = [
    {"name": "runs", "description": "Training jobs: submit, list, inspect, cancel, delete."},
    {"name": "metrics", "description": "A run's metric series, paged or downsampled; live SSE."},
    {"name": "sweeps", "description": "A grid of runs fanned out from one base spec."},
    {"name": "compare", "description": "Steps-to-target, speed-up, curves; CSV and plots."},
    {"name": "workers", "description": "Who executes runs, and the queue."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
]


def create_app(settings: Settings | None = None, executor: Executor | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="bnlab",
        version=_version(),
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan,
        # Served by service/api/dashboard.py from installed files: the defaults load a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.session_factory = db.session_factory(settings.database_url)
    app.state.engine = app.state.session_factory.kw["bind"]
    app.state.executor = executor  # None: made from the settings at startup
    app.state.metrics = RequestMetrics(app)
    app.state.finished_cache = FinishedCache()
    app.state.live_cache = FinishedCache(size=64)
    app.state.heavy_slots = threading.BoundedSemaphore(HEAVY_SLOTS)

    problems.install(app)
    app.include_router(api_router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    _document_errors(app)
    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def _document_errors(app: FastAPI) -> None:
    """The OpenAPI document with every error response as problem+json (as it is sent)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems.document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- lifespan


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.auto_migrate:
        await _migrate(settings.database_url)
    if app.state.executor is None:
        app.state.executor = make_executor(settings)  # Celery is imported only if configured
    await anyio.to_thread.run_sync(app.state.executor.start)  # it may touch the database
    # Runs left queued by a previous process: the embedded executor's start() submits them
    # (and requeues its own runs left running); in Celery mode they are still in the broker.
    task = asyncio.create_task(
        maintenance_loop(settings, app.state.session_factory, app.state.executor),
        name="bnlab-maintenance",
    )
    _freeze_startup_objects()
    log.info("bnlab API ready (%s executor)", "embedded" if settings.embedded else "celery")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        app.state.executor.shutdown()
        db.dispose_engine(settings.database_url)


_frozen = threading.Event()


def _freeze_startup_objects() -> None:
    """Move what is alive at the first startup (torch, the modules, the app: millions of
    objects that live as long as the process) out of the garbage collector's reach, once per
    process. Each full collection walked them all: measured under load, 180-390 ms pauses
    about once every 200 requests, far over the p99 target; after ``gc.freeze()``, none. The
    collection before it frees today's garbage instead of freezing it (Python's docs advise
    the same). Once: a process that makes many apps (the tests) would freeze their garbage."""
    if _frozen.is_set():
        return
    _frozen.set()
    gc.collect()
    gc.freeze()


async def _migrate(database_url: str) -> None:
    """alembic upgrade head, with a one-line reason in the log when it fails (the server then
    refuses to start: serving an old schema would fail request by request instead)."""
    from service import migrate  # alembic is only needed when we migrate

    try:
        await anyio.to_thread.run_sync(migrate.upgrade, database_url)
    except Exception as exc:
        shown = redact_url(database_url)
        log.error("could not migrate the database %s: %s", shown, db.first_line(exc))
        raise
    log.info("database schema up to date (alembic upgrade head)")


def maintain(app: FastAPI) -> None:
    """One maintenance pass on this app's database and executor (service/maintenance.py)."""
    maintain_once(app.state.settings, app.state.session_factory, app.state.executor)
