"""The dashboard in headless Chromium, against the real app and real (tiny) trainings.

One walk through what a user does: open the page, get a clear 422 for a bad spec, submit a
batch-norm run from the form and watch it finish with its curves drawn, submit a run without
normalization, then compare the two (speed-up table and the server's plot). Then the states a
tiny real training cannot produce on demand (a diverged loss, a failure, a sweep of six seeds),
seeded into the live app's store: how the run page, the compare view and the sweep pages show
them, at desktop and phone widths. And /docs and /redoc with every external request blocked.
Screenshots are kept in artifacts/ (dashboard-*.png). One file past ~400 lines on purpose: every
test here shares one module-scoped live server (and its seeded sweep); a second file would start
and fill a second one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import SEEDED_SPEC, expect, wait_until

pytestmark = pytest.mark.e2e

# Small enough to train in seconds on one CPU core: 8×8 digits, one hidden layer of 16.
TINY = {
    "dataset": "digits",
    "model.hidden": "16",
    "optimizer.lr": "0.5",
    "batch_size": "32",
    "steps": "40",
    "eval_every": "10",
    "seed": "0",
}
FINISH_TIMEOUT_MS = 180_000
FINISHED = re.compile(r"^(succeeded|failed|diverged|cancelled)$")


def fill_form(page, values: dict[str, str]) -> None:  # noqa: ANN001
    form = page.locator("#submit-form")
    for name, value in values.items():
        field = form.locator(f"[name='{name}']")
        if field.evaluate("el => el.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def submit_and_finish(page, name: str, norm: str) -> str:  # noqa: ANN001
    """Submit a run from the form, land on its page and wait for it to finish; its id."""
    page.click("nav a[data-nav='runs']")
    fill_form(page, {**TINY, "name": name, "model.norm": norm})
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/run/[0-9a-zA-Z-]+$"))
    run_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator("#run-status")).to_have_text(FINISHED, timeout=FINISH_TIMEOUT_MS)
    status = page.text_content("#run-status")
    reason = page.text_content("#run-reason")
    assert status == "succeeded", f"run {name} ended {status}: {reason}"
    # The curves: the canvases drew points (counted by the page's chart function).
    wait_until(page, "window.bnlab.plotted.acc > 0 && window.bnlab.plotted.loss > 0")
    assert int(page.get_attribute("#chart-acc", "data-points")) >= 5  # evals at 0,10,..,40
    assert page.text_content("#run-progress-text") == "step 40 of 40"
    assert "at step" in page.text_content("#run-outcome")  # best test accuracy at step N
    # Fig. 1b/c: the probed unit's pre-activation percentiles, one point per evaluation each.
    wait_until(page, "window.bnlab.plotted.pct >= 3 * 5")
    return run_id


def test_submit_watch_and_compare(page, live_server: str, artifacts_dir: Path) -> None:  # noqa: ANN001
    page.goto("/")
    page.wait_for_selector("#view-runs:not([hidden])")
    assert page.title().startswith("Runs")

    # An invalid spec: the 422 problem is shown, naming the field and the bound.
    fill_form(page, {**TINY, "name": "too-fast", "optimizer.lr": "1000"})
    page.click("#submit-form button[type=submit]")
    problem = page.locator("#submit-problem")
    problem.wait_for(state="visible")
    text = problem.text_content()
    assert "422" in text and "optimizer.lr" in text and "100" in text, text
    assert "null" not in text, text  # a missing detail once read "Validation failed**null**"
    assert "invalid" in page.get_attribute("#submit-form [name='optimizer.lr']", "class")
    assert page.locator("#submit-form [name='data_path']").is_hidden()  # digits has no file
    page.locator("#submit-form").screenshot(path=str(artifacts_dir / "dashboard-problem.png"))
    assert page.url.endswith("/") or page.url.endswith("#/runs")  # nothing was submitted

    # A batch-norm run: watched live until it succeeds.
    bn_id = submit_and_finish(page, "digits-bn", "batchnorm")
    live_log = page.evaluate("window.bnlab.liveLog")
    # Followed over the SSE stream: the page opens it at once, long before the trainer (a
    # subprocess that must import torch first) can have finished.
    assert "live (SSE)" in live_log, live_log
    page.screenshot(path=str(artifacts_dir / "dashboard-run.png"), full_page=True)

    # A run without normalization, then both in the runs list.
    plain_id = submit_and_finish(page, "digits-plain", "none")
    page.click("nav a[data-nav='runs']")
    for run_id in (bn_id, plain_id):
        row = page.locator(f"#runs-table tr[data-run-id='{run_id}']")
        row.wait_for()
        assert row.get_attribute("data-status") == "succeeded"
        row.locator("input[type=checkbox]").check()
    page.screenshot(path=str(artifacts_dir / "dashboard-runs.png"), full_page=True)

    # Compare them: the speed-up table and the server-rendered plot.
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r"#/compare\?runs="))
    table = page.locator("#speedup-table tbody tr")
    table.first.wait_for()
    assert table.count() == 2
    baseline = page.locator(f"#speedup-table tr[data-run-id='{plain_id}']")
    assert "baseline" in baseline.text_content()  # the run without normalization
    assert baseline.locator("td.speedup").text_content() == "1.00×"
    bn_speedup = page.locator(f"#speedup-table tr[data-run-id='{bn_id}'] td.speedup")
    assert re.fullmatch(r"\d+\.\d\d×|—", bn_speedup.text_content()), bn_speedup.text_content()
    assert "Target:" in page.text_content("#compare-target")
    wait_until(
        page,
        "(() => { const img = document.getElementById('compare-plot');"
        " return img.complete && img.naturalWidth > 0; })()",
        timeout_s=60,
    )
    page.screenshot(path=str(artifacts_dir / "dashboard-compare.png"), full_page=True)

    # Everything came from bnlab itself, and the page raised no errors.
    assert page.foreign_requests == []
    # The one expected console error is the browser logging the 422 of the invalid spec.
    errors = [e for e in page.console_errors if "422" not in e]
    assert errors == [], errors


def test_polling_fallback_without_sse(page) -> None:  # noqa: ANN001
    """Where the event stream cannot be had (an old server, a proxy that buffers), the run view
    falls back to polling the metrics endpoint and still follows the run to its end."""
    page.route("**/events*", lambda route: route.fulfill(status=404, body="no SSE here"))
    page.goto("/")
    fill_form(page, {**TINY, "name": "digits-polled", "steps": "20", "model.norm": "batchnorm"})
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/run/[0-9a-zA-Z-]+$"))
    expect(page.locator("#run-status")).to_have_text(FINISHED, timeout=FINISH_TIMEOUT_MS)
    assert page.text_content("#run-status") == "succeeded", page.text_content("#run-reason")
    live_log = page.evaluate("window.bnlab.liveLog")
    assert "live (polling)" in live_log and "live (SSE)" not in live_log, live_log
    wait_until(page, "window.bnlab.plotted.acc >= 3")  # evaluations at steps 0, 10, 20
    assert page.text_content("#run-progress-text") == "step 20 of 20"


# ------------------------------------------------------------------ seeded states

NARROW = {"width": 390, "height": 844}  # a phone
STEPS = SEEDED_SPEC["steps"]
NOT_FOUND_LOG = "Failed to load resource: the server responded with a status of 404"


def after_redraw(page, width: int) -> None:  # noqa: ANN001
    """Return once the page has its new ``width`` and the charts are redrawn: the resize event
    is dispatched in a frame's rendering steps, its handlers draw (or schedule a draw on the
    next animation frame), so two animation frames after the width took hold is after it."""
    page.evaluate(
        """(width) => new Promise((done) => {
            const twoFrames = () => requestAnimationFrame(() => requestAnimationFrame(done));
            if (window.innerWidth === width) twoFrames();
            else window.addEventListener("resize", twoFrames, { once: true });
        })""",
        width,
    )


def shot(page, artifacts_dir: Path, name: str) -> None:  # noqa: ANN001
    """A full-page screenshot at the current width, and the same at a phone's width."""
    page.screenshot(path=str(artifacts_dir / f"dashboard-{name}.png"), full_page=True)
    desktop = page.viewport_size
    page.set_viewport_size(NARROW)
    after_redraw(page, NARROW["width"])
    page.screenshot(path=str(artifacts_dir / f"dashboard-{name}-narrow.png"), full_page=True)
    assert_no_horizontal_overflow(page)
    page.set_viewport_size(desktop)


