"""``bnlab sweep``: one run per combination of grid values over a base spec, and following it;
``bnlab sweeps``: the sweeps, newest first, with how far their runs got.

Every combination is validated here first (:func:`service.cli.specs.validate_sweep`), so a bad
value is named before anything is created. Sweep ids are taken as unique prefixes too
(:meth:`service.client.BnlabClient.resolve_sweep_id`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from service.cli.common import (
    command,
    connected,
    console,
    err_console,
    examples,
)
from service.cli.follow import follow_sweep, ordered
from service.cli.format import (
    ID_COLUMN,
    NUMBER,
    add_columns,
    short_time,
    styled_status,
    table,
)
from service.cli.specs import load_spec_file, parse_grid, validate_sweep
from service.vocab import MAX_SWEEP_RUNS, short_id

SWEEP_HELP = f"""Run one training job per combination of the grid values over a base spec.

    Prints the sweep's id. At most {MAX_SWEEP_RUNS} runs per sweep (the product of the
    numbers of values); every combination is validated before anything is created.
    """


@command(
    help_text=SWEEP_HELP,
    epilog=examples(
        "bnlab sweep base.yaml --grid model.norm=none,batchnorm --grid seed=0,1,2",
        "bnlab sweep base.json -g optimizer.lr=0.1,0.5,2 -g 'model.hidden=[64],[64,64]'",
        "bnlab sweep base.yaml -g model.norm=none,batchnorm --name bn-vs-none --watch",
    ),
)
def sweep(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(help="The base JobSpec (.json/.yaml/.yml).")],
    grid: Annotated[
        list[str],
        typer.Option(
            "--grid",
            "-g",
            help="PATH=V1,V2,… (repeatable): a dotted spec field and its values; values are "
            "JSON where they parse (0.5, 3, [64,64]), text otherwise (batchnorm).",
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="Sweep name (default: the base spec's name).")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(help="A tag for every run of the sweep (repeatable).", show_default=False),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow until all runs end.")] = False,
) -> None:
    """See SWEEP_HELP (its text names the run limit)."""
    base = load_spec_file(spec_file)
    parsed = parse_grid(grid)
    count = validate_sweep(base, parsed)
    sweep_name = name or str(base.get("name") or spec_file.stem)
    with connected(ctx) as client:
        created = client.sweep(sweep_name, base, parsed, tags=tag or [])
        if not watch:
            typer.echo(created["id"])  # alone on stdout: SWEEP=$(bnlab sweep …) keeps it
            err_console.print(
                f"{count} run(s) queued; follow them with `bnlab watch --sweep "
                f"{short_id(created['id'])}`",
                soft_wrap=True,
            )
            return
        console.print(f"sweep [bold]{created['id']}[/bold]: {count} run(s)")
        code = follow_sweep(client, created["id"])
    raise typer.Exit(code)


@command(epilog=examples("bnlab sweeps", "bnlab sweeps --limit 100", "bnlab runs --sweep 0d3e77c4"))
def sweeps(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1)] = 20,
) -> None:
    """List sweeps, newest first: short id (accepted back as a prefix), name, created, runs
    and how many are in each status."""
    with connected(ctx) as client:
        items = client.list_sweeps(limit=limit)
    if not items:
        console.print("no sweeps")
        return
    console.print(sweeps_table(items))


def sweeps_table(items: list[Mapping[str, Any]]) -> Table:
    """One row per sweep for 80 columns: the status counts wrap inside their cell, one
    status per line when narrow, rather than pushing other columns out."""
    shown = add_columns(
        table(f"{len(items)} sweep(s)"),
        [
            ("id", ID_COLUMN),
            ("name", {"min_width": 10, "overflow": "fold"}),
            ("created (UTC)", {"no_wrap": True}),
            ("runs", NUMBER),
            ("statuses", {"min_width": 12}),
        ],
    )
    for item in items:
        counts = item.get("counts") or {}
        shown.add_row(
            short_id(str(item["id"])),
            escape(str(item.get("name"))),
            short_time(item.get("created_at"))[:16],  # to the minute
            str(item.get("run_count", sum(counts.values()))),
            "  ".join(f"{styled_status(status)} {n}" for status, n in ordered(counts)),
        )
    return shown
