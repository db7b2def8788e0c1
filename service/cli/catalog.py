"""Finding and labelling runs: ``runs`` (a filtered list), ``tag`` and ``note``.

``runs`` passes its filters to ``GET /api/v1/runs`` (every filter given must hold; the server
checks each value against the spec's bounds and choices and names a bad one); ``tag`` and
``note`` change a run's labels through ``PATCH /api/v1/runs/{id}``, shown by ``bnlab show``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bncore.spec import JobSpec, ModelSpec, OptimizerSpec
from service.cli.common import command, connected, console, examples
from service.cli.format import (
    ID_COLUMN,
    NUMBER,
    add_columns,
    fmt_number,
    run_label,
    short_time,
    styled_status,
    table,
)
from service.cli.runs import RUN_ID_HELP
from service.cli.specs import field_help
from service.vocab import ALL_STATUSES, RunStatus, short_id


@command(
    epilog=examples(
        "bnlab runs",
        "bnlab runs --status running",
        "bnlab runs --sweep 0d3e77c4 --limit 100",
        "bnlab runs --norm batchnorm --lr 0.5 --seed 0",
        "bnlab runs --tag paper --tag fig1 --search baseline",
    )
)
def runs(
    ctx: typer.Context,
    status: Annotated[
        RunStatus | None,
        typer.Option(
            metavar="STATUS",
            help="Only runs in this status: " + ", ".join(s.value for s in ALL_STATUSES) + ".",
            show_default=False,
        ),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(help="Only the runs of this sweep (id or unique prefix).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only runs with exactly this name.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(help="Only runs with this tag (repeatable: all of them).", show_default=False),
    ] = None,
    search: Annotated[
        str | None,
        typer.Option(
            help="Only runs whose name or note contains this (any case).", show_default=False
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help=field_help(JobSpec, "dataset", "Only this dataset"))
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help=field_help(ModelSpec, "arch", "Only this network"))
    ] = None,
    activation: Annotated[
        str | None,
        typer.Option(help=field_help(ModelSpec, "activation", "Only this nonlinearity")),
    ] = None,
    norm: Annotated[
        str | None, typer.Option(help=field_help(ModelSpec, "norm", "Only this normalization"))
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help=field_help(OptimizerSpec, "name", "Only this optimizer"))
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help=field_help(OptimizerSpec, "lr", "Only this learning rate")),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help=field_help(JobSpec, "batch_size", "Only this mini-batch size")),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=field_help(JobSpec, "seed", "Only this seed"))
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1)] = 20,
) -> None:
    """List runs, newest first: short id, name (tags below it), seed, status, step, best
    test accuracy. Every filter given must hold."""
    spec = {
        "dataset": dataset,
        "arch": arch,
        "activation": activation,
        "norm": norm,
        "optimizer": optimizer,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
    }
    spec = {field: value for field, value in spec.items() if value is not None}
    with connected(ctx) as client:
        sweep_id = client.resolve_sweep_id(sweep) if sweep else None
        items = client.list_runs(
            status=status,
            sweep_id=sweep_id,
            name=name,
            tags=tag or [],
            q=search,
            limit=limit,
            **spec,
        )
    shown_filters = filters_text(
        {
            "status": status.value if status else None,
            "sweep": short_id(sweep_id) if sweep_id else None,
            "name": name,
            **spec,
            "tag": ",".join(tag or []) or None,
            "search": search,
        }
    )
    if not items:
        console.print("no runs" + (f" with {shown_filters}" if shown_filters else ""))
        return
    console.print(runs_table(items, shown_filters))


def filters_text(filters: Mapping[str, Any]) -> str:
    """{"norm": "none", "seed": 0} → "norm=none seed=0" (the filters in effect, for titles)."""
    return " ".join(f"{key}={value}" for key, value in filters.items() if value is not None)


def runs_table(items: list[Mapping[str, Any]], filters: str = "") -> Table:
    """Every column keeps a readable minimum at 80 columns: ids are short (8 characters, what
    `show` and the others accept back), names wrap rather than vanish, tags go on the line
    under the name (a column of their own would not fit)."""
    title = f"{len(items)} run(s)" + (f" with {escape(filters)}" if filters else "")
    shown = add_columns(
        table(title),
        [
            ("id", ID_COLUMN),
            ("name", {"min_width": 10, "overflow": "fold"}),
            ("seed", NUMBER),
            ("status", {"no_wrap": True}),
            ("step", NUMBER),
            ("best acc", NUMBER),
            ("created (UTC)", {"no_wrap": True}),
        ],
    )
    for run in items:
        spec = run.get("spec") or {}
        summary = run.get("summary") or {}
        name = escape(str(run.get("name")))
        if run.get("tags"):
            name += "\n[dim]" + escape(" ".join(f"#{t}" for t in run["tags"])) + "[/dim]"
        shown.add_row(
            short_id(str(run["id"])),
            name,
            "" if spec.get("seed") is None else str(spec["seed"]),
            styled_status(run.get("status")),
            f"{run.get('last_step') or 0}/{spec['steps']}" if spec.get("steps") else "",
            fmt_number(summary.get("best_test_acc")),
            short_time(run.get("created_at"))[:16],  # to the minute
        )
    return shown


@command(
    epilog=examples(
        "bnlab tag 6f1c2a9b baseline paper-fig1",
        "bnlab tag 6f1c2a9b paper-fig1 --remove",
    )
)
def tag(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help=RUN_ID_HELP)],
    tags: Annotated[
        list[str],
        typer.Argument(
            help="Tags: letters, digits and . _ : = + / @ - (at most 40 characters each)."
        ),
    ],
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove these tags instead of adding them.")
    ] = False,
) -> None:
    """Add tags to a run (or remove them with --remove); prints the run's tags.

    `bnlab runs --tag TAG` lists the runs that carry a tag; `bnlab show` shows them.
    """
    with connected(ctx) as client:
        full_id = client.resolve_run_id(run_id)
        current = list(client.get_run(full_id).get("tags") or [])
        if remove:
            wanted = [t for t in current if t not in tags]
        else:
            wanted = list(dict.fromkeys(current + tags))
        run = client.update_run(full_id, tags=wanted)
    shown = " ".join(run.get("tags") or []) or "no tags"
    console.print(f"{escape(run_label(run))}: {escape(shown)}")


@command(
    epilog=examples(
        'bnlab note 6f1c2a9b "lr too high for the baseline; see run 0d3e77c4"',
        'bnlab note 6f1c2a9b ""   # removes the note',
    )
)
def note(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help=RUN_ID_HELP)],
    text: Annotated[str, typer.Argument(help='The note (replaces the old one; "" removes it).')],
) -> None:
    """Set a run's note: free text shown by `bnlab show` and found by `bnlab runs --search`."""
    with connected(ctx) as client:
        run = client.update_run(client.resolve_run_id(run_id), note=text)
    if run.get("note"):
        console.print(f"{escape(run_label(run))}: note saved")
    else:
        console.print(f"{escape(run_label(run))}: note removed")