def assert_no_horizontal_overflow(page) -> None:  # noqa: ANN001
    """Nothing sticks out of the page or out of its card (wide tables scroll inside)."""
    overflow = page.evaluate(
        """() => {
          const bad = [];
          if (document.documentElement.scrollWidth > window.innerWidth + 1) bad.push("page");
          for (const card of document.querySelectorAll(".view:not([hidden]) .card")) {
            const box = card.getBoundingClientRect();
            for (const child of card.querySelectorAll("table, canvas, p, ul, dl, h2, h3")) {
              const inner = child.closest(".table-wrap") || child;
              const right = inner.getBoundingClientRect().right;
              if (right > box.right + 1) bad.push(child.id || child.tagName);
            }
          }
          return bad;
        }"""
    )
    assert overflow == [], overflow


def chart(page, canvas_id: str) -> dict[str, str]:  # noqa: ANN001
    """What the chart drew, from the data- attributes the page's chart function leaves."""
    return page.evaluate(f"({{...document.getElementById('{canvas_id}').dataset}})")


def curve(start: float, end: float, steps: range, noise: float = 0.0, seed: int = 0) -> list:
    """A smooth approach from start to end over steps, with a deterministic wiggle."""
    n = max(1, steps[-1])
    return [
        (s, end + (start - end) * (1 - s / n) ** 3 + noise * ((s * 7 + seed * 13) % 5 - 2) / 2)
        for s in steps
    ]


