"""`bnlab reproduce`'s glue to the package: the names the CLI reaches through
``service.reproduce`` (re-exported by its ``__init__``) and what it does with them."""

from __future__ import annotations

import pytest

from service import reproduce as r
from service.reproduce import HOLDS


def test_cli_rejects_an_unknown_experiment() -> None:
    from typer.testing import CliRunner

    from service.cli import app

    result = CliRunner().invoke(app, ["reproduce", "--only", "nope", "--server", "http://x"])
    assert result.exit_code == 2
    assert "unknown experiment" in result.output


def test_cli_runs_the_suite_against_the_given_server(monkeypatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    seen = {}

    def fake_run_suite(client, *, quick, only, out_dir, progress, profile, server_label, reuse):
        seen.update(base_url=client.base_url, quick=quick, only=only, out=out_dir, profile=profile)
        seen.update(reuse=reuse)
        progress(3, 4, "1 running")
        finding = r.Finding(HOLDS, "speed-up 7×", "because", "rule", {})
        item = r.ExperimentResult(
            "faster-training", "1. Faster training", "claim", "Fig. 1a", "s", "id", "", finding, []
        )
        return r.SuiteResult("quick", out_dir, out_dir / "reproduction.md", [item], 60.0, 4, {})

    monkeypatch.setattr(r, "run_suite", fake_run_suite)
    args = ["reproduce", "--quick", "--only", "faster-training", "--server", "http://h:1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == {
        "base_url": "http://h:1",
        "quick": True,
        "only": ["faster-training"],
        "out": tmp_path,
        "profile": "quick",
        "reuse": None,  # no database named: the profile decides (paper only)
    }
    assert "1. Faster training" in result.output and "holds" in result.output


def test_cli_refuses_an_unknown_profile_and_an_experiment_outside_the_profile() -> None:
    from typer.testing import CliRunner

    from service.cli import app

    result = CliRunner().invoke(app, ["reproduce", "--profile", "huge", "--server", "http://x"])
    assert result.exit_code == 2 and "unknown profile 'huge'" in result.output
    quick_names = {e.name for e in r.select_experiments(None, r.PROFILES["quick"])}
    missing = [e.name for e in r.EXPERIMENTS if e.name not in quick_names]
    assert missing, "every experiment runs in quick: nothing to refuse"
    result = CliRunner().invoke(
        app, ["reproduce", "--quick", "--only", missing[0], "--server", "http://x"]
    )
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize(("named", "reuse"), [(True, True), (False, None)])
def test_reproduce_reuses_the_runs_of_a_database_it_was_given(
    monkeypatch, tmp_path, named: bool, reuse: bool | None
) -> None:
    """A named --database outlives the command, so a rerun reuses its finished runs; the
    temporary default leaves the choice to the profile (paper only)."""
    from typer.testing import CliRunner

    from service.cli import EXIT_INTERRUPTED, app

    seen = {}

    def interrupted(client, **kwargs):  # noqa: ANN001, ANN003
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(r, "run_suite", interrupted)
    database = ["--database", str(tmp_path / "kept.db")] if named else []
    result = CliRunner().invoke(app, ["reproduce", "--quick", "--out", str(tmp_path), *database])
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert seen["reuse"] is reuse


@pytest.mark.parametrize("reused", [0, 3])
def test_the_report_says_how_many_runs_were_reused(tmp_path, reused: int) -> None:
    """Reused runs were trained by an earlier invocation: the wall time does not cover them."""
    from datetime import UTC, datetime

    from service.reproduce.report import render

    suite = r.SuiteResult("report", tmp_path, tmp_path / "r.md", [], 60.0, 4, {}, reused=reused)
    intro = render(suite, "a server", datetime(2026, 1, 1, tzinfo=UTC)).split("\n\n")[1]
    assert "4 training runs" in intro
    assert ("3 of them reused" in intro) == bool(reused), intro
