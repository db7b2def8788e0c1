"""service.analysis.plots renders headless, to valid PNG/SVG, including for awkward runs."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import pytest

from service.analysis.compare import compare
from service.analysis.plots import (
    COLORS,
    arm_colors,
    build_comparison_figure,
    build_run_figure,
    comparison_figure,
    run_figure,
)
from service.analysis.runs import RunData

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    rid: str, norm: str = "none", lr: float = 0.5, seed: int = 0, percentiles: bool = True
) -> RunData:
    evals = range(0, 501, 50)
    metrics = {
        "train_loss": [(s, 2.3 / (1 + s / 100)) for s in range(1, 501, 5)],
        "train_acc": [(s, min(0.95, s / 400)) for s in range(1, 501, 5)],
        "test_loss": [(s, 2.3 / (1 + s / 100)) for s in evals],
        "test_acc": [(s, min(0.9, 0.1 + s / 500)) for s in evals],
    }
    if percentiles:
        metrics |= {
            "act_p15": [(s, -1.0 + s / 1000) for s in evals],
            "act_p50": [(s, s / 1000) for s in evals],
            "act_p85": [(s, 1.0 + s / 500) for s in evals],
        }
    spec = {
        "dataset": "mnist1d",
        "model": {"norm": norm, "activation": "sigmoid"},
        "optimizer": {"name": "sgd", "lr": lr},
        "steps": 500,
        "seed": seed,
    }
    return RunData(id=rid, name=rid, spec=spec, metrics=metrics, wall_time=2.0)


def diverged_run() -> RunData:
    r = make_run("hot", lr=5.0, percentiles=False)
    r.status, r.diverged_step = "diverged", 12
    r.metrics = {
        "train_loss": [(1, 2.3), (6, 40.0), (12, float("nan"))],
        "test_acc": [(0, 0.1)],
        "act_p50": [(0, 0.0)],  # a median without its band
    }
    return r


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


def test_comparison_png_is_a_sane_png():
    runs = [make_run("a"), make_run("b", norm="batchnorm"), make_run("c", "batchnorm", seed=1)]
    png = comparison_figure(compare(runs))
    width, height = png_size(png)
    assert (width, height) == (1300, 900)  # figsize (13, 9) at 100 dpi
    assert 10_000 < len(png) < 3_000_000


def test_comparison_svg_parses_as_xml():
    svg = comparison_figure([make_run("a"), make_run("b", norm="batchnorm")], fmt="svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")


def test_comparison_with_missing_percentiles_and_early_divergence():
    runs = [make_run("a", percentiles=False), make_run("b", norm="batchnorm"), diverged_run()]
    png_size(comparison_figure(runs))


def test_comparison_of_one_run_and_of_many_arms():
    png_size(comparison_figure([make_run("solo")]))
    many = [make_run(f"r{i}", lr=0.1 * (i + 1)) for i in range(8)]  # more arms than panels
    png_size(comparison_figure(many))


def test_run_figure_png_and_svg():
    png_size(run_figure(make_run("a")))
    png_size(run_figure(diverged_run()))
    ET.fromstring(run_figure(RunData(id="e", name="empty", spec={}), fmt="svg"))


def test_unknown_format_rejected():
    with pytest.raises(ValueError):
        run_figure(make_run("a"), fmt="gif")  # type: ignore[arg-type]


def test_baseline_arm_has_the_first_colour_whatever_the_order() -> None:
    runs = [make_run("bn", norm="batchnorm"), make_run("plain"), make_run("bn2", lr=2.0)]
    for ordered in (runs, runs[::-1]):
        c = compare(ordered)
        colors = arm_colors(c)
        baseline = next(a.label for a in c.arms if a.is_baseline)
        assert colors[baseline] == COLORS[0]
        assert len(set(colors.values())) == 3


# ----------------------------------------------------------------------------- content


def hlines(ax) -> dict[float, str]:  # noqa: ANN001
    """Horizontal full-width lines of an axis: y → line style."""
    return {
        line.get_ydata()[0]: line.get_linestyle()
        for line in ax.get_lines()
        if list(line.get_xdata()) == [0, 1] and len(set(line.get_ydata())) == 1
    }


def test_accuracy_panel_draws_every_target_and_labels_the_primary_with_how_it_was_chosen():
    runs = [make_run("p0"), make_run("p1", seed=1), make_run("bn", norm="batchnorm")]
    runs[1].metrics["test_acc"] = [(s, min(0.85, 0.1 + s / 500)) for s in range(0, 501, 50)]
    c = compare(runs)
    fig = build_comparison_figure(c)
    ax_acc = fig.subfigs[0].axes[0]
    assert ax_acc.get_title() == "Test accuracy vs steps"
    lines = hlines(ax_acc)
    assert lines == {t.value: ("--" if i == 0 else ":") for i, t in enumerate(c.targets)}
    texts = [t.get_text() for t in ax_acc.texts]
    assert f"target {c.target_label}" in texts
    assert "lowest of the 2 baseline seeds' best test_acc (seed 1's)" in c.target_label
    assert {"0.99× best", "0.95× best", "0.9× best"} <= set(texts)
    # One curve per run plus a dot per run that reached the primary target.
    lines = ax_acc.get_lines()
    curves = [ln for ln in lines if len(ln.get_xdata()) > 1 and list(ln.get_xdata()) != [0, 1]]
    dots = [ln for ln in lines if ln.get_marker() == "o"]
    assert len(curves) == 3
    assert sorted(d.get_xdata()[0] for d in dots) == sorted(r.steps_to_target for r in c.runs)
    assert all(d.get_ydata()[0] == c.target for d in dots)
    legend = [t.get_text() for t in ax_acc.get_legend().get_texts()]
    assert legend[0] == "norm=none (n=2), baseline" and legend[1].startswith("norm=batchnorm")


def test_warnings_reach_the_title():
    slow = make_run("plain")
    slow.metrics["test_acc"] = [(s, 0.1 + s / 600) for s in range(0, 501, 50)]  # still rising
    c = compare([slow, make_run("bn", norm="batchnorm")])
    title = build_comparison_figure(c).get_suptitle()
    assert "Warning: the baseline had not plateaued" in title.replace("\n", " ")


def test_run_figure_marks_divergence():
    fig = build_run_figure(diverged_run())
    ax_acc, ax_loss, ax_pct = fig.axes[:3]
    assert any(list(ln.get_xdata()) == [12, 12] for ln in ax_loss.get_lines())  # the vline
    assert "diverged at step 12" in fig.get_suptitle()


def drawn(ax) -> dict[str, tuple[list[float], list[float]]]:  # noqa: ANN001
    """The labelled lines of an axis: label → (x, y) as drawn."""
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }


def test_run_figure_draws_each_series_in_its_panel():
    """Every point of a short run is drawn as it is (no downsampling below 500 points), in
    the panel its key belongs to, and the percentile panel has its median and band."""
    run = make_run("a", norm="batchnorm")
    fig = build_run_figure(run)
    ax_acc, ax_loss, ax_pct = fig.axes[:3]

    def points(key: str) -> tuple[list[float], list[float]]:
        return [s for s, _ in run.metrics[key]], [v for _, v in run.metrics[key]]

    assert (ax_acc.get_title(), ax_loss.get_title()) == ("Accuracy", "Loss")
    assert drawn(ax_acc) == {"train_acc": points("train_acc"), "test_acc": points("test_acc")}
    assert drawn(ax_loss) == {
        "train_loss": points("train_loss"),
        "test_loss": points("test_loss"),
    }
    assert ax_loss.get_yscale() == "log"  # every loss is positive
    assert drawn(ax_pct) == {"50th (median)": points("act_p50"), "15th / 85th": points("act_p15")}
    assert len(ax_pct.collections) == 1  # the 15th-85th band
    assert fig.get_suptitle().startswith("a: ") and "norm=batchnorm" in fig.get_suptitle()


def test_run_figure_without_percentiles_says_so():
    fig = build_run_figure(make_run("a", percentiles=False))
    ax_pct = fig.axes[2]
    assert drawn(ax_pct) == {} and [t.get_text() for t in ax_pct.texts] == ["no percentiles logged"]
