"""Server-side commands: ``serve``, ``worker``, ``migrate`` and ``hash-key``.

They act on this machine with the ``BNLAB_*`` settings (:func:`service.settings.get_settings`)
instead of talking to a server. The CLI never imports the API app or the store: ``serve``
hands uvicorn the app's *name* (``service.app:create_app``), ``worker`` execs Celery by module
name, and the database is reached only through :func:`upgrade_database` and
:func:`check_database`, the functions that import server code (Alembic, SQLAlchemy), and only
when they run.

``serve`` does not migrate: the app's startup does (``service.app``'s lifespan, when
``BNLAB_AUTO_MIGRATE`` is on, the default), so there is one place that migrates. ``serve`` only
opens the database first, to turn an unreachable one into a one-line error.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from service.auth import ApiKey, Scope, check_name, hash_key, load_keys, new_key
from service.cli.common import command, console, examples, fail, log_line
from service.client import DEFAULT_SERVER
from service.proc import check_worker_prefix, port_in_use
from service.settings import Settings, get_settings

APP_FACTORY = "service.app:create_app"  # imported by uvicorn, in the server process
UVICORN_STARTUP_FAILED = 3  # uvicorn's exit status when the app's lifespan startup raised


def upgrade_database(url: str) -> None:
    """alembic upgrade head on ``url``: the CLI's one door into server code, opened only by
    ``serve`` and ``migrate`` (the client commands never load SQLAlchemy)."""
    from service.migrate import upgrade

    upgrade(url)


def check_database(url: str) -> None:
    """Open one connection to ``url`` and close it; raises what the driver raised."""
    from service.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def first_line(exc: BaseException) -> str:
    """An exception as one line: SQLAlchemy's messages run over several (SQL, a docs link)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def display_url(url: str) -> str:
    """A database or broker URL with any password masked, for logs:
    ``postgresql+psycopg://bn:***@db/bnlab``."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host``: localhost or a loopback address (127.x, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def configured_keys(settings: Settings) -> int:
    """How many API keys the server will accept; a malformed entry or key file ends the
    command with the reason (before anything starts)."""
    try:
        return len(load_keys(settings.api_key_hashes, settings.api_key_file))
    except ValueError as exc:
        fail(str(exc))


OPEN_BIND_REFUSED = (
    "refusing to serve on {host} without API keys: anyone who can reach it could submit, "
    "cancel and delete runs. Create a key with `bnlab hash-key NAME --scope admin` and put the "
    "printed entry in BNLAB_API_KEY_HASHES (or BNLAB_API_KEY_FILE), or bind 127.0.0.1. To "
    "serve an open API on purpose: --allow-open (or BNLAB_ALLOW_OPEN=true)."
)


@command(
    epilog=examples(
        f"bnlab serve                    # {DEFAULT_SERVER} (dashboard at /)",
        "BNLAB_API_KEY_HASHES=… bnlab serve --host 0.0.0.0 --port 8080",
        "BNLAB_BROKER_URL=redis://127.0.0.1:6379/0 bnlab serve   # for Celery",
    )
)
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    allow_open: Annotated[
        bool,
        typer.Option(
            help="Serve a non-loopback address without API keys (default: refuse; "
            "also BNLAB_ALLOW_OPEN=true).",
        ),
    ] = False,
) -> None:
    """Run the API and the dashboard (uvicorn); the app migrates the database as it starts.

    Without [bold]BNLAB_BROKER_URL[/bold] the server is [italic]embedded[/italic]: it trains
    runs itself, each in a subprocess. With it, runs are queued for [bold]bnlab worker[/bold].
    Clients find a server started on another host or port through --server or BNLAB_SERVER.
    """
    settings = get_settings()
    key_count = configured_keys(settings)
    if not key_count and not is_loopback(host) and not (allow_open or settings.allow_open):
        fail(OPEN_BIND_REFUSED.format(host=host))
    if port_in_use(host, port):  # before the database: a second server must touch no run
        fail(f"port {port} on {host} is in use (another bnlab serve?) or not this machine's")
    database = display_url(settings.database_url)
    log_line(f"database   {database}")
    try:
        check_database(settings.database_url)
    except Exception as exc:
        fail(f"cannot open the database {database}: {first_line(exc)}")
    if settings.auto_migrate:
        log_line("schema     migrated by the app as it starts (alembic upgrade head)")
    else:
        log_line("schema     not migrated (BNLAB_AUTO_MIGRATE=false; `bnlab migrate` does it)")
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
    needed = "reads and writes" if settings.auth_reads else "writes"
    auth = f"{key_count} API key(s), required for {needed}" if key_count else "open (no API keys)"
    log_line(f"auth       {auth}")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown_host}:{port}"
    log_line(f"[bold]bnlab[/bold]      {base}  (dashboard {base}/, API docs {base}/docs)")

    import uvicorn  # the server's dependency: loaded only by the command that serves

    # Open event streams never end by themselves: on Ctrl-C close them after a few seconds
    # (clients reconnect and resume with Last-Event-ID) instead of waiting for each to time out.
    try:
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=host,
            port=port,
            reload=reload,
            timeout_graceful_shutdown=STREAM_CLOSE_GRACE_S,
        )
    except SystemExit as exc:
        if exc.code in (None, 0):
            raise
        # uvicorn has logged why above; exit status 3 is its "the app's startup failed",
        # which is where the database is opened and migrated.
        if exc.code == UVICORN_STARTUP_FAILED:
            fail(
                f"the server did not start: the app's startup failed (the error is above); "
                f"check the database {database} with `bnlab migrate`"
            )
        fail(f"the server did not start (the error is above, e.g. port {port} in use)")


STREAM_CLOSE_GRACE_S = 3  # on shutdown, open requests (event streams) get this long


def worker_command(
    concurrency: int, queues: Sequence[str], loglevel: str, name: str | None = None
) -> list[str]:
    """The Celery worker command line (by module name: the service never imports workers)."""
    command_line = [
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
        command_line += ["--queues", ",".join(queues)]
    if name:  # Celery's node name; each process adds :PID:RANDOM (workers/celery_app.py)
        command_line += ["--hostname", f"{name}@%h"]
    return command_line


@command(
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
            help="Queue(s) to consume (repeatable). Default: BNLAB_QUEUE (bnlab) and the "
            "queues of the run sizes this worker can hold (bnlab.r2, .r4, .r8 up to "
            "BNLAB_MAX_REPLICAS, default its GPU or CPU count).",
            show_default=False,
        ),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    name: Annotated[
        str | None,
        typer.Option(
            help="Readable prefix of this worker's process names (NAME@host:pid:random).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start a Celery worker that trains queued runs (needs [bold]BNLAB_BROKER_URL[/bold]).

    Replaces this process with `python -m celery -A workers.celery_app worker --pool prefork`.
    """
    settings = get_settings()
    if not settings.broker_url:
        fail(
            "BNLAB_BROKER_URL is not set: a worker needs a broker (e.g. "
            "BNLAB_BROKER_URL=redis://127.0.0.1:6379/0). Without one, `bnlab serve` trains "
            "runs itself (embedded mode) and no worker is needed."
        )
    if name is not None:
        try:
            check_worker_prefix(name)
        except ValueError as exc:
            fail(f"--name: {exc}")
    queues = queue or []  # none: the worker picks those it can hold (workers/celery_app.py)
    command_line = worker_command(concurrency, queues, loglevel, name)
    shown = ", ".join(queues) or f"{settings.queue} and those of the run sizes it can hold"
    log_line(
        f"worker     broker {display_url(settings.broker_url)} (queue {shown}), "
        f"database {display_url(settings.database_url)}"
    )
    log_line(f"exec       {' '.join(command_line)}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command_line[0], command_line)


@command(
    epilog=examples("bnlab migrate", "BNLAB_DATABASE_URL=postgresql+psycopg://… bnlab migrate")
)
def migrate() -> None:
    """Bring the database (BNLAB_DATABASE_URL) to the newest schema: alembic upgrade head."""
    url = get_settings().database_url
    try:
        upgrade_database(url)
    except Exception as exc:
        fail(f"could not migrate {display_url(url)}: {first_line(exc)}")
    console.print(f"{display_url(url)}: schema up to date")


@command(
    "hash-key",
    epilog=examples(
        "bnlab hash-key alice --scope submit   # a new key for alice, and its entry",
        "bnlab hash-key ci --scope read --scope submit",
        'printf %s "$KEY" | bnlab hash-key ops --scope admin --key-stdin   # entry only',
    ),
)
def hash_key_command(
    name: Annotated[str, typer.Argument(help="The key's name: recorded on runs and in the audit.")],
    scope: Annotated[
        list[Scope] | None,
        typer.Option(
            "--scope",
            "-s",
            help="What the key may do (repeatable): read; submit (also cancel/delete its own "
            "runs); admin (anyone's runs, the audit trail). Default: read.",
            show_default=False,
        ),
    ] = None,
    key_stdin: Annotated[
        bool,
        typer.Option(help="Read an existing key from stdin instead of making a new one."),
    ] = False,
) -> None:
    """Make an API key and print its entry for the server: NAME:SCOPES:SHA256.

    The server keeps only entries (comma-separated in BNLAB_API_KEY_HASHES, or one per line
    in BNLAB_API_KEY_FILE); clients send the key itself with --api-key or BNLAB_API_KEY.
    A new key is printed once, on the first line; it is stored nowhere.
    """
    try:
        check_name(name)
    except ValueError as exc:
        fail(f"NAME: {exc}", code=2)
    if key_stdin:
        key = sys.stdin.read().strip()
        if not key:
            fail("--key-stdin: stdin is empty", code=2)
    else:
        key = new_key()
    entry = ApiKey(name, frozenset(scope or [Scope.read]), hash_key(key)).entry()
    if key_stdin:
        typer.echo(entry)
        return
    typer.echo(f"key    {key}")
    typer.echo(f"entry  {entry}")
