"""The ``bnlab`` command: run the server and workers, submit and watch runs, compare them.

Server-side commands (``serve``, ``worker``, ``migrate``, ``hash-key``) act on this machine with
the ``BNLAB_*`` settings. Every other command is an HTTP client of a running server
(:class:`service.client.BnlabClient`), chosen with ``--server`` / ``BNLAB_SERVER``.

Exit codes: 0 success; 1 the server answered with an error, could not be reached, or the run
did not succeed; 2 invalid input (a bad spec, option or file); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bncore.spec import JobSpec
from service.client import (
    DEFAULT_SERVER,
    FINISHED_STATUSES,
    BnlabClient,
    BnlabError,
    RunEvent,
)

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130
MAX_SWEEP_RUNS = 1000
STATUS_STYLE = {
    "queued": "cyan",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "diverged": "magenta",
    "cancelled": "yellow",
}

app = typer.Typer(
    name="bnlab",
    help="Train and compare Batch Normalization experiments through the bnlab service.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "  bnlab serve                                  # API + dashboard on :8000\n\n"
        "  bnlab submit --dataset digits --norm batchnorm --steps 500 --watch\n\n"
        "  bnlab sweep base.yaml --grid model.norm=none,batchnorm --grid seed=0,1,2\n\n"
        "  bnlab compare --sweep SWEEP_ID --plot fig.png"
    ),
)
console = Console()
err_console = Console(stderr=True)


# ----------------------------------------------------------------------------- plumbing


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
    """A client for the command's server; API and connection errors end the command cleanly."""
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


