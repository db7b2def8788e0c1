"""What every ``bnlab`` command shares: the Typer app and its global options, the consoles,
exit codes, and the one way a command talks to the server (:func:`connected`).

The command modules (server, runs, sweeps, compare, reproduce) register their commands on
:data:`app` when ``service.cli`` imports them; this module imports none of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from service.client import DEFAULT_SERVER, BnlabClient, BnlabError

EXIT_FAILED = 1  # the server answered with an error, could not be reached, or a run failed
EXIT_INVALID = 2  # invalid input: a bad spec, option, file or id
EXIT_INTERRUPTED = 130

SERVER_HELP = (
    f"URL of the bnlab server to talk to (the one `bnlab serve` started; it listens on "
    f"{DEFAULT_SERVER} unless given --host/--port)."
)

app = typer.Typer(
    name="bnlab",
    help="Train MLPs/CNNs with and without Batch Normalization, watch them, and compare how "
    "fast each reaches the baseline's accuracy (Ioffe & Szegedy, 2015), through a bnlab "
    "server.\n\nServer side: serve, worker, migrate, hash-key act on this machine (BNLAB_* "
    "settings). Every other command is a client of a running server: --server or "
    f"BNLAB_SERVER, default {DEFAULT_SERVER}.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "  bnlab serve                 # API + dashboard on http://127.0.0.1:8000\n\n"
        "  bnlab submit --dataset digits --norm batchnorm --steps 500 --watch\n\n"
        "  bnlab sweep base.yaml -g model.norm=none,batchnorm -g seed=0,1,2\n\n"
        "  bnlab compare --sweep SWEEP_ID --plot fig.png\n\n"
        "  BNLAB_SERVER=http://host:8000 bnlab runs   # talk to another server"
    ),
)
console = Console()
err_console = Console(stderr=True)


@dataclass
class CliState:
    server: str
    api_key: str | None


def make_client(server: str, api_key: str | None) -> BnlabClient:
    """The one place the CLI builds its HTTP client (tests replace it)."""
    return BnlabClient(server, api_key=api_key)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print a clear message (no traceback) on stderr and exit non-zero."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def connected(ctx: typer.Context) -> Iterator[BnlabClient]:
    """A client for the command's server; API and connection errors end the command cleanly:
    the server's problem (detail and field errors) on stderr, exit 2 for invalid input (400,
    413, 422), 1 for anything else."""
    state: CliState = ctx.obj
    client = make_client(state.server, state.api_key)
    try:
        yield client
    except BnlabError as exc:
        code = EXIT_INVALID if exc.status in (400, 413, 422) else EXIT_FAILED
        fail(str(exc), code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        client.close()


def log_line(text: str) -> None:
    """A server-side log line: never wrapped (it may go to a file), markup allowed."""
    console.print(text, soft_wrap=True, highlight=False)


def examples(*lines: str) -> str:
    """An epilog of example command lines for a command's --help."""
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  {line}" for line in lines)


def reflow(text: str) -> str:
    """A docstring as help text: lines of a paragraph joined, so the terminal wraps them.

    Typer keeps the line breaks of every paragraph after the first, which at 80 columns
    breaks sentences in odd places. Paragraphs (blank-line separated) stay apart.
    """
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


Command = TypeVar("Command", bound=Callable[..., Any])


def command(
    name: str | None = None, *, epilog: str | None = None, help_text: str | None = None
) -> Callable[[Command], Command]:
    """``@app.command`` with the function's docstring (or ``help_text``) reflowed as its help."""

    def register(function: Command) -> Command:
        text = reflow(help_text or function.__doc__ or "")
        return app.command(name, help=text, epilog=epilog)(function)

    return register


@app.callback()
def main(
    ctx: typer.Context,
    server: Annotated[
        str, typer.Option("--server", envvar="BNLAB_SERVER", help=SERVER_HELP)
    ] = DEFAULT_SERVER,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="BNLAB_API_KEY",
            help="API key, sent as 'Authorization: Bearer KEY' (needed for writes when the "
            "server sets BNLAB_API_KEY_HASHES).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Global options, before the command: bnlab --server URL COMMAND …"""
    ctx.obj = CliState(server=server, api_key=api_key)