def percentiles(steps: range, drift: float) -> dict[str, list]:
    return {
        "act_p15": [(s, -1.0 - drift * s / STEPS) for s in steps],
        "act_p50": [(s, 0.1 + drift * s / STEPS) for s in steps],
        "act_p85": [(s, 1.2 + 2 * drift * s / STEPS) for s in steps],
    }


EVALS = range(0, STEPS + 1, 10)
TRAIN_STEPS = range(1, STEPS + 1)


def test_422_lists_every_field(page) -> None:  # noqa: ANN001
    page.goto("/")
    # The page's shared words come from the server (service/vocab.py), not from the script.
    from service import vocab

    assert page.evaluate("fetch('/api/v1/vocab').then((r) => r.json())") == vocab.as_dict()
    fill_form(page, {**TINY, "optimizer.lr": "1000", "steps": "-5"})
    page.click("#submit-form button[type=submit]")
    problem = page.locator("#submit-problem")
    problem.wait_for(state="visible")
    assert problem.locator("strong").text_content() == "422 Validation failed"
    items = [li.text_content() for li in problem.locator("li").all()]
    assert len(items) == 2, items
    assert any(i.startswith("optimizer.lr: ") and "100" in i for i in items), items
    assert any(i.startswith("steps: ") for i in items), items
    assert "null" not in problem.text_content()


def test_diverged_run_axis_and_smoothing(page, seed, artifacts_dir: Path) -> None:  # noqa: ANN001
    """A diverged loss (5.4e9 before it went non-finite) gets a log axis with short labels;
    the smoothing slider changes the per-step curves and is remembered."""
    train_loss = [(s, 2.3 - s / 20) for s in range(1, 25)]
    train_loss += [(25, 40.0), (26, 9.1e3), (27, 7.7e6), (28, 5_436_508_000.0), (29, None)]
    run_id = seed.run(
        {**SEEDED_SPEC, "name": "diverged-lr", "model": {"hidden": [16], "norm": "none"}},
        "diverged",
        {
            "train_loss": train_loss,
            "train_acc": [(s, min(0.9, s / 25)) for s in range(1, 29)],
            "test_loss": [(0, 2.3), (10, 1.8), (20, 1.4)],
            "test_acc": [(0, 0.1), (10, 0.4), (20, 0.55)],
            **percentiles(range(0, 21, 10), 3.0),
        },
        reason="loss became non-finite at step 29",
        diverged_step=29,
        summary={"final_test_loss": 5_436_508_000.0},
    )
    page.goto(f"/#/run/{run_id}")
    expect(page.locator("#run-status")).to_have_text("diverged")
    wait_until(page, "window.bnlab.plotted.loss > 0")
    loss = chart(page, "chart-loss")
    assert loss["scale"] == "log", loss
    labels = loss["yTicks"].split("|")
    assert all(len(label) <= 6 and "," not in label for label in labels), labels
    assert "1e9" in labels or "1e10" in labels, labels
    assert "5.44e9" in page.text_content("#run-outcome")  # not 5,436,508,000
    assert "problem" in page.get_attribute("#run-reason", "class")
    assert int(chart(page, "chart-pct")["points"]) == 9  # 3 percentiles × 3 evaluations

    # Smoothing: a modest default, applied to the batch curves only, kept across reloads.
    slider = page.locator("#view-run input.smoothing-input")
    assert float(slider.input_value()) == 0.6
    assert "train (batch), EMA 0.60" in chart(page, "chart-loss")["legend"]
    slider.fill("0")
    # The chart redraws on the next frame after the input event.
    legend = "document.getElementById('chart-loss').dataset.legend"
    wait_until(page, f"{legend} === 'test|train (batch)'")
    slider.fill("0.9")
    assert page.evaluate("localStorage.getItem('bnlab.smoothing')") == "0.9"
    page.reload()
    wait_until(page, "window.bnlab.plotted.loss > 0")
    assert float(page.locator("#view-run input.smoothing-input").input_value()) == 0.9
    assert "EMA 0.90" in chart(page, "chart-loss")["legend"]
    slider = page.locator("#view-run input.smoothing-input")
    slider.fill("0.6")
    shot(page, artifacts_dir, "diverged")
    assert page.console_errors == [], page.console_errors