@app.callback()
def main(
    ctx: typer.Context,
    server: Annotated[
        str,
        typer.Option("--server", envvar="BNLAB_SERVER", help="URL of the bnlab server to talk to."),
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
    """[bold]bnlab[/bold]: train MLPs/CNNs with and without Batch Normalization, watch them,
    and compare how fast each reaches the baseline's accuracy (Ioffe & Szegedy, 2015)."""
    ctx.obj = CliState(server=server, api_key=api_key)


# ----------------------------------------------------------------------------- server side


def display_url(url: str) -> str:
    """A database or broker URL with any password masked, for logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. redis://): mask by hand
        scheme, sep, rest = url.partition("://")
        creds, at, host = rest.rpartition("@")
        if not sep or not at or ":" not in creds:
            return url
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


@app.command(
    epilog=examples(
        "bnlab serve",
        "bnlab serve --host 0.0.0.0 --port 8080",
        "BNLAB_BROKER_URL=redis://127.0.0.1:6379/0 bnlab serve   # queue runs for Celery",
    )
)
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    """Run the API and the dashboard: migrate the database, then start uvicorn.

    Without [bold]BNLAB_BROKER_URL[/bold] the server is [italic]embedded[/italic]: it trains
    runs itself, each in a subprocess. With it, runs are queued for [bold]bnlab worker[/bold].
    """
    from service.migrate import upgrade
    from service.settings import get_settings

    settings = get_settings()
    database = display_url(settings.database_url)
    log_line(f"database   {database}")
    try:
        upgrade(settings.database_url)
    except Exception as exc:
        fail(f"could not migrate the database {database}: {exc}")
    log_line("schema     up to date (alembic upgrade head)")
    if settings.embedded:
        log_line(
            f"mode       embedded: this server trains up to {settings.embedded_concurrency} "
            "run(s) at a time, each in its own subprocess (set BNLAB_BROKER_URL for Celery)"
        )
    else:
        log_line(
            f"mode       Celery: runs are queued on {display_url(settings.broker_url or '')}; "
            "start workers with `bnlab worker`"
        )
    auth = "API key required for writes" if settings.api_key_hashes else "open (no API keys)"
    log_line(f"auth       {auth}")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown_host}:{port}"
    log_line(f"[bold]bnlab[/bold]      {base}  (dashboard {base}/, API docs {base}/docs)")

    import uvicorn

    uvicorn.run("service.app:create_app", factory=True, host=host, port=port, reload=reload)


def worker_command(concurrency: int, queues: Sequence[str], loglevel: str) -> list[str]:
    """The Celery worker command line (by module name: the service never imports workers)."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
    ]
    if queues:
        command += ["--queues", ",".join(queues)]
    return command


@app.command(
    epilog=examples(
        "BNLAB_BROKER_URL=redis://127.0.0.1:6379/0 bnlab worker",
        "bnlab worker --concurrency 1 --queue gpu --loglevel debug",
    )
)
def worker(
    concurrency: Annotated[
        int, typer.Option(help="Runs trained at once by this worker (one per GPU).", min=1)
    ] = 1,
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-Q",
            help="Queue(s) to consume (repeatable). Default: BNLAB_QUEUE (bnlab).",
            show_default=False,
        ),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
) -> None:
    """Start a Celery worker that trains queued runs (needs [bold]BNLAB_BROKER_URL[/bold]).

    Replaces this process with `python -m celery -A workers.celery_app worker --pool prefork`.
    """
    from service.settings import get_settings

    settings = get_settings()
    if not settings.broker_url:
        fail(
            "BNLAB_BROKER_URL is not set: a worker needs a broker (e.g. "
            "BNLAB_BROKER_URL=redis://127.0.0.1:6379/0). Without one, `bnlab serve` trains "
            "runs itself (embedded mode) and no worker is needed."
        )
    queues = queue or [settings.queue]
    command = worker_command(concurrency, queues, loglevel)
    log_line(
        f"worker     broker {display_url(settings.broker_url)} (queue {', '.join(queues)}), "
        f"database {display_url(settings.database_url)}"
    )
    log_line(f"exec       {' '.join(command)}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command[0], command)


@app.command(
    epilog=examples("bnlab migrate", "BNLAB_DATABASE_URL=postgresql+psycopg://… bnlab migrate")
)
def migrate() -> None:
    """Bring the database (BNLAB_DATABASE_URL) to the newest schema: alembic upgrade head."""
    from service.migrate import upgrade
    from service.settings import get_settings

    url = get_settings().database_url
    try:
        upgrade(url)
    except Exception as exc:
        fail(f"could not migrate {display_url(url)}: {exc}")
    console.print(f"{display_url(url)}: schema up to date")


@app.command("hash-key", epilog=examples("bnlab hash-key s3cret   # → put in BNLAB_API_KEY_HASHES"))
def hash_key_command(
    key: Annotated[str, typer.Argument(help="The API key clients will send.")],
) -> None:
    """Print the SHA-256 digest of an API key, for the server's BNLAB_API_KEY_HASHES.

    The server keeps digests only (comma-separated in BNLAB_API_KEY_HASHES); clients send the
    key itself with --api-key or BNLAB_API_KEY.
    """
    from service.settings import hash_key

    typer.echo(hash_key(key))


# ----------------------------------------------------------------------------- specs


def load_spec_file(path: Path) -> dict[str, Any]:
    """A spec (or sweep base) from a .json, .yaml or .yml file."""
    if not path.is_file():
        fail(f"spec file not found: {path}", EXIT_INVALID)
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            fail(f"{path}: a spec file must end in .json, .yaml or .yml", EXIT_INVALID)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        fail(f"{path} is not valid {path.suffix.lstrip('.').upper()}: {exc}", EXIT_INVALID)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(f"{path}: a spec must be a mapping of fields, got {type(data).__name__}", EXIT_INVALID)
    return data


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """spec["model"]["norm"] = value for path "model.norm" (creating parents)."""
    node = spec
    *parents, leaf = path.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def parse_hidden(text: str) -> list[int]:
    """ "100,100,100" → [100, 100, 100]."""
    try:
        widths = [int(part) for part in text.replace(" ", "").strip("[]").split(",") if part]
    except ValueError:
        fail(f"--hidden must be comma-separated integers like 100,100,100, got {text!r}", 2)
    if not widths:
        fail("--hidden needs at least one layer width, e.g. 100,100,100", EXIT_INVALID)
    return widths


def validate_spec(spec: Mapping[str, Any], what: str = "spec") -> JobSpec:
    """JobSpec validation here, before any HTTP, with the failing fields named."""
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as exc:
        fail(f"invalid {what}:\n" + format_validation_errors(exc), EXIT_INVALID)


def format_validation_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"]) or "(spec)"
        got = f" (got {error['input']!r})" if "input" in error and error["loc"] else ""
        lines.append(f"  {loc}: {error['msg']}{got}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- watching


def format_metrics(values: Mapping[str, Any]) -> str:
    """The few numbers worth a glance while training."""
    parts = []
    for key, label in (
        ("train_loss", "loss"),
        ("train_acc", "acc"),
        ("test_loss", "test loss"),
        ("test_acc", "test acc"),
    ):
        value = values.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {value:.4g}")
    return "  ".join(parts)


def report_outcome(run: Mapping[str, Any]) -> int:
    """Print how a finished run ended; the exit code: 0 only for succeeded."""
    status = run.get("status")
    summary = run.get("summary") or {}
    label = f"run {run.get('id')} ({run.get('name')})"
    if status == "succeeded":
        best, final = summary.get("best_test_acc"), summary.get("final_test_acc")
        details = []
        if isinstance(best, int | float):
            details.append(f"best test acc {best:.4f} (step {summary.get('best_test_acc_step')})")
        if isinstance(final, int | float):
            details.append(f"final test acc {final:.4f}")
        if isinstance(run.get("wall_time"), int | float):
            details.append(f"{run['wall_time']:.1f}s")
        console.print(f"[green]✔ {escape(label)} succeeded[/green]  " + ", ".join(details))
        return 0
    reason = run.get("error") or run.get("status_reason") or ""
    where = ""
    if status == "diverged" and run.get("diverged_step") is not None:
        where = f" at step {run['diverged_step']}"
    message = f"{label} {status}{where}" + (f": {reason}" if reason else "")
    err_console.print(f"[bold red]✘[/bold red] {escape(message)}", soft_wrap=True)
    return EXIT_FAILED


def follow_run(client: BnlabClient, run_id: str, timeout: float | None = None) -> int:
    """A live progress bar of a run's steps (loss/acc) until it ends; returns the exit code."""
    run = client.get_run(run_id)
    if run.get("status") in FINISHED_STATUSES:
        return report_outcome(run)
    total = int((run.get("spec") or {}).get("steps") or 0) or None
    latest: dict[str, Any] = {}
    name = escape(str(run.get("name")))
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[numbers]}"),
        TimeElapsedColumn(),
        console=console,
    )

    def describe(status: str) -> str:
        return f"{name} [{STATUS_STYLE.get(status, 'white')}]{status}[/]"

    with progress:
        task = progress.add_task(
            describe(run["status"]), total=total, completed=run.get("last_step") or 0, numbers=""
        )

        def on_event(event: RunEvent) -> None:
            if event.kind == "metrics":
                latest.update(event.data.get("values") or {})
                step = event.data.get("step")
                progress.update(task, numbers=format_metrics(latest))
                if isinstance(step, int):
                    progress.update(task, completed=step)
            elif event.kind == "status" and "status" in event.data:
                progress.update(task, description=describe(event.data["status"]))
                if isinstance(event.data.get("last_step"), int):
                    progress.update(task, completed=event.data["last_step"])

        try:
            final = client.wait(run_id, on_event=on_event, timeout=timeout)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print(
                f"stopped watching; run {run_id} goes on (`bnlab cancel {run_id}` stops it)"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    return report_outcome(final)


# ----------------------------------------------------------------------------- runs


@app.command(
    epilog=examples(
        "bnlab submit --dataset digits --hidden 64,64 --norm batchnorm --lr 0.5 --steps 500",
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
    name: Annotated[str | None, typer.Option(help="Run name.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="mnist1d | digits | synthetic | mnist_idx | npz")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="mlp | cnn")] = None,
    hidden: Annotated[
        str | None, typer.Option(help="Layer widths (MLP) or channels (CNN): 100,100,100")
    ] = None,
    activation: Annotated[str | None, typer.Option(help="sigmoid | tanh | relu")] = None,
    norm: Annotated[str | None, typer.Option(help="none | batchnorm | torch_batchnorm")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd | adam")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Mini-batch size.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retrying with the same key returns the same run.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the run until it ends.")] = False,
) -> None:
    """Submit one training run; prints its id.

    The spec is validated here first, so a bad field fails fast with its name and bound.
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


@app.command(
    epilog=examples(
        "bnlab runs",
        "bnlab runs --status running",
        "bnlab runs --sweep SWEEP_ID --limit 100",
    )
)
def runs(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(help="queued | running | succeeded | failed | diverged | cancelled"),
    ] = None,
    sweep: Annotated[str | None, typer.Option(help="Only the runs of this sweep.")] = None,
    name: Annotated[str | None, typer.Option(help="Only runs with this name.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1)] = 20,
) -> None:
    """List runs, newest first."""
    with connected(ctx) as client:
        items = client.list_runs(status=status, sweep_id=sweep, name=name, limit=limit)
    if not items:
        console.print("no runs")
        return
    table = Table(title=f"{len(items)} run(s)", title_justify="left")
    # Full ids (folded on a narrow terminal, never cut: they are what users copy); every
    # other column keeps a readable minimum instead of collapsing to nothing at 80 columns.
    table.add_column("id", overflow="fold", min_width=12)
    table.add_column("name", min_width=8)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("best test acc", justify="right", min_width=6)
    table.add_column("created (UTC)", min_width=10)
    for run in items:
        spec_steps = (run.get("spec") or {}).get("steps")
        summary = run.get("summary") or {}
        table.add_row(
            run["id"],
            escape(str(run.get("name"))),
            styled_status(run.get("status")),
            f"{run.get('last_step') or 0}/{spec_steps}" if spec_steps else "",
            fmt_number(summary.get("best_test_acc")),
            short_time(run.get("created_at")),
        )
    console.print(table)


@app.command(epilog=examples("bnlab show 6f1c…", "bnlab show RUN_ID --json > run.json"))
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the RunOut as JSON.")] = False,
) -> None:
    """Show one run: status, spec, summary and its latest metric values."""
    with connected(ctx) as client:
        run = client.get_run(run_id)
        if as_json:
            typer.echo(json.dumps(run, indent=2))
            return
        latest = latest_values(client.metrics_page(run_id, max_points=10))
    details = Table.grid(padding=(0, 2))
    details.add_column(style="bold")
    details.add_column()
    status = styled_status(run.get("status"))
    if run.get("status_reason"):
        status += f"  {escape(str(run['status_reason']))}"
    spec = run.get("spec") or {}
    rows = [
        ("id", run.get("id")),
        ("name", escape(str(run.get("name")))),
        ("status", status),
        ("spec", escape(describe_spec(spec))),
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


@app.command(epilog=examples("bnlab watch RUN_ID", "bnlab submit spec.yaml --watch   # the same"))
def watch(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds.", show_default=False)
    ] = None,
) -> None:
    """Follow a run live (progress bar with loss/accuracy) until it ends.

    Exit code 0 only if it succeeded; 1 if it failed, diverged or was cancelled.
    """
    with connected(ctx) as client:
        code = follow_run(client, run_id, timeout=timeout)
    raise typer.Exit(code)


@app.command(epilog=examples("bnlab cancel RUN_ID"))
def cancel(
    ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="The run's id.")]
) -> None:
    """Cancel a run: a queued one at once, a running one is stopped by its worker."""
    with connected(ctx) as client:
        run = client.cancel(run_id)
    if run.get("status") == "cancelled":
        console.print(f"run {run_id} cancelled")
    else:
        console.print(f"run {run_id} ({run.get('status')}): cancellation requested")


@app.command(epilog=examples("bnlab delete RUN_ID"))
def delete(
    ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="The run's id.")]
) -> None:
    """Delete a finished run and its metrics (cancel a live one first)."""
    with connected(ctx) as client:
        client.delete(run_id)
    console.print(f"run {run_id} deleted")


# ----------------------------------------------------------------------------- sweeps


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: "[1,2],[3]" → ["[1,2]", "[3]"]."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def parse_scalar(text: str) -> Any:
    """A grid value: JSON where it parses (0.1, 3, true, [64,64]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_grid(options: Sequence[str]) -> dict[str, list[Any]]:
    """["model.norm=none,batchnorm", "seed=0,1,2"] → {"model.norm": ["none", "batchnorm"], ...}."""
    grid: dict[str, list[Any]] = {}
    for option in options:
        path, sep, values = option.partition("=")
        path = path.strip()
        if not sep or not path or not values.strip():
            fail(f"--grid wants PATH=V1,V2,… (e.g. model.norm=none,batchnorm), got {option!r}", 2)
        if path in grid:
            fail(f"--grid {path} given twice", EXIT_INVALID)
        grid[path] = [parse_scalar(value) for value in split_top_level(values) if value]
    return grid


def validate_sweep(base: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> int:
    """Validate every combination locally; returns how many runs the sweep makes."""
    count = 1
    for values in grid.values():
        count *= len(values)
    if count > MAX_SWEEP_RUNS:
        fail(f"the grid makes {count} runs, more than the limit of {MAX_SWEEP_RUNS}", 2)
    for combination in itertools.product(*grid.values()):
        spec = json.loads(json.dumps(base))
        for path, value in zip(grid, combination, strict=True):
            set_path(spec, path, value)
        label = ", ".join(f"{p}={v}" for p, v in zip(grid, combination, strict=True))
        validate_spec(spec, what=f"combination {label}")
    return count


def follow_sweep(client: BnlabClient, sweep_id: str, poll_interval: float = 2.0) -> int:
    """A progress bar of finished runs until the whole sweep is done; the exit code.

    Follows the sweep's event stream (status events) through ``BnlabClient.watch_sweep``, which
    falls back to polling every ``poll_interval`` seconds on a server without one."""
    sweep = client.get_sweep(sweep_id)
    statuses = {run["id"]: run.get("status") for run in sweep.get("runs") or []}
    total = len(statuses) or sum((sweep.get("counts") or {}).values())
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(escape(str(sweep.get("name"))), total=total, counts="")

        def show() -> None:
            counts = Counter(statuses.values())
            done = sum(n for status, n in counts.items() if status in FINISHED_STATUSES)
            shown = "  ".join(f"{status} {n}" for status, n in sorted(counts.items()) if n)
            progress.update(task, completed=done, counts=shown)

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
    failed = Counter(statuses.values()).get("failed", 0)
    if failed:
        err_console.print(f"[bold red]✘[/bold red] {failed} run(s) of the sweep failed")
        return EXIT_FAILED
    return 0


@app.command(
    epilog=examples(
        "bnlab sweep base.yaml --grid model.norm=none,batchnorm --grid seed=0,1,2",
        "bnlab sweep base.json --grid optimizer.lr=0.1,0.5,2 --grid 'model.hidden=[64],[64,64]'",
        "bnlab sweep base.yaml --grid model.norm=none,batchnorm --name bn-vs-none --watch",
    )
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
    """Run one training job per combination of the grid values over a base spec."""
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


# ----------------------------------------------------------------------------- compare


@app.command(
    epilog=examples(
        "bnlab compare RUN_A RUN_B",
        "bnlab compare --sweep SWEEP_ID --target 0.9",
        "bnlab compare --sweep SWEEP_ID --plot fig.svg --csv table.csv",
        "bnlab compare RUN_A RUN_B --baseline RUN_A --json > comparison.json",
    )
)
def compare(
    ctx: typer.Context,
    run_ids: Annotated[
        list[str] | None, typer.Argument(help="Run ids (or use --sweep).", show_default=False)
    ] = None,
    sweep: Annotated[str | None, typer.Option(help="Compare all runs of a sweep.")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline run id (default: the first run without BN).")
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(help="Target value (default: the baseline's best).", show_default=False),
    ] = None,
    metric: Annotated[str, typer.Option(help="Metric compared.")] = "test_acc",
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
    marked ≥ or ≤ is a bound: some runs never reached the target.
    """
    if not run_ids and not sweep:
        fail("give run ids or --sweep SWEEP_ID", EXIT_INVALID)
    plot_format = None
    if plot is not None:
        plot_format = plot.suffix.lower().lstrip(".")
        if plot_format not in ("png", "svg"):
            fail(f"--plot must end in .png or .svg, got {plot}", EXIT_INVALID)
    query: dict[str, Any] = {
        "run_ids": run_ids or None,
        "sweep": sweep,
        "baseline": baseline,
        "target": target,
        "metric": metric,
    }
    with connected(ctx) as client:
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


def print_comparison(result: Mapping[str, Any]) -> None:
    """The comparison as two rich tables (runs, arms) and its warnings."""
    metric = result.get("metric", "test_acc")
    target = result.get("target")
    target_text = "none" if target is None else f"{target:.4g}"
    source = {"baseline": " (the baseline's best)", "given": ""}.get(
        result.get("target_source", ""), ""
    )
    console.print(
        f"[bold]{escape(metric)}[/bold]: target {target_text}{source}; baseline arm "
        f"[bold]{escape(str(result.get('baseline_arm')))}[/bold]"
    )
    baseline_id = result.get("baseline_id")
    runs_table = Table(title="runs", title_justify="left")
    runs_table.add_column("run", overflow="fold")
    for header, justify in (
        ("arm", "left"),
        ("seed", "right"),
        ("status", "left"),
        ("best acc", "right"),
        ("final acc", "right"),
        ("steps to target", "right"),
        ("speed-up", "right"),
    ):
        runs_table.add_column(header, justify=justify)
    for run in result.get("runs", []):
        marker = " [dim](baseline)[/dim]" if run.get("id") == baseline_id else ""
        if run.get("steps_to_target") is not None:
            steps = str(run["steps_to_target"])
        else:
            steps = f"not in {run.get('budget')}"
        runs_table.add_row(
            f"{escape(str(run.get('name')))}{marker}\n[dim]{run.get('id')}[/dim]",
            escape(str(run.get("arm"))),
            "" if run.get("seed") is None else str(run["seed"]),
            styled_status(run.get("status"))
            + (f" @{run['diverged_step']}" if run.get("diverged_step") is not None else ""),
            fmt_number(run.get("best_test_acc")),
            fmt_number(run.get("final_test_acc")),
            steps,
            fmt_ratio(run.get("speedup")),
        )
    console.print(runs_table)

    arms_table = Table(title="arms (mean, 95% CI over seeds)", title_justify="left")
    for header, justify in (
        ("arm", "left"),
        ("runs", "right"),
        ("reached", "right"),
        ("steps to target", "right"),
        ("speed-up", "right"),
        (f"best {metric}", "right"),
        ("p", "right"),
    ):
        arms_table.add_column(header, justify=justify)
    for arm in result.get("arms", []):
        label = escape(str(arm.get("label")))
        if arm.get("is_baseline"):
            label += " [dim](baseline)[/dim]"
        arms_table.add_row(
            label,
            str(arm.get("n")),
            f"{arm.get('n_reached')}/{arm.get('n')}",
            fmt_stat(arm.get("steps_to_target"), "{:.0f}"),
            fmt_stat(arm.get("speedup"), "{:.2f}×"),
            fmt_stat(arm.get("best"), "{:.4f}"),
            "" if arm.get("p_value") is None else f"{arm['p_value']:.3g}",
        )
    console.print(arms_table)
    for warning in result.get("warnings", []):
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


# ----------------------------------------------------------------------------- formatting


def styled_status(status: Any) -> str:
    text = str(status)
    return f"[{STATUS_STYLE.get(text, 'white')}]{escape(text)}[/]"


def fmt_number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


def fmt_ratio(value: Any) -> str:
    return f"{value:.2f}×" if isinstance(value, int | float) else "–"


def fmt_stat(stat: Mapping[str, Any] | None, pattern: str) -> str:
    """{"mean", "ci_low", "ci_high", "bound"} → "≥ 800 [700, 900]" (bound: what the mean is).

    An interval of zero width (a single run, or identical seeds) is left out.
    """
    if not stat or stat.get("mean") is None:
        return "–"
    prefix = {"lower": "≥ ", "upper": "≤ "}.get(stat.get("bound") or "", "")
    text = prefix + pattern.format(stat["mean"])
    if stat.get("ci_low") is not None and stat.get("ci_high") is not None:
        low, high = pattern.format(stat["ci_low"]), pattern.format(stat["ci_high"])
        if low != high:
            text += f" [dim]\\[{low}, {high}][/dim]"
    return text


def short_time(value: Any) -> str:
    """ISO-8601 → "2024-06-01 12:34:56"."""
    if not value:
        return ""
    return str(value).replace("T", " ")[:19]


def describe_spec(spec: Mapping[str, Any]) -> str:
    """A one-line summary of a spec: dataset, network, optimizer, batch, seed."""
    model = spec.get("model") or {}
    opt = spec.get("optimizer") or {}
    hidden = "x".join(str(w) for w in model.get("hidden") or [])
    return (
        f"{spec.get('dataset')} {model.get('arch')} [{hidden}] {model.get('activation')} "
        f"norm={model.get('norm')}; {opt.get('name')} lr={opt.get('lr')} "
        f"momentum={opt.get('momentum')}; batch {spec.get('batch_size')}, seed {spec.get('seed')}"
    )


def latest_values(page: Mapping[str, Any]) -> dict[str, str]:
    """The last value of each series of a metrics response, as "value (step)"."""
    latest = {}
    for key, series in sorted((page.get("series") or {}).items()):
        steps, values = series.get("steps") or [], series.get("values") or []
        if steps:
            value = values[-1]
            shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
            latest[key] = f"{shown} ({steps[-1]})"
    return latest


def key_value_table(title: str, values: Mapping[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in values.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(escape(str(key)), escape(shown))
    return table


# ----------------------------------------------------------------------------- reproduce


@app.command(
    epilog=examples(
        "bnlab reproduce --quick                      # a few minutes, embedded server",
        "bnlab reproduce --out docs                   # the full suite → docs/reproduction.md",
        "bnlab reproduce --only faster-training --only higher-learning-rates",
        "bnlab reproduce --server http://host:8000    # against a running deployment",
    )
)
def reproduce(
    ctx: typer.Context,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Fewer steps, one seed: minutes instead of ~half an hour."),
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Run only this experiment (repeatable).", show_default=False),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="A running bnlab server to use; default: an embedded one (SQLite in a temporary "
            "folder, one training process per core).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where reproduction.md and figures/ go.")] = Path(
        "reproduction"
    ),
) -> None:
    """Reproduce the paper's claims (Ioffe & Szegedy 2015) and write a report with verdicts.

    Experiments: faster-training, stable-distributions, higher-learning-rates,
    saturating-nonlinearities, inference-statistics, regularization.
    """
    from service import reproduce as suite

    try:
        suite.select_experiments(only)
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)
    state: CliState = ctx.obj
    with contextlib.ExitStack() as stack:
        if server is None:
            client = stack.enter_context(suite.embedded_client())
            label = "an embedded server"
        else:
            client = stack.enter_context(make_client(server, state.api_key))
            label = server
        progress = stack.enter_context(
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                console=console,
            )
        )
        task = progress.add_task("training runs", total=None, note="")

        def show(done: int, total: int, note: str) -> None:
            progress.update(task, completed=done, total=total, note=escape(note))

        try:
            result = suite.run_suite(
                client, quick=quick, only=only, out_dir=out, progress=show, server_label=label
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


if __name__ == "__main__":  # python -m service.cli
    app()
