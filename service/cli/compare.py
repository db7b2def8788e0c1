"""``bnlab compare``: steps to reach a target accuracy and the speed-up over a baseline.

The numbers come from the server (``GET /api/v1/compare``, computed by
:mod:`service.analysis.compare`); this module checks the options it can check cheaply, then
draws two tables for 80 columns: one row per run (short id, arm, seed, status, accuracy,
steps to target, speed-up) and one per arm (mean and 95% CI over seeds).
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
        "bnlab compare --sweep SWEEP_ID --target 0.9",
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
        float | None,
        typer.Option(
            help="Target value. Default: the worst of the baseline arm's best values, so "
            "every baseline seed reaches it.",
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
    if target is not None and not math.isfinite(target):
        invalid(f"--target must be a finite number, got {target}")
    plot_format = None
    if plot is not None:
        plot_format = plot.suffix.lower().lstrip(".")
        if plot_format not in ("png", "svg"):
            invalid(f"--plot must end in .png or .svg, got {plot}")
    with connected(ctx) as client:
        ids = [client.resolve_run_id(run_id) for run_id in run_ids or []] or None
        baseline_id = client.resolve_run_id(baseline) if baseline else None
        if ids and baseline_id and baseline_id not in ids:
            invalid(
                f"--baseline {baseline} is not one of the compared runs "
                f"({', '.join(short_id(i) for i in ids)}); add it to them"
            )
        query: dict[str, Any] = {
            "run_ids": ids,
            "sweep": sweep,
            "baseline": baseline_id,
            "target": target,
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


def target_text(result: Mapping[str, Any]) -> str:
    """What the target is and how it was chosen, in words."""
    target = result.get("target")
    if target is None:
        return "no target"
    source = result.get("target_source")
    if source != "baseline":
        return f"target {target:.4g} (given)"
    arm = next((a for a in result.get("arms", []) if a.get("is_baseline")), {})
    if (arm.get("n") or 1) == 1:
        return f"target {target:.4g} (the baseline run's best)"
    return f"target {target:.4g} (the worst of the baseline arm's {arm['n']} best values)"


def print_comparison(result: Mapping[str, Any]) -> None:
    """The comparison as two tables (runs, arms) and its warnings."""
    metric = str(result.get("metric", "test_acc"))
    console.print(
        f"[bold]{escape(metric)}[/bold]: {target_text(result)}; baseline arm "
        f"[bold]{escape(str(result.get('baseline_arm')))}[/bold]"
    )
    console.print(runs_table(result))
    console.print(arms_table(result))
    for warning in result.get("warnings", []):
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
