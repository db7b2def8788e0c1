"""``bnlab sweep``: one run per combination of grid values over a base spec, and following it.

Every combination is validated here first (:func:`service.cli.specs.validate_sweep`), so a bad
value is named before anything is created.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from service.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    command,
    connected,
    console,
    err_console,
    examples,
)
from service.cli.format import NotedProgress
from service.cli.specs import load_spec_file, parse_grid, validate_sweep
from service.client import BnlabClient, RunEvent
from service.vocab import FINISHED_STATUSES, MAX_SWEEP_RUNS, RunStatus


def follow_sweep(client: BnlabClient, sweep_id: str, poll_interval: float = 2.0) -> int:
    """A progress bar of finished runs until the whole sweep is done; the exit code.

    Follows the sweep's event stream (status events) through ``BnlabClient.watch_sweep``, which
    falls back to polling every ``poll_interval`` seconds on a server without one."""
    sweep = client.get_sweep(sweep_id)
    statuses = {run["id"]: run.get("status") for run in sweep.get("runs") or []}
    total = len(statuses) or sum((sweep.get("counts") or {}).values())
    with NotedProgress(console) as progress:
        task = progress.add_task(escape(str(sweep.get("name"))), total=total, note="")

        def show() -> None:
            counts = Counter(statuses.values())
            done = sum(n for status, n in counts.items() if status in FINISHED_STATUSES)
            shown = "  ".join(f"{status} {n}" for status, n in sorted(counts.items()) if n)
            progress.update(task, completed=done, note=shown)

        def on_event(event: RunEvent) -> None:
            if event.kind == "status" and "id" in event.data:
                statuses[event.data["id"]] = event.data.get("status")
                show()
            elif event.kind == "deleted":
                statuses.pop(event.data.get("run_id"), None)
                show()

        show()
        try:
            final = client.watch_sweep(sweep_id, on_event=on_event, poll_interval=poll_interval)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print(f"stopped watching; sweep {sweep_id} goes on")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        statuses = {run["id"]: run.get("status") for run in final.get("runs") or []}
        show()
    console.print(f"compare with: bnlab compare --sweep {sweep_id}")
    failed = Counter(statuses.values()).get(RunStatus.failed, 0)
    if failed:
        err_console.print(f"[bold red]✘[/bold red] {failed} run(s) of the sweep failed")
        return EXIT_FAILED
    return 0


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
    watch: Annotated[bool, typer.Option("--watch", help="Follow until all runs end.")] = False,
) -> None:
    """See SWEEP_HELP (its text names the run limit)."""
    base = load_spec_file(spec_file)
    parsed = parse_grid(grid)
    count = validate_sweep(base, parsed)
    sweep_name = name or str(base.get("name") or spec_file.stem)
    with connected(ctx) as client:
        created = client.sweep(sweep_name, base, parsed)
        if not watch:
            typer.echo(created["id"])
            err_console.print(
                f"{count} run(s) queued; follow with `bnlab runs --sweep {created['id']}`"
            )
            return
        console.print(f"sweep [bold]{created['id']}[/bold]: {count} run(s)")
        code = follow_sweep(client, created["id"])
    raise typer.Exit(code)
