"""Liveness, readiness, Prometheus metrics (outside /api/v1, open for probes) and /workers."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service import store
from service.api.common import PROBLEM
from service.api.deps import ExecutorDep, SessionDep, SettingsDep
from service.models import utcnow
from service.problems import problem
from service.schemas import HealthOut, WorkerOut, WorkersOut

log = logging.getLogger("bnlab.api")

router = APIRouter(tags=["health"])
workers_router = APIRouter(tags=["workers"])


@router.get("/healthz", response_model=HealthOut, summary="Liveness: the process is up")
def healthz() -> Any:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=HealthOut,
    summary="Readiness: the database and the broker are reachable",
    responses={503: {**PROBLEM, "description": "Names what is down."}},
)
def readyz(request: Request, executor: ExecutorDep) -> Any:
    database = _database_ok(request)
    try:
        broker = bool(executor.broker_ok())
    except Exception as exc:
        log.warning("broker check failed: %s", exc)
        broker = False
    if database and broker:
        return HealthOut(status="ok", database=True, broker=True)
    down = [name for name, ok in (("database", database), ("broker", broker)) if not ok]
    response = problem(503, f"{' and '.join(down)} unavailable", title="Not ready")
    return response


def _database_ok(request: Request) -> bool:
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        log.warning("database check failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return False


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Requests by route template and status, latency, runs by status, queue depth.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
def prometheus_metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@workers_router.get(
    "/workers",
    response_model=WorkersOut,
    summary="Workers and queue depth",
    description="`alive`: the worker's heartbeat is within the heartbeat timeout.",
)
def list_workers(session: SessionDep, settings: SettingsDep) -> Any:
    cutoff = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
    workers = [
        WorkerOut(
            name=w.name,
            device=w.device,
            current_run_id=w.current_run_id,
            last_heartbeat=store.as_utc(w.last_heartbeat),
            alive=store.as_utc(w.last_heartbeat) >= cutoff,
        )
        for w in store.list_workers(session)
    ]
    return WorkersOut(workers=workers, queue_depth=store.queue_depth(session))
