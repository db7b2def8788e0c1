"""``bnlab compare``: steps to reach a target accuracy and the speed-up over a baseline.

The numbers come from the server (``GET /api/v1/compare``, computed by
:mod:`service.analysis.compare`); this module checks the options it can check cheaply, then
prints the targets with the server's labels (verbatim: each says how its value was chosen)
and draws tables for 80 columns: one row per run (short id, arm, seed, status, accuracy,
steps to the primary target, speed-up), one per arm (mean and 95% CI over seeds), and with
several targets one row per target and arm (mean steps and speed-up).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from service.cli.common import (
    EXIT_INVALID,
    command,
    connected,
    console,
    err_console,
    examples,
    fail,
)
from service.cli.format import (
    ID_COLUMN,
    NUMBER,
    add_columns,
    fmt_mean,
    fmt_number,
    fmt_ratio,
    fmt_stat,
    styled_status,
    table,
)
from service.vocab import short_id


def invalid(message: str) -> NoReturn:
    fail(message, EXIT_INVALID)


@command(
    epilog=examples(
        "bnlab compare 6f1c2a9b 0d3e77c4",
        "bnlab compare --sweep SWEEP_ID --target 0.9 --target 0.95",
        "bnlab compare --sweep SWEEP_ID --fractions 1,0.95,0.9",
        "bnlab compare --sweep SWEEP_ID --plot fig.svg --csv table.csv",
        "bnlab compare RUN_A RUN_B --baseline RUN_A --json > comparison.json",
    )
)
def compare(
    ctx: typer.Context,
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Run ids or unique prefixes (or use --sweep).", show_default=False),
    ] = None,
    sweep: Annotated[str | None, typer.Option(help="Compare all runs of a sweep.")] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Baseline run (id or prefix); its arm is the baseline arm. Default: a run "
            "without normalization.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="Target value(s): repeat the option or give a comma list (0.8,0.85). "
            "Default: the baseline's best and 0.99, 0.95, 0.9 of it (see --fractions).",
            show_default=False,
        ),
    ] = None,
    fractions: Annotated[
        str | None,
        typer.Option(
            help="Targets as fractions of the baseline's best, each in (0, 1], e.g. "
            "1,0.95,0.9 (for a loss: best ÷ f). Given values come first.",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option(help="Metric compared: a key the runs log (test_acc, train_loss…).")
    ] = "test_acc",
    plot: Annotated[
        Path | None, typer.Option(help="Also save the figure (.png or .svg).", show_default=False)
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also save the table as CSV.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON instead.")] = False,
) -> None:
    """Compare runs: accuracy, steps to reach the target and speed-up over the baseline.

    Per run: best/final test accuracy, steps to target, speed-up. Per arm (runs differing only
    in seed): mean with a 95% bootstrap CI, and a rank test against the baseline arm. A value
    marked ≥ or ≤ is a bound: some runs never reached the target. An unknown metric or a
    comparison without a baseline arm is an error (exit 2) naming the valid choices.
    """
    if not run_ids and not sweep:
        invalid("give run ids or --sweep SWEEP_ID")
    if run_ids and sweep:
        invalid("give run ids or --sweep SWEEP_ID, not both")
    targets = numbers("--target", ",".join(target or []))
    target_fractions = numbers("--fractions", fractions or "")
    bad = [f for f in target_fractions if not 0 < f <= 1]
    if bad:
        invalid(f"--fractions: {bad[0]:g} is not in (0, 1]")
    plot_format = None
    if plot is not None:
        plot_format = plot.suffix.lower().lstrip(".")
        if plot_format not in ("png", "svg"):
            invalid(f"--plot must end in .png or .svg, got {plot}")
    with connected(ctx) as client:
        ids = [client.resolve_run_id(run_id) for run_id in run_ids or []] or None
        sweep_id = client.resolve_sweep_id(sweep) if sweep else None
        baseline_id = client.resolve_run_id(baseline) if baseline else None
        if ids and baseline_id and baseline_id not in ids:
            invalid(
                f"--baseline {baseline} is not one of the compared runs "
                f"({', '.join(short_id(i) for i in ids)}); add it to them"
            )
        query: dict[str, Any] = {
            "run_ids": ids,
            "sweep": sweep_id,
            "baseline": baseline_id,
            "target": targets or None,
            "target_fractions": target_fractions or None,
            "metric": metric,
        }
        result = client.compare(**query, fmt="json")
        if csv_path is not None:
            csv_path.write_text(client.compare(**query, fmt="csv"))
        if plot is not None:
            plot.write_bytes(client.compare_plot(**query, fmt=plot_format))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        print_comparison(result)
    for path, what in ((csv_path, "table"), (plot, "figure")):
        if path is not None:
            err_console.print(f"{what} saved to {path}")


def numbers(option: str, text: str) -> list[float]:
    """ "0.8, 0.85" → [0.8, 0.85] ([] for ""); exit 2 naming ``option`` for anything but
    finite numbers."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        invalid(f"{option}: expected numbers separated by commas, got {text!r}")
    if not all(math.isfinite(value) for value in values):
        invalid(f"{option}: numbers must be finite, got {text!r}")
    return values


