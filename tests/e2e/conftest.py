"""End-to-end fixtures: the real bnlab app on a free port, and headless Chromium driving it.

The app is the production one (``service.app.create_app``) with its embedded executor, so a
run submitted from the page really trains (``python -m bncore.train`` in a subprocess) and its
metrics come back through the store and the SSE stream. SQLite in a temporary directory.

The browser is Debian's ``chromium`` package, driven by Playwright's Python package through
its bundled driver; ``playwright install`` (which downloads a browser build) is never needed.
Outside CI the tests skip when /usr/bin/chromium is missing; in CI (env ``CI`` set) they fail
instead, so a missing install step cannot pass unnoticed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app, served by uvicorn in a thread on a free port; yields its base URL."""
    _require_browser()
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    tmp = tmp_path_factory.mktemp("e2e")
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp / 'bnlab.db'}",
        broker_url=None,  # the embedded executor, whatever the environment says
        api_key_hashes=[],
        data_dir=tmp,
        heartbeat_interval_s=1.0,
        embedded_concurrency=1,
    )
    app = create_app(settings)
    _ensure_dashboard(app)

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


def _ensure_dashboard(app) -> None:  # noqa: ANN001
    """Serve the dashboard even where create_app does not include its router (yet)."""
    from service.api import dashboard

    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        app.include_router(dashboard.router)


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
