"""``bnlab reproduce``: run the paper-reproduction suite and print its verdicts.

The suite itself (experiments, verdicts, the report, the embedded server) is
:mod:`service.reproduce`; this module only parses options and shows progress. The suite is
imported when the command runs (it loads matplotlib and, without --server, starts an embedded
server through ``service.reproduce``'s embedded module), not whenever ``bnlab`` starts.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from service.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    CliState,
    command,
    console,
    err_console,
    examples,
    fail,
    make_client,
)
from service.cli.format import NotedProgress
from service.client import BnlabError


@command(
    epilog=examples(
        "bnlab reproduce --quick           # a few minutes, embedded server",
        "bnlab reproduce --profile report --out docs   # real data → docs/reproduction.md",
        "bnlab reproduce --profile paper --out paper   # hours; rerun it to resume",
        "bnlab reproduce --only faster-training --only higher-learning-rates",
        "bnlab reproduce --server http://host:8000   # a running deployment",
    )
)
def reproduce(
    ctx: typer.Context,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Fewer steps, one seed: minutes instead of ~half an hour."),
    ] = False,
    profile: Annotated[
        str | None,
        typer.Option(
            help="quick (toy data, minutes), full (toy data, 3 seeds), report (Fashion-MNIST "
            "and the toy experiments, about 35 min on 2 cores) or paper (the paper's step "
            "counts, hours; finished runs are reused, so rerunning resumes). Default: full, "
            "or quick with --quick.",
            show_default=False,
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Run only this experiment (repeatable).", show_default=False),
    ] = None,
    database: Annotated[
        Path | None,
        typer.Option(
            help="SQLite file of the embedded server (default: a temporary one; with "
            "--profile paper, OUT/bnlab.db). A file named here keeps the runs: a rerun with "
            "the same file reuses the finished ones and trains only what is missing.",
            show_default=False,
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="A running bnlab server to use. Default: an embedded one (SQLite in a "
            "temporary folder, one training process per core); BNLAB_SERVER and the global "
            "--server are not used here, so a reproduction never loads a shared server by "
            "accident.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where reproduction.md and figures/ go.")] = Path(
        "reproduction"
    ),
) -> None:
    """Reproduce the paper's claims (Ioffe & Szegedy 2015) and write a report with verdicts.

    Experiments: see --only's error for the list; each profile runs those it has sweeps for.
    """
    from service import reproduce as suite  # matplotlib and the suite: only for this command

    chosen = profile or ("quick" if quick else "full")
    if chosen not in suite.PROFILES or chosen == "tiny":
        fail(f"unknown profile {chosen!r}: choose quick, full, report or paper", EXIT_INVALID)
    try:
        suite.select_experiments(only, suite.PROFILES[chosen])
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)
    if database is None and chosen == "paper":
        out.mkdir(parents=True, exist_ok=True)
        database = out / "bnlab.db"
    state: CliState = ctx.obj
    with contextlib.ExitStack() as stack:
        if server is None:
            client = stack.enter_context(suite.embedded_client(database=database))
            label = "an embedded server"
        else:
            client = stack.enter_context(make_client(server, state.api_key))
            label = server
        progress = stack.enter_context(NotedProgress(console))
        task = progress.add_task("training runs", total=None, note="")

        def show(done: int, total: int, note: str) -> None:
            progress.update(task, completed=done, total=total, note=escape(note))

        try:
            result = suite.run_suite(
                client,
                quick=quick,
                only=only,
                out_dir=out,
                progress=show,
                profile=chosen,
                server_label=label,
                # A database that outlives the command (named, or the paper's) holds runs a
                # rerun can reuse: an interrupted or partly failed suite resumes.
                reuse=True if database is not None else None,
            )
        except BnlabError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err_console.print("interrupted (queued runs stay on the server)")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    table = Table(title=f"Reproduction ({result.profile}, {result.wall_time / 60:.1f} min)")
    for column in ("experiment", "measured", "verdict"):
        table.add_column(column)
    for item in result.results:
        table.add_row(item.title, escape(item.finding.measured), item.finding.verdict)
    console.print(table)
    console.print(f"report: {result.report}")
