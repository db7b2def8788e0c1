"""End-to-end fixtures: the real bnlab app on a free port, and headless Chromium driving it.

The app is the production one (``service.app.create_app``) with its embedded executor, so a
run submitted from the page really trains (``python -m bncore.train`` in a subprocess) and its
metrics come back through the store and the SSE stream. SQLite in a temporary directory.

The browser is Debian's ``chromium`` package, driven by Playwright's Python package through
its bundled driver; ``playwright install`` (which downloads a browser build) is never needed.
Outside CI the tests skip when /usr/bin/chromium is missing; in CI (env ``CI`` set) they fail
instead, so a missing install step cannot pass unnoticed.

The dashboard tests import from here Playwright's ``expect`` (None without Playwright, whose
absence the fixtures then report), :func:`wait_until` and ``SEEDED_SPEC``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # every test needs the page fixture, which skips (or fails in CI) saying why
    expect = None

CHROMIUM = os.environ.get("BNLAB_E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
INSTALL_HINT = "install it with: apt-get install -y chromium (see tests/e2e/install_browser.sh)"


def _require_browser() -> None:
    """Skip (locally) or fail (in CI) when the browser or Playwright is missing."""
    in_ci = bool(os.environ.get("CI"))
    problems = []
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"{CHROMIUM} not found: {INSTALL_HINT}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is not installed: pip install -e '.[dev]'")
    if problems:
        reason = "; ".join(problems)
        if in_ci:
            pytest.fail(f"e2e test cannot run in CI: {reason}", pytrace=False)
        pytest.skip(reason)


def wait_until(page, expression: str, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    """Poll a JS expression in ``page`` until it is truthy. (page.wait_for_function evaluates
    its predicate with eval, which the page's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        page.wait_for_timeout(100)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):  # noqa: ANN201
    """The production app (embedded executor, SQLite in a temporary directory), not started.
    A test module may set ``LIVE_APP_SETTINGS`` (e.g. API keys) to change its settings."""
    _require_browser()
    from service.app import create_app
    from service.settings import Settings

    tmp = tmp_path_factory.mktemp("e2e")
    values = {
        "database_url": f"sqlite:///{tmp / 'bnlab.db'}",
        "broker_url": None,  # the embedded executor, whatever the environment says
        "api_key_hashes": [],
        "data_dir": tmp,
        "heartbeat_interval_s": 1.0,
        "embedded_concurrency": 1,
    }
    values.update(getattr(request.module, "LIVE_APP_SETTINGS", {}))
    settings = Settings(_env_file=None, **values)
    return create_app(settings)


@pytest.fixture(scope="module")
def live_server(live_app) -> Iterator[str]:  # noqa: ANN001
    """The real app, served by uvicorn in a thread on a free port; yields its base URL."""
    import uvicorn

    app = live_app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the bnlab app did not start (see the log above)", pytrace=False)
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


# The spec of the runs the tests write into the store (a tiny digits model, 40 steps); each
# test names its own and changes what it needs.
SEEDED_SPEC = {
    "name": "seeded",
    "dataset": "digits",
    "model": {"hidden": [16], "norm": "batchnorm"},
    "optimizer": {"lr": 0.5},
    "batch_size": 32,
    "steps": 40,
    "eval_every": 10,
    "seed": 0,
}


class Seeder:
    """Runs and sweeps written straight into the live app's store, finished with the metrics
    given: for dashboard states that a tiny real training cannot produce on demand (a diverged
    loss, a failure, six seeds of a sweep). They are claimed by a made-up worker at once, so the
    embedded executor never trains them."""

    WORKER = "e2e-seeder"

    def __init__(self, app) -> None:  # noqa: ANN001
        self.session_factory = app.state.session_factory

    def run(
        self,
        spec: dict,
        status: str,
        metrics: dict[str, list[tuple[int, float | None]]],
        reason: str | None = None,
        **outcome: object,
    ) -> str:
        from bncore.spec import JobSpec
        from service import store

        with self.session_factory() as session:
            run, _ = store.create_run(session, JobSpec.model_validate(spec))
            self._finish(session, run.id, status, metrics, reason, outcome)
            return run.id

    def sweep(self, name: str, base: dict, grid: dict, metrics_of) -> tuple[str, list[str]]:  # noqa: ANN001
        """A sweep whose runs succeed with ``metrics_of(spec)``; (sweep id, run ids)."""
        from bncore.spec import JobSpec
        from service import store

        with self.session_factory() as session:
            specs = [JobSpec.model_validate(s) for s in store.expand_grid(base, grid)]
            sweep, runs = store.create_sweep(session, name, base, grid, specs)
            ids = [run.id for run in runs]
            for run_id, spec in zip(ids, specs, strict=True):
                metrics = metrics_of(spec.model_dump(mode="json"))
                self._finish(session, run_id, "succeeded", metrics, "finished", {})
            return sweep.id, ids

    def _finish(self, session, run_id, status, metrics, reason, outcome) -> None:  # noqa: ANN001
        from service import store
        from service.vocab import RunStatus

        assert store.claim_run(session, run_id, self.WORKER), "the executor took a seeded run"
        points = [(key, step, value) for key, pts in metrics.items() for step, value in pts]
        store.add_metrics(session, run_id, points)
        store.finish_run(session, run_id, RunStatus(status), reason, **outcome)


@pytest.fixture(scope="module")
def seed(live_app, live_server: str) -> Seeder:  # noqa: ANN001
    return Seeder(live_app)


@pytest.fixture(scope="module")
def browser(live_server: str) -> Iterator[object]:
    # Depends on live_server so that the browser (and its open event streams) closes first.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live_server: str, artifacts_dir: Path, request: pytest.FixtureRequest):  # noqa: ANN001, ANN201
    """A fresh page at 1400×900 that records requests to other origins and console errors.
    A failing test leaves a screenshot, artifacts/<test>-failure.png."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=live_server)
    page = context.new_page()
    page.foreign_requests = []  # type: ignore[attr-defined]
    page.console_errors = []  # type: ignore[attr-defined]
    page.on(
        "request",
        lambda req: (
            None
            if req.url.startswith((live_server, "data:"))
            else page.foreign_requests.append(req.url)
        ),
    )
    page.on(
        "console",
        lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None,
    )
    page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
    yield page
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        shot = artifacts_dir / f"{request.node.name}-failure.png"
        page.screenshot(path=str(shot), full_page=True)
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    # Keep each phase's report on the item, so the page fixture knows whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
