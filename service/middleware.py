"""The app's middleware, outermost first: Prometheus request metrics, then the body limit.

* ``MetricsMiddleware`` counts requests and their latency by route *template* into the app's
  own ``RequestMetrics`` registry (which also reports runs by status at scrape time);
* ``BodyLimitMiddleware`` answers 413 (problem+json) for bodies over ``max_body_bytes``, before
  any route reads them.

``service/app.py`` installs them; ``service/api/health.py`` serves the registry.
"""

from __future__ import annotations

import re
import time

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import problems, store
from service.vocab import ALL_STATUSES, RunStatus

# ----------------------------------------------------------------------------- metrics


class RequestMetrics:
    """Prometheus metrics in a per-app registry (a global one would collide across apps)."""

    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bnlab_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bnlab_http_request_duration_seconds",
            "HTTP request latency by method and route template (SSE: the stream's length).",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.registry.register(_RunCollector(app))

    @staticmethod
    def template(scope: Scope) -> str:
        """The route template of a request, e.g. ``/api/v1/runs/{run_id}``.

        Newer FastAPI versions keep a route's path relative to its router (``/{run_id}``
        under ``/api/v1/runs``), older ones store it with the prefix. Either way the request
        path ends with what the route's own regex matches, and what precedes it is the
        (static) prefix. Requests that matched no route share the label "unmatched"."""
        route = scope.get("route")
        template = getattr(route, "path", None)
        regex = getattr(route, "path_regex", None)
        if template is None:
            return "unmatched"
        if regex is not None:
            path = scope.get("path", "")
            match = re.search(regex.pattern.removeprefix("^"), path)
            if match is not None:
                return path[: match.start()] + template
        return template


class _RunCollector:
    """Runs by status and queue depth, computed from the database at scrape time (so every
    API replica reports the same truth, not what it happened to see)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def describe(self) -> list:
        return []  # dynamic: keep registration from calling collect() (and the database)

    def collect(self):  # noqa: ANN201
        runs = GaugeMetricFamily("bnlab_runs", "Runs by status.", labels=["status"])
        depth = GaugeMetricFamily("bnlab_queue_depth", "Runs waiting for a worker.")
        up = GaugeMetricFamily("bnlab_database_up", "1 if the last scrape reached the database.")
        try:
            with self.app.state.session_factory() as session:
                counts = store.count_by_status(session)
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        for status in ALL_STATUSES:
            runs.add_metric([status.value], counts.get(status.value, 0))
        depth.add_metric([], counts.get(RunStatus.queued.value, 0))
        up.add_metric([], 1)
        yield from (runs, depth, up)


class MetricsMiddleware:
    """Counts requests and their latency by route *template* (``/api/v1/runs/{run_id}``), so
    ids do not explode the label space; unmatched paths share one label."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before answering
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = self.metrics.template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)


# ----------------------------------------------------------------------------- body limit


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once when Content-Length says so, and by counting
    the bytes actually received (a chunked or lying client cannot get past it). The body is
    buffered here (it is at most ``max_bytes``) and replayed to the app."""

    METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await problems.problem(400, "invalid Content-Length header")(scope, receive, send)
                return
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nobody to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body larger than the limit of {self.max_bytes} bytes"
        response = problems.problem(413, detail, headers={"Connection": "close"})
        await response(scope, receive, send)