def test_failed_and_unknown_runs_say_why(page, seed, artifacts_dir: Path) -> None:  # noqa: ANN001
    reason = "trainer exited with code 1: RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    run_id = seed.run({**SEEDED_SPEC, "name": "broken"}, "failed", {}, reason=reason)
    page.goto(f"/#/run/{run_id}")
    expect(page.locator("#run-status")).to_have_text("failed")
    wait_until(page, "document.getElementById('chart-acc').dataset.message !== undefined")
    for canvas in ("chart-acc", "chart-loss", "chart-pct"):
        message = chart(page, canvas)["message"]
        assert message.startswith("failed: no ") and reason in message, message
    assert page.text_content("#run-reason") == reason
    shot(page, artifacts_dir, "failed")

    page.goto("/#/run/00000000-0000-4000-8000-000000000000")
    expect(page.locator("#run-title")).to_have_text("Run not found")
    # The title comes from the run's 404, the charts' message from their own request's: the
    # charts may still say "loading…" when the title has changed.
    wait_until(page, "document.getElementById('chart-acc').dataset.message === 'no such run'")
    assert page.locator("#banner").is_visible()
    errors = [e for e in page.console_errors if NOT_FOUND_LOG not in e]
    assert errors == [], errors


@pytest.fixture(scope="module")
def sweep(seed) -> tuple[str, list[str]]:  # noqa: ANN001
    """Two arms (batch norm learns faster) × three seeds, under a long sweep name."""

    def metrics_of(spec: dict) -> dict[str, list]:
        bn, s = spec["model"]["norm"] == "batchnorm", spec["seed"]
        return {
            "test_acc": curve(0.1, (0.92 if bn else 0.7) + 0.02 * s, EVALS, 0.02, s),
            "train_acc": curve(0.1, 0.9 if bn else 0.7, TRAIN_STEPS, 0.08, s),
            "train_loss": curve(2.3, 0.3 if bn else 0.9, TRAIN_STEPS, 0.4, s),
            "test_loss": curve(2.3, 0.35 if bn else 0.95, EVALS, 0.02, s),
            **percentiles(EVALS, 0.2 if bn else 2.0),
        }

    base = {**SEEDED_SPEC, "name": "a-rather-long-sweep-name-for-the-layout"}
    grid = {"model.norm": ["batchnorm", "none"], "seed": [0, 1, 2]}
    return seed.sweep("layout-sweep", base, grid, metrics_of)


