"""Figures for comparisons and single runs (matplotlib, headless), returned as PNG or SVG bytes.

Figures are built on ``matplotlib.figure.Figure`` directly, not through ``pyplot``: no global
figure registry, nothing to close, safe to call from API worker threads, and no display needed
(the Agg/SVG canvases are picked from the format when saving).

A comparison figure reads top to bottom:

1. test accuracy vs steps, one line per run, one colour per arm, the target as a dashed line
   and a dot where each run first reaches it (the paper's Fig. 1a, and its speed-up measure);
2. loss vs steps: training loss (thin) and test loss (dashed), log scale;
3. the paper's Fig. 1b/c: the 15th, 50th and 85th percentiles of the probed pre-activation over
   training, one small panel per arm (its first seed that logged them), sharing the y axis so
   the drift of an unnormalised network stands out next to a normalised one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from service.analysis.compare import Comparison, RunResult, compare
from service.analysis.downsample import downsample
from service.analysis.runs import RunData

Format = Literal["png", "svg"]

# A colour per arm, the baseline's first; cycles past ten arms.
COLORS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
MAX_PERCENTILE_PANELS = 6  # beyond this the panels get too small to read
RUN_FIGURE_POINTS = 500


def arm_colors(c: Comparison) -> dict[str, str]:
    """Arm label → colour. The baseline always gets the first colour and the other arms follow
    in order, so a comparison reads the same whichever run was listed first."""
    in_order = sorted(c.arms, key=lambda a: not a.is_baseline)  # stable: arm order kept
    return {a.label: COLORS[i % len(COLORS)] for i, a in enumerate(in_order)}


def comparison_figure(
    comparison_or_runs: Comparison | Sequence[RunData], fmt: Format = "png"
) -> bytes:
    """The comparison at a glance (see the module docstring); ``fmt`` is "png" or "svg"."""
    c = comparison_or_runs
    if not isinstance(c, Comparison):
        c = compare(list(c))
    color = arm_colors(c)

    fig = Figure(figsize=(13, 9), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1])
    ax_acc, ax_loss = top.subplots(1, 2)
    _accuracy_panel(ax_acc, c, color)
    _loss_panel(ax_loss, c, color)
    _percentile_row(bottom, c, color)
    title = f"{len(c.runs)} runs in {len(c.arms)} arms, baseline: {c.baseline_arm}"
    if c.warnings:
        title += "\nWarning: " + "; ".join(c.warnings)
    fig.suptitle(title, fontsize=12, color="black" if not c.warnings else "#a00000")
    return _render(fig, fmt)


def run_figure(run: RunData, fmt: Format = "png") -> bytes:
    """One run: accuracy (train, test), loss (train, test, log scale) and the percentiles."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    ax_acc, ax_loss, ax_pct = fig.subplots(1, 3)
    curves = {k: downsample(run.series(k), RUN_FIGURE_POINTS) for k in run.metrics}
    for key, style in (("train_acc", "-"), ("test_acc", "--")):
        _plot(ax_acc, curves.get(key), style, "C0" if key == "test_acc" else "C1", key)
    for key, style in (("train_loss", "-"), ("test_loss", "--")):
        _plot(ax_loss, curves.get(key), style, "C0" if key == "test_loss" else "C1", key)
    _log_if_positive(ax_loss)
    if run.diverged and run.diverged_step is not None:
        for ax in (ax_acc, ax_loss):
            ax.axvline(run.diverged_step, color="#a00000", ls=":", lw=1, label="diverged")
    _finish(ax_acc, "Accuracy", "accuracy")
    _finish(ax_loss, "Loss", "cross-entropy")
    _percentile_panel(ax_pct, curves, "C0", legend=True)
    ax_pct.set_title("Pre-activation percentiles (Fig. 1b/c)")
    ax_pct.set_ylabel("pre-activation value")
    status = run.status + (f" at step {run.diverged_step}" if run.diverged_step else "")
    fig.suptitle(f"{run.name}: {_describe(run.spec)} ({status})", fontsize=12)
    return _render(fig, fmt)


# ------------------------------------------------------------------------------------ panels


