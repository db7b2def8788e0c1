"""Commands on single runs: ``submit``, ``runs``, ``show``, ``watch``, ``cancel``, ``delete``,
``download``.

Wherever a run id is taken, a unique prefix of it works too (tables show the first 8
characters): :meth:`service.client.BnlabClient.resolve_run_id` turns it into the full id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bncore.spec import MAX_DEPTH, MAX_WIDTH, JobSpec, ModelSpec, OptimizerSpec
from service.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    command,
    connected,
    console,
    err_console,
    examples,
)
from service.cli.format import (
    ID_COLUMN,
    NUMBER,
    STATUS_STYLE,
    NotedProgress,
    add_columns,
    fmt_number,
    format_metrics,
    key_value_table,
    latest_values,
    run_label,
    short_time,
    spec_rows,
    styled_status,
    table,
)
from service.cli.specs import field_help, load_spec_file, parse_hidden, set_path, validate_spec
from service.client import BnlabClient, RunEvent
from service.vocab import ALL_STATUSES, FINISHED_STATUSES, RunStatus, short_id

RUN_ID_HELP = "The run's id, or a unique prefix of it (the 8 characters tables show)."


# ----------------------------------------------------------------------------- watching


def report_outcome(run: Mapping[str, Any]) -> int:
    """Print how a finished run ended; the exit code: 0 only for succeeded."""
    status = run.get("status")
    summary = run.get("summary") or {}
    label = run_label(run)
    if status == RunStatus.succeeded:
        best, final = summary.get("best_test_acc"), summary.get("final_test_acc")
        details = []
        if isinstance(best, int | float):
            step = summary.get("best_test_acc_step")
            details.append(f"best test acc {best:.4f}" + (f" (step {step})" if step else ""))
        if isinstance(final, int | float):
            details.append(f"final test acc {final:.4f}")
        if isinstance(run.get("wall_time"), int | float):
            details.append(f"{run['wall_time']:.1f}s")
        console.print(f"[green]✔ {escape(label)} succeeded[/green]  " + ", ".join(details))
        return 0
    reason = run.get("error") or run.get("status_reason") or ""
    where = ""
    if status == RunStatus.diverged and run.get("diverged_step") is not None:
        where = f" at step {run['diverged_step']}"
    message = f"{label} {status}{where}" + (f": {reason}" if reason else "")
    err_console.print(f"[bold red]✘[/bold red] {escape(message)}", soft_wrap=True)
    return EXIT_FAILED


def follow_run(client: BnlabClient, run_id: str, timeout: float | None = None) -> int:
    """A live progress bar of a run's steps until it ends, its status and latest loss/accuracy
    on the line below; returns the exit code."""
    run = client.get_run(run_id)
    if run.get("status") in FINISHED_STATUSES:
        return report_outcome(run)
    total = int((run.get("spec") or {}).get("steps") or 0) or None
    latest: dict[str, Any] = {}
    status = str(run.get("status"))

    def note() -> str:
        return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]  {format_metrics(latest)}"

    progress = NotedProgress(console)
    with progress:
        task = progress.add_task(
            escape(str(run.get("name"))), total=total, completed=run.get("last_step") or 0, note=""
        )
        progress.update(task, note=note())

        def on_event(event: RunEvent) -> None:
            nonlocal status
            if event.kind == "metrics":
                latest.update(event.data.get("values") or {})
                step = event.data.get("step")
                if isinstance(step, int):
                    progress.update(task, completed=step)
            elif event.kind == "status" and "status" in event.data:
                status = str(event.data["status"])
                if isinstance(event.data.get("last_step"), int):
                    progress.update(task, completed=event.data["last_step"])
            progress.update(task, note=note())

        try:
            final = client.wait(run_id, on_event=on_event, timeout=timeout)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print(
                f"stopped watching; run {run_id} goes on (`bnlab cancel {short_id(run_id)}` "
                "stops it)"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    return report_outcome(final)


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


@command(
    epilog=examples(
        "bnlab runs",
        "bnlab runs --status running",
        "bnlab runs --sweep SWEEP_ID --limit 100",
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
    sweep: Annotated[str | None, typer.Option(help="Only the runs of this sweep.")] = None,
    name: Annotated[str | None, typer.Option(help="Only runs with this name.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1)] = 20,
) -> None:
    """List runs, newest first: short id, name, seed, status, step, best test accuracy."""
    with connected(ctx) as client:
        items = client.list_runs(status=status, sweep_id=sweep, name=name, limit=limit)
    if not items:
        console.print("no runs")
        return
    console.print(runs_table(items))


def runs_table(items: list[Mapping[str, Any]]) -> Table:
    """Every column keeps a readable minimum at 80 columns: ids are short (8 characters, what
    `show` and the others accept back), names wrap rather than vanish."""
    shown = add_columns(
        table(f"{len(items)} run(s)"),
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
        shown.add_row(
            short_id(str(run["id"])),
            escape(str(run.get("name"))),
            "" if spec.get("seed") is None else str(spec["seed"]),
            styled_status(run.get("status")),
            f"{run.get('last_step') or 0}/{spec['steps']}" if spec.get("steps") else "",
            fmt_number(summary.get("best_test_acc")),
            short_time(run.get("created_at"))[:16],  # to the minute
        )
    return shown


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


@command(epilog=examples("bnlab watch 6f1c2a9b", "bnlab submit spec.yaml --watch   # the same"))
def watch(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help=RUN_ID_HELP)],
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds.", show_default=False)
    ] = None,
) -> None:
    """Follow a run live (step counter, loss and accuracy) until it ends.

    Exit code 0 only if it succeeded; 1 if it failed, diverged or was cancelled.
    """
    with connected(ctx) as client:
        code = follow_run(client, client.resolve_run_id(run_id), timeout=timeout)
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
