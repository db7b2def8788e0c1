"""Helpers for the processes the service starts: children that die with their parent, the
environment that carries settings to them, their names, and URLs safe to log.

Used by the embedded executor (``service/executor.py``), the workers (``workers/``) and the
tests that start real processes. No database, no Celery: importing it is cheap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from service.settings import Settings

_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when the thread that spawned it
    dies (Linux ``PR_SET_PDEATHSIG``). Spawn from a thread that lives as long as the child
    must: the signal follows the *thread*, not the process. None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # resolved before fork: no loading in the child
    parent = os.getpid()

    def _preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return _preexec


def set_parent_death_signal() -> None:
    """In an already forked child (a Celery pool process): SIGKILL us when our parent dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment under which ``get_settings()`` in a child process equals ``settings``
    (the only way settings reach a subprocess; ``None`` fields are removed)."""
    env = dict(os.environ if base is None else base)
    for name, value in settings.model_dump(mode="json").items():
        key = f"BNLAB_{name.upper()}"
        if value is None:
            env.pop(key, None)
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, list):
            env[key] = ",".join(str(v) for v in value)
        else:
            env[key] = str(value)
    return env


def embedded_worker_name() -> str:
    """The worker name of this host's embedded executor (runs it left running are its own)."""
    return f"embedded@{socket.gethostname()}"


WORKER_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


def check_worker_prefix(prefix: str) -> str:
    """``prefix`` if it can start a worker name (``bnlab worker --name``), else ValueError:
    '@' and ':' separate the host and the process in ``PREFIX@HOST:PID:RANDOM``."""
    if not WORKER_PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid worker name {prefix[:60]!r}: 1 to 40 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (the host, process id and a random part are "
            "added: NAME@host:pid:random)"
        )
    return prefix


def unique_worker_id(prefix: str) -> str:
    """A name no other executing process has: ``PREFIX@HOST:PID:RANDOM``. ``PID`` is the
    process whose death ends the attempt (a Celery pool process; for embedded runs the server,
    whose children die with it); the random part tells apart processes that reuse a pid. A
    prefix that already names its host (Celery's ``celery@host``) keeps it."""
    base = prefix if "@" in prefix else f"{prefix}@{socket.gethostname()}"
    return f"{base}:{os.getpid()}:{secrets.token_hex(3)}"


def worker_host_pid(name: str) -> tuple[str, int] | None:
    """(host, pid) of a ``unique_worker_id``; None for names of another form."""
    base, _, rest = name.partition(":")
    pid, _, random_part = rest.partition(":")
    if "@" not in base or not pid.isdigit() or not random_part:
        return None
    return base.rsplit("@", 1)[1], int(pid)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def gone_local_workers(names: list[str]) -> list[str]:
    """Those of ``names`` that ran on this host in a process that no longer exists (or in a
    process whose pid this one now has: a previous instance)."""
    host = socket.gethostname()
    gone = []
    for name in names:
        parsed = worker_host_pid(name)
        if parsed is None or parsed[0] != host:
            continue
        if parsed[1] == os.getpid() or not process_alive(parsed[1]):
            gone.append(name)
    return gone


RUN_TMP_PREFIX = "bnlab-"  # run folders: bnlab-<run>-<pid>-<random> in the system temp dir


def run_temp_dir(run_id: str) -> tempfile.TemporaryDirectory[str]:
    """The temporary folder of one run's execution, named with the executing pid so that
    ``clean_stale_temp_dirs`` can tell a killed run's folder from a live one's."""
    return tempfile.TemporaryDirectory(prefix=f"{RUN_TMP_PREFIX}{run_id[:8]}-{os.getpid()}-")


def clean_stale_temp_dirs(root: str | Path | None = None) -> list[Path]:
    """Delete the run folders left behind by processes that were killed (kill -9 skips the
    cleanup). Called when a server or worker starts. Returns what was deleted."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{RUN_TMP_PREFIX}*-*-*"):
        parts = path.name.split("-")
        if len(parts) < 4 or not parts[2].isdigit() or not path.is_dir():
            continue
        if int(parts[2]) != os.getpid() and process_alive(int(parts[2])):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails now (another server holds it). Checked by
    ``bnlab serve`` before it starts, so a second server exits before touching any run."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # uvicorn reports a bad host itself
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


def redact_url(url: str) -> str:
    """A URL without its password (``redis://***@host:6379/0``), for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