def print_comparison(result: Mapping[str, Any]) -> None:
    """The targets with their labels, the tables (runs, arms, and per target with several
    targets) and the warnings, on stderr so that stdout stays the tables."""
    metric = str(result.get("metric", "test_acc"))
    console.print(
        f"[bold]{escape(metric)}[/bold], baseline arm "
        f"[bold]{escape(str(result.get('baseline_arm')))}[/bold]"
    )
    targets = result.get("targets") or []
    if not targets:  # a server from before several targets: its one target
        label = result.get("target_label") or f"{result.get('target')}"
        targets = [{"label": label}]
    for number, target in enumerate(targets, 1):
        primary = " (the runs and arms tables)" if number == 1 else ""
        console.print(f"target {number}{primary}: {escape(str(target.get('label')))}")
    console.print(runs_table(result))
    console.print(arms_table(result))
    if len(targets) > 1:
        console.print(targets_table(result))
    warnings = list(result.get("warnings") or [])
    plateau = result.get("plateau") or {}
    if plateau.get("baseline") is False and not any("plateau" in w for w in warnings):
        warnings.append(
            "the baseline had not plateaued: targets near its best depend on how long it ran"
        )
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def runs_table(result: Mapping[str, Any]) -> Table:
    """One row per run. The arm says what differs between runs (their names usually repeat
    it), so names are left to `bnlab show`; the id is the short one, accepted back."""
    shown = add_columns(
        table("runs"),
        [
            ("id", ID_COLUMN),
            ("arm", {"min_width": 12, "overflow": "fold"}),
            ("seed", NUMBER),
            ("status", {"no_wrap": True}),
            ("best\nacc", NUMBER),
            ("final\nacc", NUMBER),
            ("steps to\ntarget", NUMBER),
            ("speed-up", NUMBER),
        ],
    )
    baseline_id = result.get("baseline_id")
    for run in result.get("runs", []):
        if run.get("steps_to_target") is not None:
            steps = str(run["steps_to_target"])
        else:
            steps = f"> {run.get('budget')}"  # not reached within the run's steps
        arm = escape(str(run.get("arm")))
        if run.get("id") == baseline_id:
            arm += "\n[dim](baseline)[/dim]"
        status = styled_status(run.get("status"))
        if run.get("diverged_step") is not None:
            status += f"\n@ step {run['diverged_step']}"
        shown.add_row(
            short_id(str(run.get("id"))),
            arm,
            "" if run.get("seed") is None else str(run["seed"]),
            status,
            fmt_number(run.get("best_test_acc")),
            fmt_number(run.get("final_test_acc")),
            steps,
            fmt_ratio(run.get("speedup")),
        )
    return shown


def arms_table(result: Mapping[str, Any]) -> Table:
    """One row per arm: means, with the 95% interval on the line below each."""
    metric = str(result.get("metric", "test_acc"))
    shown = add_columns(
        table("arms (mean, 95% CI over seeds)"),
        [
            ("arm", {"min_width": 12, "overflow": "fold"}),
            ("reached", NUMBER),
            ("steps to\ntarget", NUMBER),
            ("speed-up", NUMBER),
            (f"best\n{escape(metric)}", NUMBER),
            ("p", NUMBER),
        ],
    )
    for arm in result.get("arms", []):
        label = escape(str(arm.get("label")))
        if arm.get("is_baseline"):
            label += "\n[dim](baseline)[/dim]"
        shown.add_row(
            label,
            f"{arm.get('n_reached')}/{arm.get('n')}",
            fmt_stat(arm.get("steps_to_target"), "{:.0f}"),
            fmt_stat(arm.get("speedup"), "{:.2f}×"),
            fmt_stat(arm.get("best"), "{:.4f}"),
            "" if arm.get("p_value") is None else f"{arm['p_value']:.3g}",
        )
    return shown


def targets_table(result: Mapping[str, Any]) -> Table:
    """One row per target and arm: how many seeds reached it, mean steps and speed-up (≥ / ≤
    mark bounds); the targets are numbered as in the list printed above the tables."""
    shown = add_columns(
        table("steps to each target (mean over seeds)"),
        [
            ("#", NUMBER),
            ("target", NUMBER),
            ("arm", {"min_width": 12, "overflow": "fold"}),
            ("reached", NUMBER),
            ("steps", NUMBER),
            ("speed-up", NUMBER),
        ],
    )
    for index, target in enumerate(result.get("targets") or []):
        value = target.get("value")
        for position, arm in enumerate(result.get("arms", [])):
            rows = arm.get("targets") or []
            if index >= len(rows):
                continue
            row = rows[index]
            label = escape(str(arm.get("label")))
            if arm.get("is_baseline"):
                label += " [dim](baseline)[/dim]"
            first = position == 0
            shown.add_row(
                str(index + 1) if first else "",
                (fmt_number(value) if value is not None else "none") if first else "",
                label,
                f"{row.get('n_reached')}/{arm.get('n')}",
                fmt_mean(row.get("steps_to_target"), "{:.0f}"),
                fmt_mean(row.get("speedup"), "{:.2f}×"),
            )
        shown.add_section()
    return shown
