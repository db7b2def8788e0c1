"""The REST API under /api/v1 (docs/api-contract.md). Routes are thin: validate, call
service.store, map ORM rows to service.schemas."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api import artifacts, audit, compare, events, health, metrics, runs, sweeps
from service.api.deps import authorize

API_PREFIX = "/api/v1"

# Auth sits on the whole versioned API; health, readiness and /metrics stay open for probes.
api_router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(authorize)])
api_router.include_router(runs.router)
api_router.include_router(artifacts.router)
api_router.include_router(metrics.router)
api_router.include_router(events.router)
api_router.include_router(events.sweep_router)
api_router.include_router(sweeps.router)
api_router.include_router(compare.router)
api_router.include_router(health.workers_router)
api_router.include_router(audit.router)

__all__ = ["API_PREFIX", "api_router", "health"]