def _accuracy_panel(ax, c: Comparison, color: dict[str, str]) -> None:
    """Test accuracy of every run; the target line; a dot where each run first reaches it."""
    for r in c.runs:
        pts = r.curves.get("test_acc", [])
        _plot(ax, pts, "-", color[r.arm], None, lw=1.6, alpha=0.85)
        if r.steps_to_target is not None and c.metric == "test_acc" and c.target is not None:
            ax.plot([r.steps_to_target], [c.target], "o", color=color[r.arm], ms=5, zorder=3)
        _mark_divergence(ax, r, pts, color[r.arm])
    if c.target is not None and c.metric == "test_acc":
        source = "baseline best" if c.target_source == "baseline" else "given"
        ax.axhline(c.target, color="black", ls="--", lw=1)
        ax.annotate(
            f"target {c.target:.3f} ({source})",
            xy=(0.01, c.target),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
    ax.legend(handles=_arm_handles(c, color), loc="lower right", fontsize=8, title="arm")
    _finish(ax, "Test accuracy vs steps", "test accuracy", legend=False)


def _loss_panel(ax, c: Comparison, color: dict[str, str]) -> None:
    """Training loss (thin, solid) and test loss (dashed) of every run, log scale."""
    for r in c.runs:
        _plot(ax, r.curves.get("train_loss"), "-", color[r.arm], None, lw=0.8, alpha=0.55)
        _plot(ax, r.curves.get("test_loss"), "--", color[r.arm], None, lw=1.6)
    _log_if_positive(ax)
    styles = [
        Line2D([], [], color="grey", lw=0.8, ls="-", label="train"),
        Line2D([], [], color="grey", lw=1.6, ls="--", label="test"),
        Line2D([], [], color="grey", marker="x", ls="", label="diverged"),
    ]
    ax.legend(handles=styles, loc="upper right", fontsize=8)
    for r in c.runs:
        _mark_divergence(ax, r, r.curves.get("train_loss", []), color[r.arm])
    _finish(ax, "Loss vs steps", "cross-entropy loss", legend=False)


def _percentile_row(subfig, c: Comparison, color: dict[str, str]) -> None:
    """Fig. 1b/c: one panel per arm (first seed with percentiles), y axis shared."""
    arms = c.arms[:MAX_PERCENTILE_PANELS]
    # Shared axes: a drifting distribution and a run that stopped early both show at a glance.
    axes = subfig.subplots(1, len(arms), sharex=True, sharey=True, squeeze=False)[0]
    by_id = {r.id: r for r in c.runs}
    legend_drawn = False  # once, in the first panel that has percentiles
    for ax, arm in zip(axes, arms, strict=True):
        runs = [by_id[i] for i in arm.run_ids]
        shown = next((r for r in runs if r.curves.get("act_p50")), runs[0])
        has_data = bool(shown.curves.get("act_p50"))
        _percentile_panel(ax, shown.curves, color[arm.label], legend=has_data and not legend_drawn)
        legend_drawn |= has_data
        seed = f"seed {shown.seed}" if shown.seed is not None else shown.name
        ax.set_title(f"{arm.label}\n({seed})", fontsize=9, color=color[arm.label])
        _mark_divergence(ax, shown, shown.curves.get("act_p50", []), color[arm.label])
    axes[0].set_ylabel("pre-activation value")
    more = len(c.arms) - len(arms)
    note = f" (first {len(arms)} of {len(c.arms)} arms)" if more else ""
    subfig.suptitle(
        "Probed pre-activation over training: 15th / 50th / 85th percentiles (paper Fig. 1b/c)"
        + note,
        fontsize=11,
    )


def _percentile_panel(ax, curves: dict, color: str, legend: bool = False) -> None:
    """Median as a line, the 15th-85th percentile band shaded; a note when none was logged."""
    p15, p50, p85 = (curves.get(k) or [] for k in ("act_p15", "act_p50", "act_p85"))
    if not p50:
        ax.text(
            0.5,
            0.5,
            "no percentiles logged",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )
        ax.set_xlabel("step")
        return
    _plot(ax, p50, "-", color, "50th (median)", lw=1.8)
    _plot(ax, p15, "-", color, "15th / 85th", lw=0.8, alpha=0.7)
    _plot(ax, p85, "-", color, None, lw=0.8, alpha=0.7)
    if p15 and p85 and [s for s, _ in p15] == [s for s, _ in p85]:
        ax.fill_between(
            [s for s, _ in p15],
            [v for _, v in p15],
            [v for _, v in p85],
            color=color,
            alpha=0.15,
            lw=0,
        )
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="upper left")


# ----------------------------------------------------------------------------------- helpers


def _plot(ax, pts, style: str, color: str, label: str | None, **kw) -> None:
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=label, **kw)


def _mark_divergence(ax, r: RunResult | RunData, pts, color: str) -> None:
    """An × at a diverged run's last finite point, so a line that stops early is explained."""
    if r.diverged and pts:
        ax.plot([pts[-1][0]], [pts[-1][1]], "x", color=color, ms=9, mew=2, zorder=4)


def _describe(spec: dict) -> str:
    """One line, e.g. "mnist1d, mlp sigmoid norm=batchnorm, sgd lr=0.5, seed 0"."""
    model, opt = spec.get("model") or {}, spec.get("optimizer") or {}
    return (
        f"{spec.get('dataset', '?')}, {model.get('arch', 'mlp')} {model.get('activation', '')} "
        f"norm={model.get('norm', '?')}, {opt.get('name', 'sgd')} lr={opt.get('lr', '?')}, "
        f"seed {spec.get('seed', '?')}"
    )


def _arm_handles(c: Comparison, color: dict[str, str]) -> list[Line2D]:
    handles = []
    for a in c.arms:
        label = f"{a.label} (n={a.n})"
        if a.is_baseline:
            label += ", baseline"
        elif a.n_reached == 0:
            label += ", never reached the target"
        elif a.speedup["mean"] is not None:
            bound = {"upper": "≤ ", "lower": "≥ "}.get(a.speedup["bound"] or "", "")
            label += f", speed-up {bound}{a.speedup['mean']:.1f}×"
        if 0 < a.n_reached < a.n:
            label += f" ({a.n_reached}/{a.n} reached)"
        handles.append(Line2D([], [], color=color[a.label], lw=2, label=label))
    return handles


def _log_if_positive(ax) -> None:
    """Log y scale when every plotted value is positive (losses span decades)."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    if ys and min(ys) > 0:
        ax.set_yscale("log")


def _finish(ax, title: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _render(fig: Figure, fmt: Format) -> bytes:
    if fmt not in ("png", "svg"):
        raise ValueError(f"unsupported format {fmt!r}: use 'png' or 'svg'")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100)
    return buf.getvalue()
