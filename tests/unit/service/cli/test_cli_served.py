"""bnlab's client commands against the real app in-process (typer's CliRunner, a recording
executor; the tests play the worker through the store): submit, runs, show, watch, cancel,
delete and compare, their tables at 80 columns, short id prefixes, and the server's errors."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from service import cli
from service.cli import common
from service.client import BnlabClient
from service.executor import RecordingExecutor
from service.vocab import short_id

runner = CliRunner()
WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
NARROW = WIDE | {"COLUMNS": "80"}


def invoke(*args: str, env: dict[str, str] = WIDE):
    return runner.invoke(cli.app, list(args), env=env)


def serve_in_process(tmp_path, monkeypatch, **settings_values):
    """Point the CLI's client at the real app in-process; a context manager yielding the app."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'bnlab.db'}",
        broker_url=None,
        **settings_values,
    )
    app = create_app(settings, executor=RecordingExecutor())
    http = TestClient(app)
    monkeypatch.setattr(common, "make_client", lambda url, key: BnlabClient(http=http, api_key=key))
    return http, app


@pytest.fixture
def served(tmp_path, monkeypatch):
    http, app = serve_in_process(tmp_path, monkeypatch)
    with http:
        yield app


def test_api_key_option_is_sent(tmp_path, monkeypatch) -> None:
    http, _ = serve_in_process(
        tmp_path, monkeypatch, api_key_hashes=[hashlib.sha256(b"k3y").hexdigest()]
    )
    with http:
        refused = invoke("submit", "--dataset", "digits")
        assert refused.exit_code == 1 and "401" in refused.stderr
        assert invoke("--api-key", "k3y", "submit", "--dataset", "digits").exit_code == 0
        assert invoke("runs").exit_code == 0  # reads stay open without auth_reads


def finish(app, run_id: str, acc_step: float, outcome: str = "succeeded", **extra) -> None:
    """Play the worker: metrics through step 20, then the outcome."""
    from service import store

    points = [("train_loss", s, 1.0 / s) for s in range(1, 21)]
    points += [("test_acc", s, min(1.0, 0.1 + acc_step * s)) for s in range(0, 21, 5)]
    with app.state.session_factory() as session:
        store.claim_run(session, run_id, "w")
        store.add_metrics(session, run_id, points)
        store.finish_run(session, run_id, store.RunStatus(outcome), f"trainer {outcome}", **extra)


def test_submit_flags_override_the_file(served, tmp_path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"name": "from-file", "dataset": "digits", "steps": 50}))
    result = invoke(
        "submit", str(spec_file), "--hidden", "16,8", "--norm", "none", "--lr", "0.1",
        "--momentum", "0.9", "--seed", "7", "--eval-every", "10",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    shown = invoke("show", run_id, "--json")
    spec = json.loads(shown.stdout)["spec"]
    assert spec["name"] == "from-file" and spec["dataset"] == "digits" and spec["steps"] == 50
    assert spec["model"]["hidden"] == [16, 8] and spec["model"]["norm"] == "none"
    assert spec["optimizer"] == spec["optimizer"] | {"lr": 0.1, "momentum": 0.9}
    assert (spec["seed"], spec["eval_every"]) == (7, 10)

    listing = invoke("runs", "--status", "queued")
    assert listing.exit_code == 0 and short_id(run_id) in listing.stdout
    assert "from-file" in listing.stdout


def test_watch_exit_codes_follow_the_outcome(served) -> None:
    ok = invoke("submit", "--dataset", "digits", "--steps", "20").stdout.strip()
    bad = invoke("submit", "--dataset", "digits", "--steps", "20").stdout.strip()
    finish(served, ok, 0.04, summary={"best_test_acc": 0.9, "final_test_acc": 0.9})
    finish(served, bad, 0.01, "diverged", diverged_step=17)

    result = invoke("watch", ok)
    assert result.exit_code == 0 and "succeeded" in result.stdout
    result = invoke("watch", bad)
    assert result.exit_code == 1
    assert "diverged at step 17" in result.stderr

    shown = invoke("show", ok)
    assert shown.exit_code == 0
    assert "best_test_acc" in shown.stdout and "train_loss" in shown.stdout


def test_compare_prints_speedups_and_saves_csv(served, tmp_path) -> None:
    none_run = invoke("submit", "--dataset", "digits", "--norm", "none", "--steps", "20")
    bn_run = invoke("submit", "--dataset", "digits", "--norm", "batchnorm", "--steps", "20")
    none_id, bn_id = none_run.stdout.strip(), bn_run.stdout.strip()
    finish(served, none_id, 0.02)
    finish(served, bn_id, 0.08)
    csv_path = tmp_path / "out.csv"

    result = invoke("compare", none_id, bn_id, "--csv", str(csv_path))
    assert result.exit_code == 0, result.output
    assert "speed-up" in result.stdout and "steps to" in result.stdout
    assert "norm=batchnorm" in result.stdout and "(baseline)" in result.stdout
    assert csv_path.read_text().startswith("row_type,")

    as_json = invoke("compare", none_id, bn_id, "--json")
    assert json.loads(as_json.stdout)["baseline_id"] == none_id


def test_cancel_and_delete(served) -> None:
    run_id = invoke("submit", "--dataset", "digits").stdout.strip()
    assert invoke("delete", run_id).exit_code == 1  # queued: 409
    result = invoke("cancel", run_id)
    assert result.exit_code == 0 and "cancelled" in result.stdout
    assert invoke("delete", run_id).exit_code == 0
    missing = invoke("show", run_id)
    assert missing.exit_code == 1 and "404" in missing.stderr


# ----------------------------------------------------------------------------- 80 columns


def row_of(output: str, run_id: str) -> list[str]:
    """The cells of the table line that starts with the run's short id (whitespace-split)."""
    (line,) = [line for line in output.splitlines() if line.startswith(short_id(run_id))]
    return line.split()


def cell_text(output: str, run_id: str, column: str) -> str:
    """A cell's whole text: its pieces on the run's line and the continuation lines below."""
    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("id "))
    start = header.index(column)
    end = start + len(column)
    while end < len(header) and header[end] == " ":
        end += 1  # up to the next column's header (left-aligned ones start there)
    first = next(n for n, line in enumerate(lines) if line.startswith(short_id(run_id)))
    pieces = [lines[first][start:end].strip()]
    for line in lines[first + 1 :]:
        if line[:start].strip():  # the next row
            break
        pieces.append(line[start:end].strip())
    return "".join(pieces)


