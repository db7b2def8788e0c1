"""Conditional requests on the metrics and compare routes: an ETag on every answer, 304 for an
If-None-Match that names the current one, and a new ETag (and body) as soon as any point
changes, also when points are removed and written again with the same counts."""

from __future__ import annotations

from service import store

RUNS = "/api/v1/runs"
COMPARE = "/api/v1/compare"


def live_runs(client, session) -> list[str]:  # noqa: ANN001
    """A no-norm baseline and a batchnorm run, both still running."""
    ids = []
    for norm in ("none", "batchnorm"):
        run = client.post(RUNS, json={"steps": 500, "model": {"norm": norm}}).json()
        assert store.claim_run(session, run["id"], "w")
        points = [("test_acc", s, s / 500) for s in range(0, 301, 50)]
        points += [("train_loss", s, 1.0 / s) for s in range(1, 301)]
        store.add_metrics(session, run["id"], points)
        ids.append(run["id"])
    return ids


def check_conditional(client, url: str, params: dict, change) -> None:  # noqa: ANN001
    first = client.get(url, params=params)
    assert first.status_code == 200, first.text
    tag = first.headers["etag"]
    again = client.get(url, params=params, headers={"If-None-Match": tag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag)
    weak = client.get(url, params=params, headers={"If-None-Match": f'"other", W/{tag}'})
    assert weak.status_code == 304
    assert client.get(url, params=params, headers={"If-None-Match": '"other"'}).status_code == 200
    other_query = client.get(url, params=params | {"x_probe": "ignored"})
    assert other_query.headers["etag"] == tag  # unknown parameters do not change the body
    change()
    changed = client.get(url, params=params, headers={"If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != tag
    assert changed.content != first.content


def test_metrics_304_until_a_point_arrives(client, app_session) -> None:  # noqa: ANN001
    run_id = live_runs(client, app_session)[0]
    check_conditional(
        client,
        f"{RUNS}/{run_id}/metrics",
        {"keys": "train_loss"},
        lambda: store.add_metrics(app_session, run_id, [("train_loss", 301, 0.5)]),
    )


def test_metrics_etag_changes_when_points_are_replaced(client, app_session) -> None:  # noqa: ANN001
    """A resumed attempt rewrites the steps a lost one wrote: same counts, other values."""
    run_id = live_runs(client, app_session)[0]

    def replace() -> None:
        assert store.delete_metrics_after(app_session, run_id, 200) == 100 + 2
        again = [("train_loss", s, -1.0) for s in range(201, 301)]
        again += [("test_acc", s, 0.0) for s in (250, 300)]
        store.add_metrics(app_session, run_id, again)

    check_conditional(client, f"{RUNS}/{run_id}/metrics", {"max_points": 50}, replace)


def test_compare_304_until_a_point_arrives(client, app_session) -> None:  # noqa: ANN001
    ids = live_runs(client, app_session)
    params = {"runs": ",".join(ids), "points": 20}
    check_conditional(
        client,
        COMPARE,
        params,
        lambda: store.add_metrics(app_session, ids[1], [("test_acc", 350, 0.9)]),
    )
    csv = client.get(COMPARE, params=params | {"format": "csv"})
    assert csv.headers["etag"] != client.get(COMPARE, params=params).headers["etag"]


def test_compare_etag_changes_when_a_run_finishes(client, app_session) -> None:  # noqa: ANN001
    ids = live_runs(client, app_session)

    def finish() -> None:
        summary = {"final_test_acc": 0.6, "best_test_acc": 0.6}
        store.finish_run(app_session, ids[0], store.RunStatus.succeeded, "done", summary=summary)

    check_conditional(client, COMPARE, {"runs": ",".join(ids)}, finish)
