"""Following runs live: one run (a step counter, its status and latest metrics) or every run
of a sweep (runs finished, counts per status), until they end; the exit code says how.

Used by ``submit --watch``, ``sweep --watch`` and ``watch`` (a run, or ``--sweep``). Without a
terminal (a pipe, a file, CI) rich draws the progress once, when it is done, so scripts get
the final state and no control characters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import typer
from rich.markup import escape

from service.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, console, err_console
from service.cli.format import STATUS_STYLE, NotedProgress, format_metrics, run_label
from service.client import BnlabClient, RunEvent
from service.vocab import ALL_STATUSES, FINISHED_STATUSES, RunStatus, short_id

# Statuses in their life-cycle order (queued, running, then the outcomes), for count columns.
STATUS_ORDER = {str(status.value): index for index, status in enumerate(ALL_STATUSES)}


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


def follow_sweep(
    client: BnlabClient, sweep_id: str, poll_interval: float = 2.0, timeout: float | None = None
) -> int:
    """A progress bar of finished runs until the whole sweep is done; the exit code: 0 only
    if every run succeeded.

    Follows the sweep's event stream (status events) through ``BnlabClient.watch_sweep``, which
    falls back to polling every ``poll_interval`` seconds on a server without one. Without a
    terminal (a pipe, a file, CI) the bar is drawn once, when the sweep is done."""
    sweep = client.get_sweep(sweep_id)
    statuses = {run["id"]: run.get("status") for run in sweep.get("runs") or []}
    total = len(statuses) or sum((sweep.get("counts") or {}).values())
    with NotedProgress(console) as progress:
        task = progress.add_task(escape(str(sweep.get("name"))), total=total, note="")

        def show() -> None:
            counts = Counter(statuses.values())
            done = sum(n for status, n in counts.items() if status in FINISHED_STATUSES)
            progress.update(task, completed=done, note=counts_text(counts))

        def on_event(event: RunEvent) -> None:
            if event.kind == "status" and "id" in event.data:
                statuses[event.data["id"]] = event.data.get("status")
                show()
            elif event.kind == "deleted":
                statuses.pop(event.data.get("run_id"), None)
                show()

        show()
        try:
            final = client.watch_sweep(
                sweep_id, on_event=on_event, timeout=timeout, poll_interval=poll_interval
            )
        except KeyboardInterrupt:
            progress.stop()
            err_console.print(f"stopped watching; sweep {sweep_id} goes on")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        statuses = {run["id"]: run.get("status") for run in final.get("runs") or []}
        show()
    console.print(f"compare with: bnlab compare --sweep {short_id(sweep_id)}")
    unsuccessful = Counter(s for s in statuses.values() if s != RunStatus.succeeded)
    if unsuccessful:
        err_console.print(
            f"[bold red]✘[/bold red] {sum(unsuccessful.values())} of {len(statuses)} run(s) "
            f"did not succeed: {counts_text(unsuccessful)}"
        )
        return EXIT_FAILED
    return 0


def ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """The statuses with runs, in life-cycle order (unknown ones last)."""
    ranked = sorted(counts.items(), key=lambda pair: STATUS_ORDER.get(str(pair[0]), 99))
    return [(str(status), n) for status, n in ranked if n]


def counts_text(counts: Mapping[str, int]) -> str:
    """{"succeeded": 4, "failed": 1} → "succeeded 4  failed 1"."""
    return "  ".join(f"{status} {n}" for status, n in ordered(counts))
