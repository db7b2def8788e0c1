"""The dashboard against a server with API keys (and keys required for reads), in Chromium.

The page itself loads without a key and asks for one at the first 401: a dialog that says the
key is kept only for this tab, shows the server's refusal of a wrong key and retries with the
right one. The key lives in sessionStorage (a new tab asks again; an old localStorage copy is
removed), never in a URL. A read key's submit gets a message naming the scope, not the
dialog. Live runs stream over fetch() with the key (EventSource cannot send one), resume
after a drop with Last-Event-ID and stop at the end event. Screenshots: artifacts/
dashboard-key-*.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.auth import ApiKey, Scope, hash_key
from tests.e2e.conftest import SEEDED_SPEC, expect, wait_until

pytestmark = pytest.mark.e2e

READ_KEY = "e2e-reader-0123456789abcdef"
SUBMIT_KEY = "e2e-submitter-0123456789abcdef"
WRONG_KEY = "e2e-no-such-key"
LIVE_APP_SETTINGS = {  # read by the conftest's live_app
    "api_key_hashes": [
        ApiKey("reader", frozenset({Scope.read}), hash_key(READ_KEY)).entry(),
        ApiKey("submitter", frozenset({Scope.submit}), hash_key(SUBMIT_KEY)).entry(),
    ],
    "auth_reads": True,
}
STORED = "bnlab.apiKey"
SPEC = {**SEEDED_SPEC, "name": "keyed", "eval_every": 1}  # LiveRun writes test_acc every step
# What the browser logs by itself for the refusals these tests cause on purpose.
EXPECTED_LOGS = ("status of 401", "status of 403")
WORKER = "e2e-live"


def unexpected_errors(page) -> list[str]:  # noqa: ANN001
    return [e for e in page.console_errors if not any(log in e for log in EXPECTED_LOGS)]


def record_api_requests(page) -> list:  # noqa: ANN001
    """Every request the page makes to the API, to check where the key went."""
    seen: list = []
    page.on("request", lambda req: seen.append(req) if "/api/v1/" in req.url else None)
    return seen


def enter_key(page, key: str) -> None:  # noqa: ANN001
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-use")


def storage(page) -> dict:  # noqa: ANN001
    return page.evaluate(
        f"() => ({{session: sessionStorage.getItem('{STORED}'), "
        f"local: localStorage.getItem('{STORED}')}})"
    )


class LiveRun:
    """A run claimed by a made-up worker: the test writes its points and finishes it, through
    the store as a worker would, while the page follows it."""

    def __init__(self, app) -> None:  # noqa: ANN001
        from bncore.spec import JobSpec
        from service import store

        self.factory = app.state.session_factory
        with self.factory() as session:
            run, _ = store.create_run(session, JobSpec.model_validate(SPEC))
            self.id = run.id
            self.token = store.claim_run(session, run.id, WORKER)
        assert self.token, "the executor took the seeded run"

    def add(self, steps: range) -> None:
        from service import store

        points = [
            (key, step, value)
            for step in steps
            for key, value in (("test_acc", 0.5 + step / 100), ("train_loss", 2.0 - step / 50))
        ]
        with self.factory() as session:
            assert store.heartbeat(session, self.id, WORKER, token=self.token)
            store.add_metrics(session, self.id, points, token=self.token)

    def finish(self) -> None:
        from service import store
        from service.vocab import RunStatus

        with self.factory() as session:
            assert store.finish_run(
                session, self.id, RunStatus.succeeded, "finished", token=self.token
            )


def test_asks_for_a_key_refuses_a_wrong_one_and_keeps_it_for_the_tab(
    page, seed, artifacts_dir: Path
) -> None:  # noqa: ANN001
    run_id = seed.run({**SPEC, "name": "keyed-finished"}, "succeeded", {"test_acc": [(0, 0.9)]})
    # An older dashboard's copy of a key, in localStorage: the page removes it.
    page.context.add_init_script(f"localStorage.setItem('{STORED}', 'an-old-key')")
    requests = record_api_requests(page)
    page.goto("/")  # the page itself needs no key

    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-dialog label")).to_contain_text("API key")
    expect(page.locator("#key-input")).to_have_attribute("type", "password")
    expect(page.locator("#key-note")).to_contain_text("only for this tab")
    expect(page.locator("#key-use")).to_have_text("Use key")
    expect(page.locator("#key-error")).to_be_hidden()
    assert storage(page) == {"session": None, "local": None}
    dialog.screenshot(path=str(artifacts_dir / "dashboard-key-dialog.png"))

    enter_key(page, WRONG_KEY)
    error = page.locator("#key-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("refused")
    expect(error).to_contain_text("not valid")
    expect(dialog).to_be_visible()
    assert storage(page)["session"] is None  # a refused key is not kept
    page.screenshot(path=str(artifacts_dir / "dashboard-key-refused.png"))

    enter_key(page, READ_KEY)
    expect(dialog).to_be_hidden()
    page.locator(f"#runs-table tr[data-run-id='{run_id}']").wait_for()
    expect(page.locator("#key-state")).to_be_visible()
    assert storage(page) == {"session": READ_KEY, "local": None}
    page.locator(".topbar").screenshot(path=str(artifacts_dir / "dashboard-key-set.png"))

    # A new tab of the same browser shares localStorage but not sessionStorage: it asks again.
    other = page.context.new_page()
    other.goto("/")
    expect(other.locator("#key-dialog")).to_be_visible()
    assert storage(other) == {"session": None, "local": None}
    other.close()

    # "Forget key" drops it: the list is read again, which asks again.
    page.click("#key-forget")
    expect(dialog).to_be_visible()
    assert storage(page)["session"] is None
    page.click("#key-cancel")
    expect(dialog).to_be_hidden()
    expect(page.locator("#banner")).to_contain_text("API key needed")

    # The key travelled in the header only, never in a URL.
    assert requests, "the page made no API request"
    assert not [r.url for r in requests if READ_KEY in r.url or WRONG_KEY in r.url]
    sent = [r.headers.get("x-api-key") for r in requests]
    assert READ_KEY in sent and WRONG_KEY in sent
    assert page.foreign_requests == []
    assert unexpected_errors(page) == [], page.console_errors


def test_a_read_key_may_not_submit(page, artifacts_dir: Path) -> None:  # noqa: ANN001
    page.goto("/")
    enter_key(page, READ_KEY)
    expect(page.locator("#key-dialog")).to_be_hidden()
    page.fill("#submit-form [name='name']", "not-allowed")
    page.click("#submit-form button[type=submit]")
    problem = page.locator("#submit-problem")
    expect(problem).to_be_visible()
    expect(problem).to_contain_text("403 Needs the submit scope")
    expect(problem).to_contain_text("'reader' lacks the submit scope")
    expect(page.locator("#key-dialog")).to_be_hidden()  # another key is needed, not this one again
    assert storage(page)["session"] == READ_KEY  # the key is still good for reading
    page.locator("#submit-form").screenshot(path=str(artifacts_dir / "dashboard-key-scope.png"))
    assert unexpected_errors(page) == [], page.console_errors


def test_live_run_streams_with_the_key(page, live_app) -> None:  # noqa: ANN001
    run = LiveRun(live_app)
    run.add(range(0, 5))
    requests = record_api_requests(page)
    page.goto(f"/#/run/{run.id}")
    enter_key(page, READ_KEY)
    expect(page.locator("#run-status")).to_have_text("running")
    # Steps 0-3 arrive at once (a live run's newest step waits for a later one).
    wait_until(page, "window.bnlab.plotted.acc >= 4")
    run.add(range(5, 12))
    wait_until(page, "window.bnlab.plotted.acc >= 11")
    run.finish()
    expect(page.locator("#run-status")).to_have_text("succeeded")
    wait_until(page, "window.bnlab.plotted.acc >= 12")
    live_log = page.evaluate("window.bnlab.liveLog")
    assert "live (SSE)" in live_log and "live (polling)" not in live_log, live_log
    assert live_log[-1] == "finished", live_log

    streams = [r for r in requests if r.url.endswith(f"/runs/{run.id}/events")]
    assert streams, [r.url for r in requests]
    assert all(r.headers.get("x-api-key") == READ_KEY for r in streams)
    assert not [r.url for r in requests if READ_KEY in r.url]
    assert unexpected_errors(page) == [], page.console_errors


def test_stream_resumes_after_a_drop_and_stops_at_the_end(page, live_app) -> None:  # noqa: ANN001
    """sse.js on its own: a stream the server closes every second (``?timeout=1``) is reopened
    with Last-Event-ID, and every point arrives exactly once, in order, until the end event."""
    run = LiveRun(live_app)
    run.add(range(0, 5))
    requests = record_api_requests(page)
    page.goto("/#/sweeps")
    enter_key(page, READ_KEY)
    page.evaluate(
        """async (url) => {
          const { openEventStream } = await import("/static/js/sse.js");
          const log = window.sseLog = { events: [], opens: 0, drops: 0, fails: [] };
          openEventStream(url, {
            onOpen: () => log.opens++,
            onDrop: () => log.drops++,
            onFail: (f) => log.fails.push(f.status),
            onEvent: (type, data, id) => log.events.push({ type, data: JSON.parse(data), id }),
          });
        }""",
        f"/api/v1/runs/{run.id}/events?timeout=1",
    )
    metric_steps = "window.sseLog.events.filter((e) => e.type === 'metrics')"
    wait_until(page, f"{metric_steps}.length >= 4")
    wait_until(page, "window.sseLog.drops >= 1 && window.sseLog.opens >= 2")  # dropped, back
    run.add(range(5, 10))
    wait_until(page, f"{metric_steps}.length >= 9")
    run.finish()
    wait_until(page, "window.sseLog.events.some((e) => e.type === 'end')")

    log = page.evaluate("window.sseLog")
    steps = [e["data"]["step"] for e in log["events"] if e["type"] == "metrics"]
    assert steps == list(range(10)), steps  # each once, in order, across reconnects
    ids = [e["id"] for e in log["events"] if e["type"] == "metrics"]
    assert ids == [str(step) for step in range(10)], ids
    assert log["events"][-1]["type"] == "end" and log["fails"] == []
    assert log["events"][-1]["data"]["status"] == "succeeded"
    streams = [r for r in requests if "/events" in r.url]
    resumed = [r.headers.get("last-event-id") for r in streams[1:]]
    assert resumed and all(step is not None for step in resumed), resumed
    assert all(r.headers.get("x-api-key") == READ_KEY for r in streams)
    assert [json.dumps(e["data"]) for e in log["events"] if e["type"] == "status"]
    assert unexpected_errors(page) == [], page.console_errors


def test_compare_plot_and_downloads_carry_the_key(page, seed) -> None:  # noqa: ANN001
    """An <img> or a link cannot send the key: with one set, the page fetches the plot and the
    downloads itself."""
    curve = {"test_acc": [(step, 0.5 + step / 100) for step in range(0, 41, 10)]}
    ids = [
        seed.run(
            {**SPEC, "name": f"cmp-{norm}", "model": {"hidden": [16], "norm": norm}},
            "succeeded",
            curve,
        )
        for norm in ("batchnorm", "none")
    ]
    page.goto(f"/#/compare?runs={','.join(ids)}")
    enter_key(page, READ_KEY)
    expect(page.locator("#compare-figure")).to_be_visible()
    wait_until(page, "document.getElementById('compare-plot').naturalWidth > 0")
    assert page.get_attribute("#compare-plot", "src").startswith("data:image/png;base64,")
    with page.expect_download() as download:
        page.click("#compare-links a:text('CSV')")
    path = download.value.path()
    assert download.value.suggested_filename == "compare.csv"
    assert "cmp-batchnorm" in Path(path).read_text()
    assert unexpected_errors(page) == [], page.console_errors
