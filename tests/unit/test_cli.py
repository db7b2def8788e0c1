"""The bnlab command with typer's CliRunner: help texts, local spec validation, clear errors,
and the client commands against the real app in-process (a recording executor; the tests play
the worker through the store)."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from service import cli
from service.client import BnlabClient

runner = CliRunner()
WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}

COMMANDS = [
    "serve",
    "worker",
    "migrate",
    "hash-key",
    "submit",
    "sweep",
    "runs",
    "show",
    "watch",
    "cancel",
    "delete",
    "compare",
]


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env=WIDE)


# ----------------------------------------------------------------------------- no server


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_mentions_an_example(command: str | None) -> None:
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "Examples" in result.output
    assert "bnlab " in result.output.split("Examples", 1)[1]


def test_hash_key_prints_the_sha256() -> None:
    result = invoke("hash-key", "s3cret")
    assert result.exit_code == 0
    assert result.stdout.strip() == hashlib.sha256(b"s3cret").hexdigest()


def test_submit_invalid_flag_value_names_the_field_and_sends_nothing(monkeypatch) -> None:
    monkeypatch.setattr(cli, "make_client", lambda *a: pytest.fail("no HTTP for a bad spec"))
    result = invoke("submit", "--dataset", "digits", "--lr", "1000")
    assert result.exit_code == 2
    assert "optimizer.lr" in result.stderr and "100" in result.stderr
    assert "Traceback" not in result.output


def test_submit_bad_hidden_and_bad_file(tmp_path) -> None:
    result = invoke("submit", "--hidden", "100,abc")
    assert result.exit_code == 2 and "--hidden" in result.stderr
    bad = tmp_path / "spec.toml"
    bad.write_text("x = 1")
    result = invoke("submit", str(bad))
    assert result.exit_code == 2 and ".json, .yaml or .yml" in result.stderr


def test_unreachable_server_is_a_clear_error() -> None:
    result = invoke("--server", "http://127.0.0.1:1", "runs")
    assert result.exit_code == 1
    assert "cannot reach bnlab at http://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.output


def test_worker_needs_a_broker(monkeypatch) -> None:
    from service.settings import Settings

    monkeypatch.setattr("service.settings.get_settings", lambda: Settings(_env_file=None))
    monkeypatch.delenv("BNLAB_BROKER_URL", raising=False)
    result = invoke("worker")
    assert result.exit_code == 1 and "BNLAB_BROKER_URL is not set" in result.stderr


def test_worker_execs_celery_by_module_name(monkeypatch) -> None:
    from service.settings import Settings

    settings = Settings(_env_file=None, broker_url="redis://:pw@127.0.0.1:6379/0")
    monkeypatch.setattr("service.settings.get_settings", lambda: settings)
    executed: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execvp", lambda file, argv: executed.append(argv))
    result = invoke("worker", "--queue", "gpu", "--concurrency", "2")
    assert result.exit_code == 0, result.output
    argv = executed[0]
    assert argv[1:6] == ["-m", "celery", "-A", "workers.celery_app", "worker"]
    assert argv[6:8] == ["--pool", "prefork"] and "--concurrency" in argv and "2" in argv
    assert argv[-2:] == ["--queues", "gpu"]
    assert "pw" not in result.output  # the broker password is masked
    executed.clear()
    assert invoke("worker").exit_code == 0
    assert executed[0][-2:] == ["--queues", settings.queue]


def test_parse_grid_values() -> None:
    grid = cli.parse_grid(
        ["model.norm=none,batchnorm", "optimizer.lr=0.1,0.5", "model.hidden=[64],[64,64]"]
    )
    assert grid == {
        "model.norm": ["none", "batchnorm"],
        "optimizer.lr": [0.1, 0.5],
        "model.hidden": [[64], [64, 64]],
    }


def test_sweep_names_the_invalid_combination(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("name: s\ndataset: digits\nsteps: 10\n")
    result = invoke("sweep", str(base), "--grid", "optimizer.lr=0.5,500")
    assert result.exit_code == 2
    assert "optimizer.lr=500" in result.stderr and "optimizer.lr" in result.stderr


# ----------------------------------------------------------------------------- the real app


class RecordingExecutor:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, run_id: str) -> None:
        self.submitted.append(run_id)

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def broker_ok(self) -> bool:
        return True


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
    monkeypatch.setattr(cli, "make_client", lambda server, key: BnlabClient(http=http, api_key=key))
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
    assert listing.exit_code == 0 and run_id in listing.stdout and "from-file" in listing.stdout


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
    assert "speed-up" in result.stdout and "steps to target" in result.stdout
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


def test_arm_statistics_show_bounds_and_intervals() -> None:
    censored = {"mean": 800.0, "ci_low": 700.0, "ci_high": 900.0, "bound": "lower"}
    assert cli.fmt_stat(censored, "{:.0f}") == "≥ 800 [dim]\\[700, 900][/dim]"
    single = {"mean": 2.5, "ci_low": 2.5, "ci_high": 2.5, "bound": "upper"}
    assert cli.fmt_stat(single, "{:.2f}×") == "≤ 2.50×"
    assert cli.fmt_stat({"mean": None}, "{:.2f}") == "–"
