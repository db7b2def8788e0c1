"""store.list_runs filters (spec fields, tags, id prefix, text) and store.list_sweeps pages,
checked against a reference filter in Python on SQLite; the spec columns the filters compare;
pages of runs created in the same instant. tests/integration/test_store_pg.py runs the same
checks on PostgreSQL, where the JSON expressions compile differently."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import store
from service.models import Run, spec_filter_values
from service.vocab import RunStatus

GRID = {
    "norm": ["none", "batchnorm"],
    "lr": [0.1, 0.5],
    "seed": [0, 1],
    "dataset": ["mnist1d", "digits"],
}
NOTES = ["Baseline, 100% sure", "odd_one out", None]


def spec_for(norm: str, lr: float, seed: int, dataset: str) -> JobSpec:
    return JobSpec(
        name=f"r-{norm}-{lr}-{seed}-{dataset}",
        dataset=dataset,
        model={"norm": norm, "activation": "relu" if seed else "sigmoid"},
        optimizer={"name": "adam" if lr == 0.1 else "sgd", "lr": lr},
        batch_size=30 + 30 * seed,
        seed=seed,
    )


def tags_for(index: int, spec: JobSpec) -> list[str]:
    tags = ["all"]
    if spec.seed == 0:
        tags.append("seed0")
    if index % 3 == 0:
        tags.append("third")
    return tags


def seed_runs(session: Session) -> list[Run]:
    """One run per grid combination, with tags and (some) notes; one run of a sweep."""
    runs = []
    for index, values in enumerate(itertools.product(*GRID.values())):
        spec = spec_for(*values)
        run, _ = store.create_run(session, spec, tags=tags_for(index, spec))
        run = store.annotate_run(session, run.id, note=NOTES[index % 3] or "")
        runs.append(run)
    return runs


def matches(run: Run, filters: dict[str, Any]) -> bool:
    """The reference: what each filter means, in Python."""
    spec = run.spec
    fields = {
        "dataset": spec["dataset"],
        "arch": spec["model"]["arch"],
        "activation": spec["model"]["activation"],
        "norm": spec["model"]["norm"],
        "optimizer": spec["optimizer"]["name"],
        "lr": spec["optimizer"]["lr"],
        "batch_size": spec["batch_size"],
        "seed": spec["seed"],
    }
    for field, value in filters.get("spec", {}).items():
        if fields[field] != value:
            return False
    if not set(filters.get("tags", ())) <= set(run.tags):
        return False
    prefix = filters.get("id_prefix")
    if prefix is not None and not run.id.startswith(prefix.lower()):
        return False
    q = filters.get("q")
    text = [run.name.lower(), (run.note or "").lower()]
    return q is None or any(q.lower() in part for part in text)


def all_pages(session: Session, limit: int = 5, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        runs, cursor = store.list_runs(session, limit=limit, cursor=cursor, **filters)
        ids += [run.id for run in runs]
        if cursor is None:
            return ids


def cases(runs: list[Run]) -> list[dict[str, Any]]:
    some = runs[5].id
    return [
        {},
        {"spec": {"norm": "batchnorm"}},
        {"spec": {"norm": "none", "lr": 0.5}},
        {"spec": {"lr": 0.1, "seed": 1, "dataset": "digits"}},
        {"spec": {"activation": "relu", "optimizer": "adam"}},
        {"spec": {"batch_size": 60, "arch": "mlp"}},
        {"spec": {"batch_size": 61}},  # nothing
        {"spec": {"arch": "cnn"}},  # nothing
        {"tags": ["seed0"]},
        {"tags": ["seed0", "third"]},
        {"tags": ["third", "nope"]},  # nothing
        {"tags": ["all"], "spec": {"norm": "none"}},
        {"id_prefix": some[:4]},
        {"id_prefix": some[:8].upper()},
        {"id_prefix": some},
        {"q": "BASELINE"},
        {"q": "100%"},  # a literal percent sign, not a wildcard
        {"q": "_one"},  # a literal underscore
        {"q": "r-none-0.5"},  # part of the name
        {"q": "%"},
    ]


def check_run_filters(session: Session) -> None:
    """On a database that may hold other tests' runs too: only this check's runs are compared."""
    runs = seed_runs(session)
    newest_first = [run.id for run in reversed(runs)]
    mine = set(newest_first)
    for case in cases(runs):
        want = [run_id for run_id in newest_first if matches(store.get_run(session, run_id), case)]
        assert [run_id for run_id in all_pages(session, **case) if run_id in mine] == want, case
    assert all_pages(session, spec={"norm": "batchnorm"}) != []  # the cases are not all empty


def check_same_instant_pages(session: Session) -> None:
    """Runs created in the same instant (a sweep's, a bulk import's) are ordered by id and each
    is on exactly one page, with and without filters (each filter reads its own index)."""
    seed = 4242  # no other check's runs have it
    runs = [
        store.create_run(session, JobSpec(seed=seed, batch_size=30 + i % 2))[0] for i in range(7)
    ]
    moment = runs[0].created_at
    ids = [run.id for run in runs]
    session.execute(update(Run).where(Run.id.in_(ids)).values(created_at=moment))
    session.execute(
        update(Run).where(Run.id.in_(ids[::2])).values(status=RunStatus.succeeded.value)
    )
    session.commit()
    newest_first = sorted(ids, reverse=True)  # one created_at: the id decides
    assert all_pages(session, limit=2, spec={"seed": seed}) == newest_first
    odd = [run_id for run_id in newest_first if run_id in set(ids[1::2])]
    assert all_pages(session, limit=2, spec={"seed": seed, "batch_size": 31}) == odd
    even = [run_id for run_id in newest_first if run_id in set(ids[::2])]
    assert all_pages(session, limit=2, spec={"seed": seed}, status=RunStatus.succeeded) == even


def check_sweep_pages(session: Session) -> None:
    made = []
    for index in range(7):
        specs = [JobSpec(name=f"s{index}", seed=seed) for seed in range(index % 3 + 1)]
        sweep, runs = store.create_sweep(session, f"s{index}", {}, {"seed": [0]}, specs)
        if index == 2:
            assert store.claim_run(session, runs[0].id, "w")
        made.append((sweep.id, len(runs)))
    seen, cursor = [], None
    while True:
        page, cursor = store.list_sweeps(session, limit=3, cursor=cursor)
        seen += [(sweep.id, counts) for sweep, counts in page]
        if cursor is None:
            break
    mine = {sweep_id for sweep_id, _ in made}
    seen = [(sweep_id, counts) for sweep_id, counts in seen if sweep_id in mine]
    assert [sweep_id for sweep_id, _ in seen] == [sweep_id for sweep_id, _ in reversed(made)]
    counts = dict(seen)
    for index, (sweep_id, n) in enumerate(made):
        want = {"queued": n} if index != 2 else {"queued": n - 1, "running": 1}
        assert counts[sweep_id] == want


def test_run_filters_match_a_reference_filter(session: Session) -> None:
    check_run_filters(session)


def test_sweep_pages_newest_first_with_counts(session: Session) -> None:
    check_sweep_pages(session)


def test_runs_created_in_one_instant_page_by_id(session: Session) -> None:
    check_same_instant_pages(session)


def test_spec_columns_hold_the_validated_spec(session: Session) -> None:
    """Filled at creation (a run's and a sweep's runs alike) from the spec as stored,
    defaults included: what a filter on a field left out of the request compares."""
    run, _ = store.create_run(session, JobSpec(model={"norm": "none"}))
    _, [swept] = store.create_sweep(session, "s", {}, {"seed": [7]}, [JobSpec(seed=7)])
    for made in (run, swept):
        stored = store.get_run(session, made.id)
        columns = {column: getattr(stored, column) for column in spec_filter_values({})}
        assert columns == spec_filter_values(stored.spec)
    assert (run.spec_norm, run.spec_arch, run.spec_lr, run.spec_seed) == ("none", "mlp", 0.5, 0)
    assert (swept.spec_norm, swept.spec_seed) == ("batchnorm", 7)
    assert [r.id for r in store.list_runs(session, spec={"seed": 7, "arch": "mlp"})[0]] == [
        swept.id
    ]


def test_tags_and_notes(session: Session) -> None:
    run, _ = store.create_run(session, JobSpec(), tags=["b", "a", "b"])
    assert run.tags == ["b", "a"] and run.note is None  # repeats dropped, order kept
    run = store.annotate_run(session, run.id, note="first look")
    assert (run.tags, run.note) == (["b", "a"], "first look")  # tags left as they were
    run = store.annotate_run(session, run.id, tags=[])
    assert (run.tags, run.note) == ([], "first look")
    run = store.annotate_run(session, run.id, note="")
    assert run.note is None
    with pytest.raises(store.NotFound, match="nope"):
        store.annotate_run(session, "nope", note="x")


def test_unknown_spec_filter_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: dataset, arch"):
        store.spec_value("depth")