def test_sweep_page_arm_bands(page, sweep, artifacts_dir: Path) -> None:  # noqa: ANN001
    sweep_id, run_ids = sweep
    page.goto(f"/#/sweep/{sweep_id}")
    expect(page.locator("#sweep-title")).to_have_text("layout-sweep")
    arms = page.locator("#sweep-arms tbody tr")
    expect(arms).to_have_count(2)
    assert [row.locator("td").nth(1).text_content() for row in arms.all()] == ["3", "3"]
    wait_until(page, "window.bnlab.plotted.sweepAcc > 0")
    acc = chart(page, "sweep-chart-acc")
    # Two mean curves (one per arm, 5 evaluations each), each with its shaded 95 % CI.
    assert int(acc["points"]) == 2 * 5 and int(acc["bands"]) == 2 * 5, acc
    assert acc["legend"].count("(n=3)") == 2, acc
    assert int(chart(page, "sweep-chart-loss")["bands"]) > 0
    # The runs' names keep the part that tells them apart: every seed is visible.
    names = [c.text_content() for c in page.locator("#sweep-runs td.name a").all()]
    assert len(set(names)) == 6 and all("seed=" in n for n in names), names
    seeds = [c.text_content() for c in page.locator("#sweep-runs tbody td:nth-child(2)").all()]
    assert sorted(seeds) == ["0", "0", "1", "1", "2", "2"]
    shot(page, artifacts_dir, "sweep")
    assert page.console_errors == [], page.console_errors


def test_sweep_list_shows_each_sweep_with_its_grid_and_counts(page, sweep) -> None:  # noqa: ANN001
    sweep_id, _ = sweep
    page.goto("/#/sweeps")
    row = page.locator(f"#sweeps-table tr[data-sweep-id='{sweep_id}']")
    expect(row).to_be_visible()
    assert row.locator("a").text_content() == "layout-sweep"
    assert "model.norm ∈ {batchnorm, none} × seed ∈ {0, 1, 2}" in row.text_content()
    assert "6 succeeded" in row.text_content()
    row.locator("a").click()
    expect(page).to_have_url(re.compile(f"#/sweep/{sweep_id}$"))
    assert page.console_errors == [], page.console_errors


def test_compare_sweep_runs_fit_their_card(page, sweep, artifacts_dir: Path) -> None:  # noqa: ANN001
    _, run_ids = sweep
    page.goto(f"/#/compare?runs={','.join(run_ids)}")
    expect(page.locator("#speedup-table tbody tr")).to_have_count(6)
    # The picker shows each run's distinguishing part and seed, not six identical prefixes.
    picks = [p.text_content() for p in page.locator("#compare-picker .pick-name").all()]
    picked = [p for p in picks if "a-rather-long-sweep-name" in p]
    assert len(picked) == 6 and len(set(picked)) == 6, picks
    wait_until(page, "window.bnlab.plotted.compareAcc > 0")
    assert int(chart(page, "compare-chart-acc")["bands"]) == 2 * 5
    expect(page.locator("#arms-table tbody tr")).to_have_count(2)
    wait_until(page, "document.getElementById('compare-plot').naturalWidth > 0", timeout_s=60)
    assert_no_horizontal_overflow(page)
    shot(page, artifacts_dir, "compare-sweep")
    assert page.console_errors == [], page.console_errors


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_offline(page, live_server: str, path: str, artifacts_dir: Path) -> None:  # noqa: ANN001
    """Swagger UI and ReDoc render every operation with the internet out of reach."""
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(live_server)
            else route.abort("internetdisconnected")
        ),
    )
    operations = page.request.get(f"{live_server}/openapi.json").json()["paths"]
    page.goto(path)
    if path == "/docs":  # Swagger UI: one block per operation, its summary beside the path
        ops = page.locator(".opblock .opblock-summary-path")
        summary = page.locator(".opblock-summary-description", has_text="Create a sweep")
    else:  # ReDoc: one section per operation, its summary as the heading
        ops = page.locator("[data-section-id^='operation/']")
        summary = page.get_by_role("heading", name="Create a sweep")
    expect(ops.first).to_be_visible(timeout=30_000)
    assert ops.count() == sum(len(methods) for methods in operations.values())
    expect(summary.first).to_be_visible()
    page.screenshot(path=str(artifacts_dir / f"dashboard-docs{path.replace('/', '-')}.png"))
    # Nothing leaves the page: ReDoc's side menu asks for a logo on its CDN, and the page's
    # Content-Security-Policy refuses it before it is sent (Chromium still reports the attempt).
    refused = [e for e in page.console_errors if "violates the following Content Security" in e]
    unrefused = [url for url in page.foreign_requests if not any(url in e for e in refused)]
    assert unrefused == [], unrefused
    errors = [e for e in page.console_errors if e not in refused]
    assert errors == [], errors