def assert_fits(output: str, width: int = 80) -> None:
    too_long = [line for line in output.splitlines() if len(line.rstrip()) > width]
    assert not too_long, too_long


def submit(*args: str) -> str:
    result = invoke("submit", "--dataset", "digits", "--steps", "20", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_runs_at_80_columns_show_short_id_seed_status_and_step(served) -> None:
    long_name = "a-long-sweep-run-name-batchnorm-lr-0.5"
    ids = [submit("--name", long_name, "--seed", str(seed)) for seed in (7, 12)]
    finish(served, ids[1], 0.04, summary={"best_test_acc": 0.9})

    result = invoke("runs", env=NARROW)
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    header = result.stdout.splitlines()[1].split()
    assert header[:6] == ["id", "name", "seed", "status", "step", "best"]
    queued, finished = row_of(result.stdout, ids[0]), row_of(result.stdout, ids[1])
    assert queued[2:5] == ["7", "queued", "0/20"]
    assert finished[2:6] == ["12", "succeeded", "20/20", "0.9000"]
    assert cell_text(result.stdout, ids[0], "name") == long_name  # wrapped, not cut


def test_compare_at_80_columns_keeps_id_arm_status_and_speedup(served) -> None:
    runs = {}
    for norm, reach in (("none", (0.02, 0.025)), ("batchnorm", (0.08, 0.06))):
        for seed, acc_step in enumerate(reach):
            run_id = submit("--norm", norm, "--seed", str(seed), "--name", f"long-name-{norm}")
            finish(served, run_id, acc_step)
            runs[(norm, seed)] = run_id

    result = invoke("compare", *(short_id(i) for i in runs.values()), env=NARROW)
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    assert "the lowest of the 2 baseline seeds' best test_acc" in " ".join(result.stdout.split())
    for (norm, seed), run_id in runs.items():
        cells = row_of(result.stdout, run_id)
        assert cells[1:4] == [f"norm={norm}", str(seed), "succeeded"], cells
        assert cells[-1].endswith("×"), cells  # the speed-up, whole
    baseline = row_of(result.stdout, runs[("none", 0)])
    assert baseline[-1] == "1.00×"
    arms = result.stdout.split("arms (mean, 95% CI over seeds)")[1]
    assert "norm=batchnorm" in arms and "\\[" not in arms
    assert any(line.strip().startswith("[") for line in arms.splitlines())  # a CI line


def test_show_at_80_columns_lists_the_spec_with_its_seed(served) -> None:
    run_id = submit("--seed", "5", "--hidden", "64,32")
    result = invoke("show", short_id(run_id), env=NARROW)
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    assert rows["id"] == [run_id] and rows["seed"] == ["5"]
    assert rows["model"][:2] == ["mlp", "[64x32]"] and rows["status"][0] == "queued"


def test_watch_at_80_columns_keeps_the_step_counter() -> None:
    from rich.console import Console

    from service.cli.format import NotedProgress, format_metrics

    screen = Console(width=80, record=True, color_system=None)
    progress = NotedProgress(screen)
    metrics = {"train_loss": 0.1234, "train_acc": 0.9, "test_loss": 0.3, "test_acc": 0.91}
    note = "running  " + format_metrics(metrics)
    progress.add_task("a-very-long-run-name-" * 3, total=20000, completed=12345, note=note)
    screen.print(progress.get_renderable())
    bar_line, note_line = screen.export_text().splitlines()
    assert "12345/20000" in bar_line and "a-very-long-run-name-a" in bar_line
    assert note_line.split() == note.split()
    assert_fits(screen.export_text())


def test_watch_of_a_finished_run_names_it_by_short_id(served) -> None:
    run_id = submit()
    finish(served, run_id, 0.04, summary={"best_test_acc": 0.9, "final_test_acc": 0.8})
    result = invoke("watch", short_id(run_id), env=NARROW)
    assert result.exit_code == 0, result.output
    assert f"run {short_id(run_id)} (run) succeeded" in result.stdout
    assert "step None" not in result.stdout


# ----------------------------------------------------------------------------- id prefixes


def test_prefixes_are_accepted_wherever_a_run_id_is(served) -> None:
    first, second = submit(), submit()
    shown = invoke("show", short_id(first), "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["id"] == first
    cancelled = invoke("cancel", first[:6])
    assert cancelled.exit_code == 0 and f"run {short_id(first)}" in cancelled.stdout
    assert invoke("delete", short_id(first)).exit_code == 0
    assert invoke("cancel", second.upper()[:8]).exit_code == 0  # case does not matter
    finish_ids = [submit() for _ in range(2)]
    for run_id in finish_ids:
        finish(served, run_id, 0.04)
    result = invoke("compare", *(i[:8] for i in finish_ids), "--baseline", finish_ids[0][:8])
    assert result.exit_code == 0, result.output


def test_ambiguous_missing_and_malformed_prefixes_are_clear_errors(served) -> None:
    ids = [submit() for _ in range(17)]  # 17 ids, 16 hex digits: two share a first one
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    ambiguous = invoke("show", shared)
    assert ambiguous.exit_code == 2
    assert f"several runs start with '{shared}'" in ambiguous.stderr
    assert sum(i in ambiguous.stderr for i in ids if i.startswith(shared)) >= 2

    unused = next(
        p for p in ("0000", "1111", "2222", "3333") if not any(i.startswith(p) for i in ids)
    )
    missing = invoke("watch", unused)
    assert missing.exit_code == 1 and f"no run id starts with '{unused}'" in missing.stderr
    malformed = invoke("cancel", "not-an-id")
    assert malformed.exit_code == 2 and "is not a run id" in malformed.stderr


# ----------------------------------------------------------------------------- errors


def test_a_422_from_the_server_prints_its_problem_and_exits_2(served) -> None:
    a, b = submit(), submit()
    result = invoke("compare", a, b, "--metric", "test-acc!")
    assert result.exit_code == 2
    assert "Validation failed (422)" in result.stderr and "metric" in result.stderr
    assert "Traceback" not in result.output


def test_compare_checks_its_options_before_asking(served) -> None:
    a, b, c = submit(), submit(), submit()
    outside = invoke("compare", a, b, "--baseline", short_id(c))
    assert outside.exit_code == 2
    assert f"--baseline {short_id(c)} is not one of the compared runs" in outside.stderr
    both = invoke("compare", a, "--sweep", "s")
    assert both.exit_code == 2 and "not both" in both.stderr
    assert invoke("compare", a, b, "--target", "nan").exit_code == 2


def test_the_problem_detail_and_field_errors_are_printed(monkeypatch) -> None:
    """The 422 the server sends for an unknown metric (its shape, as a problem+json body)."""
    import httpx2 as httpx

    problem = {
        "type": "about:blank",
        "title": "Unknown metric",
        "status": 422,
        "detail": "metric 'typo' is not logged by these runs; choose one of test_acc, train_loss",
        "errors": [{"loc": ["query", "metric"], "msg": "not one of test_acc, train_loss"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["metric"] == "typo"
        return httpx.Response(
            422, json=problem, headers={"content-type": "application/problem+json"}
        )

    transport = httpx.MockTransport(handler)
    monkeypatch.setattr(
        common, "make_client", lambda url, key: BnlabClient(url, transport=transport)
    )
    sweep_id = "0d3e77c4-0000-4000-8000-000000000001"  # a whole id: no prefix lookup
    result = invoke("compare", "--sweep", sweep_id, "--metric", "typo")
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    assert "Unknown metric (422): metric 'typo' is not logged by these runs" in text
    assert "metric: not one of test_acc, train_loss" in text
