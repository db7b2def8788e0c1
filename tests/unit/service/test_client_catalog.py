"""service.client against the real app in-process: listing sweeps (pages, short ids), run
filters (spec fields, tags, text), tags and notes (PATCH), and compare's several targets."""

from __future__ import annotations

import pytest

from service.client import BnlabClient, BnlabError
from service.executor import RecordingExecutor

SPEC = {
    "name": "tiny",
    "dataset": "digits",
    "model": {"hidden": [8], "norm": "batchnorm"},
    "steps": 25,
    "eval_every": 5,
    "batch_size": 32,
    "device": "cpu",
}


@pytest.fixture
def api(tmp_path):
    """(BnlabClient on the in-process app, the app)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None, database_url=f"sqlite:///{tmp_path / 'bnlab.db'}", broker_url=None
    )
    app = create_app(settings, executor=RecordingExecutor())
    with TestClient(app) as http:
        yield BnlabClient(http=http), app


def play_worker(app, run_id: str, reach: float) -> None:
    """Metrics for 25 steps (test_acc rising by ``reach`` per evaluation), then succeeded."""
    from service import store

    points = [("train_loss", s, 2.0 / (s + 1)) for s in range(1, 26)]
    points += [("test_acc", s, min(1.0, 0.1 + reach * s / 5)) for s in range(0, 26, 5)]
    with app.state.session_factory() as session:
        store.claim_run(session, run_id, "test-worker")
        store.add_metrics(session, run_id, points)
        store.finish_run(session, run_id, store.RunStatus.succeeded, "trainer succeeded")


def test_list_sweeps_newest_first_over_pages_with_counts(api) -> None:
    client, app = api
    made = [client.sweep(f"s{i}", SPEC, {"seed": [0, 1]}) for i in range(3)]
    play_worker(app, made[0]["runs"][0]["id"], 0.1)

    listed = list(client.iter_sweeps(page_size=1))  # three pages of one
    assert [s["id"] for s in listed] == [s["id"] for s in reversed(made)]
    oldest = listed[-1]
    assert oldest["run_count"] == 2 and oldest["counts"] == {"queued": 1, "succeeded": 1}
    assert [s["name"] for s in client.list_sweeps(limit=2)] == ["s2", "s1"]


def test_resolve_sweep_id_takes_unique_prefixes(api) -> None:
    client, _ = api
    ids = [client.sweep(f"s{i}", SPEC, {"seed": [0]})["id"] for i in range(17)]
    for sweep_id in ids:
        assert client.resolve_sweep_id(sweep_id[:8].upper()) == sweep_id
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    with pytest.raises(BnlabError, match=f"several sweeps start with '{shared}'") as caught:
        client.resolve_sweep_id(shared)
    assert caught.value.status == 400
    unused = next(p for p in ("0000", "1111", "2222") if not any(i.startswith(p) for i in ids))
    with pytest.raises(BnlabError, match="no sweep id starts with") as caught:
        client.resolve_sweep_id(unused)
    assert caught.value.status == 404
    with pytest.raises(BnlabError, match="is not a sweep id"):
        client.resolve_sweep_id("bn-vs-none")


def test_update_run_sets_and_clears_tags_and_note(api) -> None:
    client, _ = api
    run = client.submit(SPEC, tags=["first"])
    assert run["tags"] == ["first"]
    updated = client.update_run(run["id"], tags=["baseline", "fig1"], note="lr sweep")
    assert updated["tags"] == ["baseline", "fig1"] and updated["note"] == "lr sweep"
    kept = client.update_run(run["id"], note="")  # tags left out: kept
    assert kept["tags"] == ["baseline", "fig1"] and not kept["note"]
    assert client.update_run(run["id"], tags=[])["tags"] == []
    with pytest.raises(BnlabError) as caught:
        client.update_run(run["id"], tags=["no spaces"])
    assert caught.value.status == 422


def test_list_runs_filters_by_spec_tags_and_text(api) -> None:
    client, _ = api
    bn = client.submit(
        SPEC | {"name": "bn-a", "seed": 1, "optimizer": {"lr": 0.25}}, tags=["paper"]
    )
    none = client.submit(SPEC | {"name": "plain", "model": {"norm": "none"}}, tags=["paper"])
    client.update_run(none["id"], note="the baseline")

    def ids(**filters) -> set[str]:
        return {r["id"] for r in client.list_runs(**filters)}

    assert ids(norm="none") == {none["id"]}
    assert ids(seed=1, dataset="digits") == {bn["id"]}
    assert ids(tags=["paper"]) == {bn["id"], none["id"]}
    assert ids(tags=["paper", "other"]) == set()
    assert ids(q="BASELINE") == {none["id"]} and ids(q="bn-") == {bn["id"]}
    assert ids(lr=0.25) == {bn["id"]}
    with pytest.raises(TypeError, match="unknown run filter"):
        client.list_runs(colour="red")


def test_compare_with_several_targets_and_fractions(api) -> None:
    client, app = api
    sweep = client.sweep("bn-vs-none", SPEC, {"model.norm": ["none", "batchnorm"]})
    for run in sweep["runs"]:
        play_worker(app, run["id"], 0.4 if run["spec"]["model"]["norm"] == "batchnorm" else 0.1)

    given = client.compare(sweep=sweep["id"], target=[0.3, 0.5])
    assert [t["value"] for t in given["targets"]] == [0.3, 0.5]
    assert given["target_label"].startswith("0.3")
    assert all(len(r["targets"]) == 2 for r in given["runs"] + given["arms"])

    by_fraction = client.compare(sweep=sweep["id"], target=0.2, target_fractions=[1, 0.5])
    assert [t["source"] for t in by_fraction["targets"]] == ["given", "baseline", "baseline"]
    best = by_fraction["baseline_best"]["value"]
    assert [t["value"] for t in by_fraction["targets"][1:]] == pytest.approx([best, best / 2])
    with pytest.raises(BnlabError) as caught:
        client.compare(sweep=sweep["id"], target_fractions=[1.5])
    assert caught.value.status == 422 and "target_fractions" in str(caught.value)
