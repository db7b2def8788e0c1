"""A small Python client for the bnlab REST API (``/api/v1``, see docs/api-contract.md).

Plain httpx, no pandas, no torch, no server code: every method returns JSON-shaped Python data
(dicts, lists) or bytes for images. Errors come back as :class:`BnlabError` carrying the
server's problem+json ``title``, ``status``, ``detail`` and field ``errors``; a server that
cannot be reached gives ``BnlabError("cannot reach bnlab at URL: ...")``.

    from service.client import BnlabClient

    with BnlabClient("http://127.0.0.1:8000") as bn:
        run = bn.submit({"name": "bn", "dataset": "digits", "steps": 500})
        final = bn.wait(run["id"], on_event=print)      # follows the SSE stream
        # bn.watch_sweep(sweep_id, on_event=print): the same for every run of a sweep
        series = bn.metrics(run["id"], keys=["test_acc"])  # {"test_acc": {"steps", "values"}}
        full_id = bn.resolve_run_id("6f1c2a9b")          # a unique prefix → the run's id
        bn.update_run(full_id, tags=["paper"], note="lr too high")  # PATCH: labels
        runs = bn.list_runs(norm="batchnorm", tags=["paper"], q="lr")  # filtered, newest first
        sweeps = bn.list_sweeps(limit=10)                 # newest first, runs per status
        bn.compare(sweep=sweeps[0]["id"], target=[0.8, 0.85], target_fractions=[1, 0.9])

Tests pass their own ``httpx.Client`` (e.g. FastAPI's ``TestClient``, which is one) instead of
a URL.

Modules: :mod:`~service.client.api` (``BnlabClient``: the operations),
:mod:`~service.client.connection` (how a request travels), :mod:`~service.client.errors`
(``BnlabError``), :mod:`~service.client.events` (``RunEvent``, SSE framing),
:mod:`~service.client.follow` (waiting: stream, reconnect, poll), :mod:`~service.client.ids`
(short ids: unique prefixes).
"""

from service.client.api import API, BnlabClient, SpecLike, series_to_rows, spec_to_dict
from service.client.connection import DEFAULT_SERVER
from service.client.errors import BnlabError
from service.client.events import EventCallback, RunEvent, SseMessage, parse_sse
from service.vocab import FINISHED_STATUSES

__all__ = [
    "API",
    "DEFAULT_SERVER",
    "FINISHED_STATUSES",
    "BnlabClient",
    "BnlabError",
    "EventCallback",
    "RunEvent",
    "SpecLike",
    "SseMessage",
    "parse_sse",
    "series_to_rows",
    "spec_to_dict",
]
