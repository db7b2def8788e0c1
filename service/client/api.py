"""``BnlabClient``: one method per operation of the bnlab REST API (``/api/v1``).

Every method returns JSON-shaped data (dicts, lists) or bytes for images, and raises
:class:`~service.client.errors.BnlabError` for an API problem or a transport failure.

One class whose methods mirror the API's operations one to one (health, runs, metrics,
waiting, sweeps, compare), so that the surface the CLI, the reproduction and scripts use reads
in one file. How a request travels (headers, timeouts, errors, paging, streams) is
:mod:`service.client.connection`; waiting for runs and sweeps is :mod:`service.client.follow`;
events are :mod:`service.client.events`; short ids (unique prefixes) are matched by
:mod:`service.client.ids`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

from bncore.spec import JobSpec
from service.client.connection import Connection
from service.client.errors import BnlabError
from service.client.events import EventCallback, RunEvent
from service.client.follow import Followed, follow
from service.client.ids import MAX_CANDIDATES, matching, one_id, prefix_of
from service.vocab import DEFAULT_PAGE_SIZE, FINISHED_STATUSES, MAX_PAGE_SIZE

API = "/api/v1"
# GET /runs?id_prefix= takes at least this many characters (service.schemas.RunQuery);
# a shorter prefix is matched here, over the pages of runs.
MIN_SERVER_PREFIX = 4
# GET /runs filters on the run's spec (service.schemas.RunQuery), passed as keyword arguments.
SPEC_FILTERS = ("dataset", "arch", "activation", "norm", "optimizer", "lr", "batch_size", "seed")

SpecLike = JobSpec | Mapping[str, Any]
Targets = float | Sequence[float] | None  # compare's target: one value, several, or the default


class CompareQuery(TypedDict, total=False):
    """What :meth:`BnlabClient.compare` and :meth:`~BnlabClient.compare_plot` compare (the
    query of GET /compare and /compare/plot), as keyword arguments; run ids or a sweep needed.

    ``target``: one value or several; ``target_fractions``: fractions in (0, 1] of the
    baseline's best (e.g. ``[1, 0.99, 0.95, 0.9]``, the server's default when neither is
    given). ``points``: at most this many points per curve."""

    run_ids: Sequence[str] | None
    sweep: str | None
    baseline: str | None
    target: Targets
    target_fractions: Sequence[float] | None
    metric: str | None
    points: int | None


class BnlabClient(Connection):
    """Talks to one bnlab server. Use as a context manager, or call :meth:`close`.

    Constructed like :class:`~service.client.connection.Connection` (``base_url``,
    ``api_key``, ``timeout``, or an ``http`` client to use as is)."""

    # ------------------------------------------------------------------------- health

    def health(self) -> dict[str, Any]:
        """GET /healthz: the process is up."""
        return self._json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """GET /readyz: database and broker reachable (BnlabError with status 503 if not)."""
        return self._json("GET", "/readyz")

    def workers(self) -> dict[str, Any]:
        """GET /workers: {workers: [...], queue_depth}."""
        return self._json("GET", f"{API}/workers")

    # ------------------------------------------------------------------------- runs

    def submit(
        self, spec: SpecLike, idempotency_key: str | None = None, *, tags: Sequence[str] = ()
    ) -> dict[str, Any]:
        """POST /runs. ``spec``: a JobSpec or a dict (validated by the server). → RunOut."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._json(
            "POST",
            f"{API}/runs",
            params={"tag": list(tags) or None},
            json_body=spec_to_dict(spec),
            headers=headers,
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/runs/{run_id}")

    def iter_runs(
        self,
        *,
        status: str | None = None,
        sweep_id: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        q: str | None = None,
        id_prefix: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        **spec: Any,
    ) -> Iterator[dict[str, Any]]:
        """Every matching run, newest first, following ``next_cursor`` page by page.

        Every filter given must hold: ``tags`` all on the run, ``q`` a substring of its name
        or note (any case), ``id_prefix`` the start of its id, and ``spec`` fields
        (:data:`SPEC_FILTERS`: ``norm="batchnorm"``, ``lr=0.5``, ``seed=0``…) equal to the
        run's. An unknown spec filter is a TypeError here, before any request.
        """
        unknown = sorted(set(spec) - set(SPEC_FILTERS))
        if unknown:
            raise TypeError(
                f"unknown run filter(s) {', '.join(unknown)}; the spec filters are "
                + ", ".join(SPEC_FILTERS)
            )
        filters = {
            "status": status,
            "sweep_id": sweep_id,
            "name": name,
            "tag": list(tags) or None,
            "q": q,
            "id_prefix": id_prefix,
            **spec,
        }
        return self._pages(f"{API}/runs", filters, page_size)

    def list_runs(self, *, limit: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Matching runs, newest first: at most ``limit`` (None = all, over as many pages).
        ``filters``: those of :meth:`iter_runs` (status, sweep_id, name, tags, q, spec fields)."""
        return _take(self.iter_runs(page_size=_page_size(limit), **filters), limit)

    def resolve_run_id(self, id_or_prefix: str) -> str:
        """The full id of the one run whose id is ``id_or_prefix`` or starts with it.

        A full UUID passes through unchecked (the next request answers 404 if it is unknown).
        A prefix (the short ids tables show) of at least MIN_SERVER_PREFIX characters is
        looked up with ``GET /runs?id_prefix=…``; a shorter one, or one a server ignores (it
        answers with other runs too, recognised because not every id starts with the prefix),
        is matched over the pages of all runs instead.
        Raises BnlabError: status 400 for a malformed or ambiguous prefix (naming the
        candidates), 404 when no run matches.
        """
        text, prefix = id_or_prefix.strip(), prefix_of(id_or_prefix, "run")
        if prefix is None:
            return text
        ids: list[str] | None = None
        if len(prefix) >= MIN_SERVER_PREFIX:
            page = self._json(
                "GET", f"{API}/runs", params={"id_prefix": prefix, "limit": MAX_CANDIDATES}
            )
            ids = [str(run.get("id")) for run in page.get("items", [])]
            if not all(run_id.startswith(prefix) for run_id in ids):  # the filter was ignored
                ids = None
        if ids is None:
            ids = matching(self.iter_runs(page_size=MAX_PAGE_SIZE), prefix)
        return one_id(ids, prefix, "run")

    def update_run(
        self, run_id: str, *, tags: Sequence[str] | None = None, note: str | None = None
    ) -> dict[str, Any]:
        """PATCH /runs/{id}: replace the run's tags and/or note; None leaves one as it is,
        ``tags=[]`` removes every tag and ``note=""`` the note. → RunOut."""
        body: dict[str, Any] = {}
        if tags is not None:
            body["tags"] = list(tags)
        if note is not None:
            body["note"] = note
        return self._json("PATCH", f"{API}/runs/{run_id}", json_body=body)

    def cancel(self, run_id: str) -> dict[str, Any]:
        """POST /runs/{id}/cancel: queued → cancelled at once; running → asked to stop."""
        return self._json("POST", f"{API}/runs/{run_id}/cancel")

    def delete(self, run_id: str) -> None:
        """DELETE /runs/{id} (a finished run only; 409 otherwise), metrics included."""
        self._request("DELETE", f"{API}/runs/{run_id}")

    def download(self, run_id: str, destination: str | Path) -> Path:
        """GET /runs/{id}/checkpoint: save the run's final model (a torch ``state_dict``) to
        ``destination`` (a folder: the server's file name in it) and return the file's path.
        The file appears whole or not at all."""
        return self._download(
            f"{API}/runs/{run_id}/checkpoint", Path(destination), f"{run_id}-model.pt"
        )

    # ------------------------------------------------------------------------- metrics

    def metrics_page(
        self,
        run_id: str,
        *,
        keys: Sequence[str] | None = None,
        max_points: int | None = None,
        step_min: int | None = None,
        step_max: int | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """One raw GET /runs/{id}/metrics response (see the API contract for its shape)."""
        return self._json(
            "GET",
            f"{API}/runs/{run_id}/metrics",
            params={
                "keys": ",".join(keys) if keys else None,
                "max_points": max_points,
                "step_min": step_min,
                "step_max": step_max,
                "cursor": cursor,
                "limit": limit,
            },
        )

    def metrics(
        self,
        run_id: str,
        keys: Sequence[str] | None = None,
        max_points: int | None = None,
        *,
        step_min: int | None = None,
        step_max: int | None = None,
    ) -> dict[str, dict[str, list]]:
        """``{key: {"steps": [...], "values": [...]}}`` as plain lists.

        With ``max_points`` the server downsamples each series (shape-preserving) in one
        response. Without it, the full series: the pages are followed to the end.
        """
        merged: dict[str, dict[str, list]] = {}
        cursor: str | None = None
        while True:
            page = self.metrics_page(
                run_id,
                keys=keys,
                max_points=max_points,
                step_min=step_min,
                step_max=step_max,
                cursor=cursor,
            )
            for key, series in (page.get("series") or {}).items():
                into = merged.setdefault(key, {"steps": [], "values": []})
                into["steps"].extend(series.get("steps", []))
                into["values"].extend(series.get("values", []))
            cursor = page.get("next_cursor")
            if max_points is not None or not cursor:
                return merged

    def metrics_table(self, run_id: str, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The full metrics as rows: ``{"step": s, key: value-or-None, ...}``, by step."""
        return series_to_rows(self.metrics(run_id, keys=keys))

    # ------------------------------------------------------------------------- waiting

    def wait(
        self,
        run_id: str,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
        *,
        poll_interval: float = 2.0,
        max_reconnects: int = 5,
    ) -> dict[str, Any]:
        """Block until the run finishes; return its final RunOut.

        Follows ``GET /runs/{id}/events`` (Server-Sent Events), calling ``on_event`` for each
        event; a dropped connection (or a server restarting) is retried with backoff and
        resumed with ``Last-Event-ID``. If the stream is unavailable, or keeps failing
        (``max_reconnects`` times in a row), it falls back to polling ``GET /runs/{id}``.
        ``timeout`` (seconds) raises BnlabError when the run is still going by then.
        """
        target = Followed(
            noun="run",
            id=run_id,
            events_path=f"{API}/runs/{run_id}/events",
            fetch=lambda: self.get_run(run_id),
            finished=lambda run: run.get("status") in FINISHED_STATUSES,
            poll_events=lambda run: [RunEvent("status", run, via="poll")],
        )
        return follow(target, self._open_stream, on_event, timeout, poll_interval, max_reconnects)

    def watch_sweep(
        self,
        sweep_id: str,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
        *,
        poll_interval: float = 2.0,
        max_reconnects: int = 5,
    ) -> dict[str, Any]:
        """Block until every run of the sweep has finished; return the final SweepOut.

        :meth:`wait` for a whole sweep: follows ``GET /sweeps/{id}/events`` (``status`` events
        carry a RunOut, ``metrics`` events ``{run_id, step, values}``), resuming a dropped
        stream with ``Last-Event-ID`` so each point is seen once, and falls back to polling
        ``GET /sweeps/{id}`` (a ``status`` event per run whose status changed).
        """
        seen: dict[str, str | None] = {}

        def changed_runs(sweep: dict[str, Any]) -> list[RunEvent]:
            events = []
            for run in sweep.get("runs") or []:
                if seen.get(run.get("id")) != run.get("status"):
                    seen[run.get("id")] = run.get("status")
                    events.append(RunEvent("status", run, via="poll"))
            return events

        target = Followed(
            noun="sweep",
            id=sweep_id,
            events_path=f"{API}/sweeps/{sweep_id}/events",
            fetch=lambda: self.get_sweep(sweep_id),
            finished=lambda sweep: all(
                run.get("status") in FINISHED_STATUSES for run in sweep.get("runs") or []
            ),
            poll_events=changed_runs,
        )
        return follow(target, self._open_stream, on_event, timeout, poll_interval, max_reconnects)

    # ------------------------------------------------------------------------- sweeps

    def sweep(
        self,
        name: str,
        base: SpecLike,
        grid: Mapping[str, Sequence[Any]],
        *,
        tags: Sequence[str] = (),
    ) -> dict[str, Any]:
        """POST /sweeps: one run per combination of ``grid`` over ``base``. → SweepOut."""
        body = {
            "name": name,
            "base": spec_to_dict(base),
            "grid": {k: list(v) for k, v in grid.items()},
            "tags": list(tags),
        }
        return self._json("POST", f"{API}/sweeps", json_body=body)

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/sweeps/{sweep_id}")

    def iter_sweeps(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """Every sweep, newest first, as SweepSummary dicts (id, name, grid, created_at,
        run_count, counts per status; not the runs), following ``next_cursor``."""
        return self._pages(f"{API}/sweeps", {}, page_size)

    def list_sweeps(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Sweeps, newest first: at most ``limit`` (None = all, over as many pages)."""
        return _take(self.iter_sweeps(page_size=_page_size(limit)), limit)

    def resolve_sweep_id(self, id_or_prefix: str) -> str:
        """The full id of the one sweep whose id is ``id_or_prefix`` or starts with it.

        Like :meth:`resolve_run_id`, but GET /sweeps has no prefix filter: a prefix is matched
        over its pages, newest first. Raises BnlabError: status 400 for a malformed or
        ambiguous prefix, 404 when no sweep matches."""
        text, prefix = id_or_prefix.strip(), prefix_of(id_or_prefix, "sweep")
        if prefix is None:
            return text
        return one_id(matching(self.iter_sweeps(page_size=MAX_PAGE_SIZE), prefix), prefix, "sweep")

    # ------------------------------------------------------------------------- compare

    def compare(
        self, *, fmt: Literal["json", "csv"] = "json", **query: Unpack[CompareQuery]
    ) -> Any:
        """GET /compare: the service.analysis Comparison of ``query`` (:class:`CompareQuery`)
        as a dict (fmt="json") or CSV text. The result's ``targets`` lists the targets in
        order, each with a ``label`` saying how it was chosen; the first is the primary one."""
        response = self._request(
            "GET", f"{API}/compare", params=_compare_params(query, fmt), accept="*/*"
        )
        return response.json() if fmt == "json" else response.text

    def compare_plot(
        self, *, fmt: Literal["png", "svg"] = "png", **query: Unpack[CompareQuery]
    ) -> bytes:
        """GET /compare/plot: the figure of the comparison of ``query`` (:class:`CompareQuery`)
        as PNG or SVG bytes."""
        params = _compare_params(query, fmt)
        return self._request("GET", f"{API}/compare/plot", params=params, accept="*/*").content


# ----------------------------------------------------------------------------- helpers


def spec_to_dict(spec: SpecLike) -> dict[str, Any]:
    """A JobSpec as JSON-ready data; a dict passes through (the server validates it)."""
    if isinstance(spec, JobSpec):
        return spec.model_dump(mode="json")
    return dict(spec)


def series_to_rows(series: Mapping[str, Mapping[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """``{key: {"steps", "values"}}`` → rows ``{"step": s, key: value-or-None}`` by step."""
    keys = sorted(series)
    by_step: dict[int, dict[str, Any]] = {}
    for key in keys:
        for step, value in zip(series[key]["steps"], series[key]["values"], strict=True):
            row = by_step.setdefault(step, {"step": step} | dict.fromkeys(keys))
            row[key] = value
    return [by_step[step] for step in sorted(by_step)]


def _page_size(limit: int | None) -> int:
    """The page size that fetches ``limit`` items (None: all) in as few requests as may be."""
    return MAX_PAGE_SIZE if limit is None else limit


def _take(items: Iterator[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` items (all of them for None), without asking for a page more."""
    taken: list[dict[str, Any]] = []
    for item in items:
        if limit is not None and len(taken) >= limit:
            break
        taken.append(item)
    return taken


def _compare_params(query: CompareQuery, fmt: str) -> dict[str, Any]:
    """GET /compare's query parameters; a TypeError for an argument CompareQuery lacks."""
    unknown = sorted(set(query) - CompareQuery.__optional_keys__)
    if unknown:
        raise TypeError(f"unknown compare argument(s) {', '.join(unknown)}")
    run_ids, target = query.get("run_ids"), query.get("target")
    if not run_ids and not query.get("sweep"):
        raise BnlabError("compare needs run ids or a sweep id")
    targets = [target] if isinstance(target, int | float) else list(target or [])
    return {
        "runs": ",".join(run_ids) if run_ids else None,
        "sweep": query.get("sweep"),
        "baseline": query.get("baseline"),
        "target": _numbers(targets),
        "target_fractions": _numbers(query.get("target_fractions") or []),
        "metric": query.get("metric"),
        "points": query.get("points"),
        "format": fmt,
    }


def _numbers(values: Sequence[float]) -> str | None:
    """[0.9, 0.85] → "0.9,0.85" (repr: no digit lost); None for none."""
    return ",".join(repr(float(v)) for v in values) or None
