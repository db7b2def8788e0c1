"""Commands on single runs: ``submit``, ``show``, ``watch``, ``cancel``, ``delete``,
``download``.

Wherever a run id is taken, a unique prefix of it works too (tables show the first 8
characters): :meth:`service.client.BnlabClient.resolve_run_id` turns it into the full id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bncore.spec import MAX_DEPTH, MAX_WIDTH, JobSpec, ModelSpec, OptimizerSpec
from service.cli.common import (
    EXIT_INVALID,
    command,
    connected,
    console,
    examples,
    fail,
)
from service.cli.follow import follow_run, follow_sweep
from service.cli.format import (
    key_value_table,
    latest_values,
    run_label,
    short_time,
    spec_rows,
    styled_status,
)
from service.cli.specs import field_help, load_spec_file, parse_hidden, set_path, validate_spec
from service.vocab import RunStatus, short_id

RUN_ID_HELP = "The run's id, or a unique prefix of it (the 8 characters tables show)."


# ----------------------------------------------------------------------------- commands


@command(
    epilog=examples(
        "bnlab submit --dataset digits --hidden 64,64 --norm batchnorm --lr 0.5",
        "bnlab submit spec.yaml --norm none --seed 3 --watch",
        "bnlab submit spec.json --idempotency-key nightly-2024-06-01",
    )
)
def submit(
    ctx: typer.Context,
    spec_file: Annotated[
        Path | None,
        typer.Argument(help="A JobSpec as .json/.yaml/.yml (the flags below override it)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help=field_help(JobSpec, "name", "Run name"))] = None,
    dataset: Annotated[
        str | None, typer.Option(help=field_help(JobSpec, "dataset", "Dataset"))
    ] = None,
    arch: Annotated[str | None, typer.Option(help=field_help(ModelSpec, "arch", "Network"))] = None,
    hidden: Annotated[
        str | None,
        typer.Option(
            help=f"Layer widths (MLP) or channels (CNN), e.g. 100,100,100 (each 1 to "
            f"{MAX_WIDTH:,}, at most {MAX_DEPTH} layers).",
            show_default=False,
        ),
    ] = None,
    activation: Annotated[
        str | None, typer.Option(help=field_help(ModelSpec, "activation", "Nonlinearity"))
    ] = None,
    norm: Annotated[
        str | None, typer.Option(help=field_help(ModelSpec, "norm", "Normalization"))
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help=field_help(OptimizerSpec, "lr", "Learning rate"))
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help=field_help(OptimizerSpec, "name", "Optimizer"))
    ] = None,
    momentum: Annotated[
        float | None,
        typer.Option(help=field_help(OptimizerSpec, "momentum", "SGD momentum")),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=field_help(JobSpec, "batch_size", "Mini-batch size"))
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help=field_help(JobSpec, "steps", "Training steps"))
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(help=field_help(JobSpec, "eval_every", "Evaluate every N steps")),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=field_help(JobSpec, "seed", "Random seed"))
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retrying with the same key returns the same run.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the run until it ends.")] = False,
) -> None:
    """Submit one training run; prints its full id (for scripts).

    Start from a spec file, the defaults, or both; each flag sets one field. The spec is
    validated here first, so a bad field fails fast with its name and bound (exit 2).
    """
    spec = load_spec_file(spec_file) if spec_file else {}
    overrides = {
        "name": name,
        "dataset": dataset,
        "model.arch": arch,
        "model.hidden": parse_hidden(hidden) if hidden is not None else None,
        "model.activation": activation,
        "model.norm": norm,
        "optimizer.name": optimizer,
        "optimizer.lr": lr,
        "optimizer.momentum": momentum,
        "batch_size": batch_size,
        "steps": steps,
        "eval_every": eval_every,
        "seed": seed,
    }
    for path, value in overrides.items():
        if value is not None:
            set_path(spec, path, value)
    job = validate_spec(spec)
    with connected(ctx) as client:
        run = client.submit(job, idempotency_key=idempotency_key)
        if not watch:
            typer.echo(run["id"])
            return
        console.print(f"submitted run [bold]{run['id']}[/bold] ({escape(run['name'])})")
        code = follow_run(client, run["id"])
    raise typer.Exit(code)


@command(epilog=examples("bnlab show 6f1c2a9b", "bnlab show RUN_ID --json > run.json"))
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help=RUN_ID_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the RunOut as JSON.")] = False,
) -> None:
    """Show one run: status, spec, summary and its latest metric values."""
    with connected(ctx) as client:
        run_id = client.resolve_run_id(run_id)
        run = client.get_run(run_id)
        if as_json:
            typer.echo(json.dumps(run, indent=2))
            return
        latest = latest_values(client.metrics_page(run_id, max_points=10))
    details = Table.grid(padding=(0, 2))
    details.add_column(style="bold", no_wrap=True)
    details.add_column(overflow="fold")
    status = styled_status(run.get("status"))
    if run.get("status_reason"):
        status += f"  {escape(str(run['status_reason']))}"
    spec = run.get("spec") or {}
    rows = [
        ("id", run.get("id")),
        ("name", escape(str(run.get("name")))),
        ("status", status),
        *((label, escape(text)) for label, text in spec_rows(spec)),
        ("step", f"{run.get('last_step') or 0}/{spec.get('steps')}"),
        ("sweep", run.get("sweep_id")),
        ("tags", escape(" ".join(run.get("tags") or []))),
        ("note", escape(str(run["note"])) if run.get("note") else None),
        ("created", short_time(run.get("created_at"))),
        ("started", short_time(run.get("started_at"))),
        ("finished", short_time(run.get("finished_at"))),
        ("worker", run.get("worker")),
        ("device", run.get("device")),
        ("torch", run.get("torch_version")),
        ("attempt", run.get("attempt")),
        ("wall time", f"{run['wall_time']:.1f}s" if run.get("wall_time") else None),
        ("diverged at", run.get("diverged_step")),
        ("cancel requested", "yes" if run.get("cancel_requested") else None),
        ("error", escape(str(run["error"])) if run.get("error") else None),
    ]
    for label, value in rows:
        if value not in (None, ""):
            details.add_row(label, str(value))
    console.print(details)
    summary = run.get("summary") or {}
    if summary:
        console.print(key_value_table("summary", summary))
    if latest:
        console.print(key_value_table("latest metrics (step)", latest))


@command(
    epilog=examples(
        "bnlab watch 6f1c2a9b",
        "bnlab submit spec.yaml --watch   # the same",
        "bnlab watch --sweep 0d3e77c4     # every run of a sweep",
    )
)
def watch(
    ctx: typer.Context,
    run_id: Annotated[
        str | None, typer.Argument(help=RUN_ID_HELP + " Or --sweep.", show_default=False)
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="Follow every run of this sweep (id or unique prefix) instead.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds.", show_default=False)
    ] = None,
) -> None:
    """Follow a run live (step counter, loss and accuracy) until it ends, or with --sweep
    every run of a sweep (runs finished per status) until all have ended.

    Exit code 0 only if every run followed succeeded; 1 if any failed, diverged or was
    cancelled.
    """
    if (run_id is None) == (sweep is None):
        fail("give a run id or --sweep SWEEP_ID (one of them)", EXIT_INVALID)
    with connected(ctx) as client:
        if sweep is not None:
            code = follow_sweep(client, client.resolve_sweep_id(sweep), timeout=timeout)
        else:
            code = follow_run(client, client.resolve_run_id(str(run_id)), timeout=timeout)
    raise typer.Exit(code)


@command(epilog=examples("bnlab cancel 6f1c2a9b"))
def cancel(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help=RUN_ID_HELP)]) -> None:
    """Cancel a run: a queued one at once, a running one is stopped by its worker."""
    with connected(ctx) as client:
        run = client.cancel(client.resolve_run_id(run_id))
    if run.get("status") == RunStatus.cancelled:
        console.print(f"{run_label(run)} cancelled")
    else:
        console.print(f"{run_label(run)} {run.get('status')}: cancellation requested")


@command(epilog=examples("bnlab delete 6f1c2a9b"))
def delete(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help=RUN_ID_HELP)]) -> None:
    """Delete a finished run and its metrics (cancel a live one first)."""
    with connected(ctx) as client:
        full_id = client.resolve_run_id(run_id)
        client.delete(full_id)
    console.print(f"run {short_id(full_id)} deleted")


@command(
    epilog=examples(
        "bnlab download 6f1c2a9b                 # ./bnlab-6f1c2a9b-model.pt",
        "bnlab download 6f1c2a9b -o models/mlp.pt",
    )
)
def download(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help=RUN_ID_HELP)],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="File or folder to save it in.", show_default=False),
    ] = Path("."),
) -> None:
    """Download a finished run's final model (a torch state_dict for bncore.models)."""
    with connected(ctx) as client:
        path = client.download(client.resolve_run_id(run_id), output)
    console.print(f"saved {escape(str(path))} ({path.stat().st_size:,} bytes)")
