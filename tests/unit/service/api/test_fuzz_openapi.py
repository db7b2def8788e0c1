"""Property-based fuzzing of the whole OpenAPI schema (schemathesis) against the in-process app.

Every operation gets generated requests, valid and invalid (positive and negative modes), and
every response must pass schemathesis' checks: no 5xx, a documented status code, the
documented content type and headers, a body matching the response schema, invalid data
rejected (4xx) and valid data accepted.

The app runs on a SQLite copy in a temporary folder with an executor that runs nothing. A
few runs, a sweep and metric points exist from the start, and generated path parameters are
sometimes swapped for their ids, so the fuzzer reaches past the 404s. Generation is
deterministic (derandomized, no example database) so CI sees the same cases on every run;
MAX_EXAMPLES per operation keeps the whole file well under a minute.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from service import store
from service.app import create_app
from service.executor import RecordingExecutor
from service.settings import Settings

MAX_EXAMPLES = 30
KNOWN_IDS: dict[str, list[str]] = {}  # path parameter → ids that exist, filled by fuzz_app
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: Path):  # noqa: ANN201
    from bncore.spec import JobSpec

    path = tmp_path_factory.mktemp("fuzz") / "bnlab.db"
    shutil.copyfile(migrated_sqlite, path)
    app = create_app(
        Settings(_env_file=None, database_url=f"sqlite:///{path}"), executor=RecordingExecutor()
    )
    ids: dict[str, list[str]] = {"run_id": [], "sweep_id": []}
    with app.state.session_factory() as session:
        norms = ["none", "batchnorm"]
        specs = [JobSpec(name=f"fuzz-{norm}", model={"norm": norm}) for norm in norms]
        base = specs[0].model_dump(mode="json")
        sweep, runs = store.create_sweep(session, "fuzz", base, {"model.norm": norms}, specs)
        ids["sweep_id"].append(sweep.id)
        for run in runs:
            ids["run_id"].append(run.id)
            points = [(k, s, 0.1 * s) for s in range(0, 50) for k in ("loss", "test_acc")]
            store.add_metrics(session, run.id, points)
        finished, _ = store.create_run(session, JobSpec(name="finished"))
        store.claim_run(session, finished.id, "fuzz-worker")
        store.finish_run(session, finished.id, store.RunStatus.succeeded, "done")
        ids["run_id"].append(finished.id)
    KNOWN_IDS.update(ids)
    yield app
    KNOWN_IDS.clear()
    asgi.shutdown_lifespans()
    app.state.engine.dispose()


# Schema-valid requests must be accepted (2xx; 404 for an id that does not exist; 409 where
# the run's state forbids it), except where the app checks what JSON Schema cannot say, and
# documents the error it answers:
# opaque cursors, step_min > step_max, a metric key list, a Last-Event-ID (400); "exactly one
# of runs and sweep" (400); cross-field spec checks (data_path per dataset, probe_layer
# within the depth, the parameter count) and grid keys naming spec fields (422).
SEMANTIC_REJECTIONS = {
    ("GET", "/api/v1/runs"): [400],
    ("GET", "/api/v1/sweeps"): [400],
    ("GET", "/api/v1/runs/{run_id}/metrics"): [400],
    ("GET", "/api/v1/runs/{run_id}/events"): [400],
    ("GET", "/api/v1/sweeps/{sweep_id}/events"): [400],
    ("GET", "/api/v1/compare"): [400, 422],
    ("GET", "/api/v1/compare/plot"): [400, 422],
    ("POST", "/api/v1/runs"): [422],
    ("POST", "/api/v1/sweeps"): [422],
}
ACCEPTED = ["2xx", "404", "409"]  # 409: deleting a queued run, cancelling a finished one


def _config() -> schemathesis.Config:
    operations = [
        {
            "include-name": f"{method} {path}",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ACCEPTED + [str(s) for s in statuses]
                }
            },
        }
        for (method, path), statuses in SEMANTIC_REJECTIONS.items()
    ]
    return schemathesis.Config.from_dict(
        {
            "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "operations": operations,
        }
    )


# The schema is built from the app's own OpenAPI document at collection time (no database is
# touched: engines connect lazily); requests go to the module's app, passed to each call.
# (schemathesis.pytest.from_fixture would be the lazy way, but it sets Node._nodeid, which
# pytest 9 no longer has.)
schema = schemathesis.openapi.from_dict(
    create_app(Settings(_env_file=None, database_url="sqlite://")).openapi(), config=_config()
)


@schema.hook
def map_path_parameters(context, path_parameters):  # noqa: ANN001, ANN201
    """Half of the generated ids become ids that exist, so the happy paths are fuzzed too."""
    for name, ids in KNOWN_IDS.items():
        value = (path_parameters or {}).get(name)
        if isinstance(value, str) and ids and len(value) % 2 == 0 and len(value) <= 64:
            path_parameters[name] = ids[len(value) % len(ids)]
    return path_parameters


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_to_its_schema(case, fuzz_app) -> None:  # noqa: ANN001
    kwargs = {}
    if case.path.endswith("/events"):  # a live stream: make it end
        case.query = {**(case.query or {}), "timeout": 0.2}
        kwargs["timeout"] = 5
    case.call_and_validate(app=fuzz_app, **kwargs)
