"""bnlab's sweep list, sweep watching, tags and notes, run filters and compare's several
targets, against the real app in-process (typer's CliRunner, whose output is not a terminal,
as in a script or CI); tables rendered at 80 columns. Also ``serve``'s startup errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from service import cli
from service.cli import common, server
from service.client import BnlabClient
from service.executor import RecordingExecutor
from service.vocab import short_id

runner = CliRunner()
NARROW = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env=NARROW)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The CLI's client talks to the real app in-process; yields the app."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None, database_url=f"sqlite:///{tmp_path / 'bnlab.db'}", broker_url=None
    )
    app = create_app(settings, executor=RecordingExecutor())
    with TestClient(app) as http:
        monkeypatch.setattr(
            common, "make_client", lambda url, key: BnlabClient(http=http, api_key=key)
        )
        yield app


def finish(app, run_id: str, acc_step: float, outcome: str = "succeeded") -> None:
    """Play the worker: test_acc rising by ``acc_step`` a step through step 20 (still rising:
    not plateaued), then the outcome."""
    from service import store

    points = [("train_loss", s, 1.0 / s) for s in range(1, 21)]
    points += [("test_acc", s, min(1.0, 0.1 + acc_step * s)) for s in range(0, 21)]
    with app.state.session_factory() as session:
        store.claim_run(session, run_id, "w")
        store.add_metrics(session, run_id, points)
        store.finish_run(session, run_id, store.RunStatus(outcome), f"trainer {outcome}")


def assert_fits(output: str, width: int = 80) -> None:
    too_long = [line for line in output.splitlines() if len(line.rstrip()) > width]
    assert not too_long, too_long


def row_of(output: str, full_id: str) -> list[str]:
    (line,) = [line for line in output.splitlines() if line.startswith(short_id(full_id))]
    return line.split()


def make_sweep(tmp_path, name: str, *grid: str) -> str:
    """``bnlab sweep`` as the README runs it: its stdout is the sweep id and nothing else."""
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"name": "base", "dataset": "digits", "steps": 20}))
    result = invoke("sweep", str(base), "--name", name, *(f"--grid={g}" for g in grid))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1, result.stdout
    assert f"bnlab watch --sweep {short_id(result.stdout.strip())}" in result.stderr
    return result.stdout.strip()


def sweep_runs(app, sweep_id: str) -> dict[tuple[str, int], str]:
    """(norm, seed) → run id."""
    from service import store

    with app.state.session_factory() as session:
        runs = store.sweep_runs(session, sweep_id)
        return {(r.spec["model"]["norm"], r.spec["seed"]): r.id for r in runs}


# ----------------------------------------------------------------------------- sweeps


def test_sweeps_lists_newest_first_with_counts_at_80_columns(served, tmp_path) -> None:
    older = make_sweep(tmp_path, "an-older-sweep-with-a-rather-long-name", "seed=0,1,2")
    newer = make_sweep(tmp_path, "bn-vs-none", "model.norm=none,batchnorm", "seed=0,1")
    finish(served, sweep_runs(served, older)[("batchnorm", 0)], 0.04)
    finish(served, sweep_runs(served, older)[("batchnorm", 1)], 0.04, "diverged")

    result = invoke("sweeps")
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("2 sweep(s)") and lines[1].split()[:3] == ["id", "name", "created"]
    order = [n for n, line in enumerate(lines) if line[:8] in (short_id(older), short_id(newer))]
    assert [lines[n][:8] for n in order] == [short_id(newer), short_id(older)]
    assert row_of(result.stdout, newer)[1] == "bn-vs-none"
    assert row_of(result.stdout, newer)[-3:] == ["4", "queued", "4"]
    older_text = " ".join(lines[order[1] :])
    for counted in ("queued 1", "succeeded 1", "diverged 1"):
        assert counted in older_text

    limited = invoke("sweeps", "--limit", "1")
    assert short_id(newer) in limited.stdout and short_id(older) not in limited.stdout


def test_watch_sweep_follows_every_run_and_exits_0_only_if_all_succeeded(served, tmp_path) -> None:
    good = make_sweep(tmp_path, "good", "seed=0,1")
    for run_id in sweep_runs(served, good).values():
        finish(served, run_id, 0.04)
    result = invoke("watch", "--sweep", short_id(good))
    assert result.exit_code == 0, result.output
    assert "2/2" in result.stdout and "succeeded 2" in result.stdout
    assert f"bnlab compare --sweep {short_id(good)}" in result.stdout

    mixed = make_sweep(tmp_path, "mixed", "seed=0,1,2")
    outcomes = iter(("succeeded", "diverged", "cancelled"))
    for run_id in sweep_runs(served, mixed).values():
        finish(served, run_id, 0.04, next(outcomes))
    result = invoke("watch", "--sweep", mixed)
    assert result.exit_code == 1
    assert "2 of 3 run(s) did not succeed" in result.stderr
    assert "diverged 1" in result.stderr and "cancelled 1" in result.stderr


def test_watch_takes_a_run_or_a_sweep(served) -> None:
    for args in ((), ("0d3e77c4", "--sweep", "0d3e77c4")):
        result = invoke("watch", *args)
        assert result.exit_code == 2 and "run id or --sweep" in result.stderr
    missing = invoke("watch", "--sweep", "abcdef12")
    assert missing.exit_code == 1 and "no sweep id starts with 'abcdef12'" in missing.stderr


# ----------------------------------------------------------------------------- tags, notes


def submit(*args: str) -> str:
    result = invoke("submit", "--dataset", "digits", "--steps", "20", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_tag_and_note_show_up_in_show_and_runs(served) -> None:
    run_id = submit("--name", "bn-run", "--norm", "batchnorm")
    added = invoke("tag", short_id(run_id), "paper", "fig1")
    assert added.exit_code == 0, added.output
    assert "paper fig1" in added.stdout
    removed = invoke("tag", short_id(run_id), "fig1", "--remove")
    assert removed.exit_code == 0 and removed.stdout.rstrip().endswith("paper")
    noted = invoke("note", short_id(run_id), "lr too high for the baseline")
    assert noted.exit_code == 0 and "note saved" in noted.stdout

    shown = invoke("show", short_id(run_id))
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines() if line}
    assert rows["tags"] == ["paper"]
    assert rows["note"] == ["lr", "too", "high", "for", "the", "baseline"]
    listed = invoke("runs")
    assert "#paper" in listed.stdout

    assert invoke("note", short_id(run_id), "").stdout.strip().endswith("note removed")
    assert "note" not in {line.split()[0] for line in invoke("show", run_id).stdout.splitlines()}
    bad = invoke("tag", short_id(run_id), "two words")
    assert bad.exit_code == 2 and "tags" in bad.stderr


def test_runs_filters_by_spec_tags_and_text_at_80_columns(served) -> None:
    bn = submit("--name", "a-long-batchnorm-run-name-for-lr-0.5", "--norm", "batchnorm",
                "--seed", "3", "--lr", "0.25")  # fmt: skip
    plain = submit("--name", "plain", "--norm", "none", "--seed", "3")
    other = submit("--name", "other", "--norm", "none", "--seed", "4")
    invoke("tag", bn, "paper")
    invoke("tag", plain, "paper", "baseline")
    invoke("note", other, "Diverged once; rerun")

    def listed(*args: str) -> set[str]:
        result = invoke("runs", *args)
        assert result.exit_code == 0, result.output
        assert_fits(result.stdout)
        return {i for i in (bn, plain, other) if short_id(i) in result.stdout}

    assert listed("--norm", "none") == {plain, other}
    assert listed("--seed", "3", "--dataset", "digits") == {bn, plain}
    assert listed("--lr", "0.25", "--arch", "mlp") == {bn}
    assert listed("--activation", "sigmoid", "--optimizer", "sgd", "--batch-size", "60") == {
        bn,
        plain,
        other,
    }
    assert listed("--batch-size", "61") == set()
    assert listed("--tag", "paper") == {bn, plain}
    assert listed("--tag", "paper", "--tag", "baseline") == {plain}
    assert listed("--search", "RERUN") == {other}
    titled = invoke("runs", "--norm", "none", "--tag", "baseline")
    assert titled.stdout.splitlines()[0].strip() == "1 run(s) with norm=none tag=baseline"
    row = row_of(titled.stdout, plain)
    assert row[1:4] == ["plain", "3", "queued"]
    empty = invoke("runs", "--seed", "99")
    assert empty.exit_code == 0 and empty.stdout.strip() == "no runs with seed=99"
    bad = invoke("runs", "--norm", "groupnorm")
    assert bad.exit_code == 2 and "norm" in bad.stderr


# ----------------------------------------------------------------------------- compare


def test_compare_several_targets_prints_labels_and_a_table_at_80_columns(served, tmp_path) -> None:
    sweep_id = make_sweep(tmp_path, "bn-vs-none", "model.norm=none,batchnorm", "seed=0,1")
    for (norm, seed), run_id in sweep_runs(served, sweep_id).items():
        finish(served, run_id, (0.08 if norm == "batchnorm" else 0.02) + 0.005 * seed)

    result = invoke(
        "compare", "--sweep", short_id(sweep_id), "--target", "0.3,0.35", "--fractions", "1,0.9"
    )
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    text = " ".join(result.stdout.split())
    answer = served_comparison(served, sweep_id, "0.3,0.35", "1,0.9")
    for number, target in enumerate(answer["targets"], 1):
        assert f"target {number}" in text and " ".join(target["label"].split()) in text
    table = result.stdout.split("steps to each target (mean over seeds)")[1]
    rows = [line.split() for line in table.splitlines() if "norm=" in line]
    assert len(rows) == 4 * 2  # a row per target and arm
    assert rows[0][:3] == ["1", "0.3000", "norm=none"] and rows[0][-1] == "1.00×"
    assert rows[1][0] == "norm=batchnorm" and rows[1][-1].endswith("×")
    assert "the baseline had not plateaued" in " ".join(result.stderr.split())

    repeated = invoke("compare", "--sweep", sweep_id, "--target", "0.3", "--target", "0.35")
    assert repeated.exit_code == 0 and "target 2" in repeated.stdout
    assert "target 3" not in repeated.stdout


def served_comparison(app, sweep_id: str, target: str, fractions: str) -> dict:
    """The API's own answer, for the labels the CLI must print verbatim."""
    from fastapi.testclient import TestClient

    params = {"sweep": sweep_id, "target": target, "target_fractions": fractions}
    return TestClient(app).get("/api/v1/compare", params=params).json()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--fractions", "1,1.5"), "--fractions: 1.5 is not in (0, 1]"),
        (("--target", "0.9,high"), "--target: expected numbers"),
        (("--target", "nan"), "--target: numbers must be finite"),
    ],
)
def test_compare_checks_targets_before_asking(monkeypatch, args, message) -> None:
    monkeypatch.setattr(common, "make_client", lambda *a: pytest.fail("no HTTP for bad input"))
    result = invoke("compare", "--sweep", "0d3e77c4", *args)
    assert result.exit_code == 2 and message in result.stderr


# ----------------------------------------------------------------------------- serve


def test_serve_does_not_migrate_and_names_an_unusable_database(tmp_path, monkeypatch) -> None:
    from service.settings import Settings

    monkeypatch.setattr(server, "upgrade_database", lambda url: pytest.fail("serve migrated"))
    bad = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/missing/dir/bn.db")
    monkeypatch.setattr(server, "get_settings", lambda: bad)
    result = invoke("serve")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot open the database sqlite:///" in result.stderr

    import uvicorn

    def startup_failed(*args, **kwargs):
        raise SystemExit(server.UVICORN_STARTUP_FAILED)  # what uvicorn does then

    good = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/bn.db")
    monkeypatch.setattr(server, "get_settings", lambda: good)
    monkeypatch.setattr(uvicorn, "run", startup_failed)
    result = invoke("serve")
    assert result.exit_code == 1
    assert "the app's startup failed" in result.stderr and "bnlab migrate" in result.stderr
    assert "migrated by the app as it starts" in result.stdout
