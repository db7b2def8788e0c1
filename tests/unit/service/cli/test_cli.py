"""The bnlab command with typer's CliRunner, no server needed: help texts (at 80 columns too),
local spec validation, clear errors, the server-side commands, and that the client commands
load no server code. The client commands against a server: test_cli_served.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from service import cli
from service.cli import common, server, specs
from service.cli import format as cli_format

runner = CliRunner()
WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}

COMMANDS = [
    "serve",
    "worker",
    "migrate",
    "hash-key",
    "submit",
    "sweep",
    "sweeps",
    "runs",
    "tag",
    "note",
    "show",
    "watch",
    "cancel",
    "delete",
    "compare",
    "reproduce",
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


def test_submit_invalid_flag_value_names_the_field_and_sends_nothing(monkeypatch) -> None:
    monkeypatch.setattr(common, "make_client", lambda *a: pytest.fail("no HTTP for a bad spec"))
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

    monkeypatch.setattr(server, "get_settings", lambda: Settings(_env_file=None))
    monkeypatch.delenv("BNLAB_BROKER_URL", raising=False)
    result = invoke("worker")
    assert result.exit_code == 1 and "BNLAB_BROKER_URL is not set" in result.stderr


def test_worker_execs_celery_by_module_name(monkeypatch) -> None:
    from service.settings import Settings

    settings = Settings(_env_file=None, broker_url="redis://:pw@127.0.0.1:6379/0")
    monkeypatch.setattr(server, "get_settings", lambda: settings)
    executed: list[list[str]] = []
    monkeypatch.setattr(server.os, "execvp", lambda file, argv: executed.append(argv))
    result = invoke("worker", "--queue", "gpu", "--concurrency", "2")
    assert result.exit_code == 0, result.output
    argv = executed[0]
    assert argv[1:6] == ["-m", "celery", "-A", "workers.celery_app", "worker"]
    assert argv[6:8] == ["--pool", "prefork"] and "--concurrency" in argv and "2" in argv
    assert argv[-2:] == ["--queues", "gpu"]
    assert "pw" not in result.output  # the broker password is masked
    executed.clear()
    assert invoke("worker").exit_code == 0
    # No -Q: the worker consumes the queues of the run sizes it can hold (workers/celery_app.py).
    assert "--queues" not in executed[0]

    executed.clear()
    assert invoke("worker", "--name", "gpu-0.a").exit_code == 0
    assert executed[0][-2:] == ["--hostname", "gpu-0.a@%h"]
    for bad in ("gpu@box", "a:b", "-x", "", "x" * 41, "gpu 0"):
        result = invoke("worker", "--name", bad)
        assert result.exit_code == 1 and "invalid worker name" in result.stderr, bad
    assert len(executed) == 1  # no bad name reached Celery


def test_parse_grid_values() -> None:
    grid = specs.parse_grid(
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


def test_arm_statistics_show_bounds_and_intervals() -> None:
    censored = {"mean": 800.0, "ci_low": 700.0, "ci_high": 900.0, "bound": "lower"}
    assert cli_format.fmt_stat(censored, "{:.0f}") == "≥ 800\n[dim]\\[700, 900][/dim]"
    single = {"mean": 2.5, "ci_low": 2.5, "ci_high": 2.5, "bound": "upper"}
    assert cli_format.fmt_stat(single, "{:.2f}×") == "≤ 2.50×"
    assert cli_format.fmt_stat({"mean": None}, "{:.2f}") == "–"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_reads_at_80_columns(command: str | None) -> None:
    args = [command] if command else []
    result = runner.invoke(cli.app, [*args, "--help"], env=WIDE | {"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line.rstrip()) for line in result.output.splitlines()) <= 80


def test_server_option_documents_bnlab_server_and_its_default() -> None:
    text = " ".join(invoke("--help").output.replace("│", " ").split())
    assert "[env var: BNLAB_SERVER]" in text and "[default: http://127.0.0.1:8000]" in text
    assert "bnlab serve" in text.split("--server", 1)[1]  # says which server that is
    reproduce = " ".join(invoke("reproduce", "--help").output.replace("│", " ").split())
    assert "BNLAB_SERVER and the global --server are not used here" in reproduce


def test_submit_help_lists_the_spec_bounds_and_choices() -> None:
    from bncore.spec import MAX_LR, MAX_STEPS

    text = " ".join(invoke("submit", "--help").output.replace("│", " ").split())
    assert f"Learning rate (0 < lr ≤ {MAX_LR:g}; default 0.5)" in text
    assert f"1 ≤ steps ≤ {MAX_STEPS:,}" in text
    assert "one of none, batchnorm, torch_batchnorm" in text


def test_help_paragraphs_are_reflowed() -> None:
    assert common.reflow("One line\n    and more.\n\n    Second\n    paragraph.") == (
        "One line and more.\n\nSecond paragraph."
    )
    compare_help = invoke("compare", "--help").output
    assert "differing only in seed" in compare_help  # one sentence, not cut at the source


def test_client_commands_load_no_server_code() -> None:
    """service.cli and service.client import neither SQLAlchemy, FastAPI nor the store."""
    code = (
        "import sys, service.cli, service.client\n"
        "loaded = [m for m in ('sqlalchemy', 'fastapi', 'service.store', 'service.app', "
        "'alembic', 'uvicorn') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
