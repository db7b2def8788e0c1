"""`bnlab reproduce` end to end on an embedded server: real app, SQLite, real training.

The "tiny" profile (tests only) trains each run for seconds, so its numbers mean nothing; what
is checked is the path (sweeps through the public API, comparison, figure, report) and that
every verdict in the report is the one its own numbers give, and those numbers are the API's.
One sweep (2 runs) serves three experiments, which keeps this under two minutes on 2 cores.
"""

from __future__ import annotations

import re
from statistics import mean

import pytest

from service import reproduce as r
from service.reproduce import VERDICT_MARK, load_numbers

ONLY = ["faster-training", "stable-distributions", "inference-statistics"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("reproduce")
    progress: list[tuple[int, int, str]] = []
    with r.embedded_client(database=tmp / "bnlab.db", concurrency=2) as client:
        result = r.run_suite(
            client,
            quick=True,
            only=ONLY,
            out_dir=tmp / "out",
            progress=lambda done, total, note: progress.append((done, total, note)),
            profile="tiny",
            poll_interval=0.5,
            timeout=240,
            server_label="an embedded test server",
        )
        sweep = client.get_sweep(result.results[0].sweep_id)
        comparison = client.compare(sweep=sweep["id"], points=r.COMPARE_POINTS)
    return result, progress, sweep, comparison


@pytest.mark.slow
def test_report_structure(suite) -> None:
    result, progress, _, _ = suite
    text = result.report.read_text()
    assert text.startswith("# Reproducing Ioffe & Szegedy (2015) with bnlab")
    assert "(tiny profile)" in text and "an embedded test server" in text

    # Headline table: one row per experiment, in suite order, with its verdict.
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert len(rows) == len(ONLY)
    for row, item in zip(rows, result.results, strict=True):
        assert item.title in row
        assert VERDICT_MARK[item.finding.verdict] in row

    # One section per experiment with claim, settings, numbers, verdict, rule and a figure.
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    titles = [s.splitlines()[0] for s in sections]
    assert titles == ["How verdicts are decided"] + [i.title for i in result.results]
    for body, item in zip(sections[1:], result.results, strict=True):
        for part in ("**Claim**", "**Settings**", "**Measured**", "**Verdict: ", "*Rule*"):
            assert part in body, (item.name, part)
        assert f"**Verdict: {VERDICT_MARK[item.finding.verdict]}**" in body
        assert item.figures, item.name
        for figure in item.figures:  # the API's comparison plot, and bars where drawn
            assert f"]({figure})" in body
            assert (result.out_dir / figure).read_bytes().startswith(PNG_MAGIC)

    # Progress covered the whole suite and ended complete.
    assert progress[-1][0] == progress[-1][1] == 2
    assert all(done <= total for done, total, _ in progress)


@pytest.mark.slow
def test_every_verdict_is_derived_from_the_reported_numbers(suite) -> None:
    result, _, _, _ = suite
    data = load_numbers(result.out_dir)
    assert [e["name"] for e in data["experiments"]] == ONLY
    for experiment in data["experiments"]:
        finding = experiment["finding"]
        assert finding["verdict"] in VERDICT_MARK
        assert r.verdict_from_numbers(experiment["name"], finding["numbers"]) == finding["verdict"]


@pytest.mark.slow
def test_reported_numbers_are_the_apis(suite) -> None:
    """Recompute the numbers from what the API serves, independently of the suite's code."""
    result, _, sweep, comparison = suite
    by_name = {item.name: item.finding.numbers for item in result.results}
    assert all(run["status"] == "succeeded" for run in sweep["runs"])

    bn_arm = next(a for a in comparison["arms"] if a["factors"]["model.norm"] == "batchnorm")
    assert by_name["faster-training"]["speedup"] == bn_arm["speedup"]
    assert by_name["faster-training"]["target"] == comparison["target"]

    bn_runs = [run for run in sweep["runs"] if run["spec"]["model"]["norm"] == "batchnorm"]
    gains = [
        run["summary"]["test_acc_population"] - run["summary"]["test_acc_batch_stats"]
        for run in bn_runs
    ]
    assert by_name["inference-statistics"]["gain"]["mean"] == pytest.approx(mean(gains))

    drifts = {}
    for run in comparison["runs"]:
        p15, p50, p85 = (
            [v for _, v in run["curves"][k]] for k in ("act_p15", "act_p50", "act_p85")
        )
        spread = mean(hi - lo for lo, hi in zip(p15, p85, strict=True))
        drifts[run["arm"]] = (max(p50) - min(p50)) / spread
    stable = by_name["stable-distributions"]
    assert stable["baseline_drifts"] == pytest.approx([drifts[comparison["baseline_arm"]]])
    assert stable["bn_drifts"] == pytest.approx([drifts[bn_arm["label"]]])
