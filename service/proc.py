"""Helpers for the processes the service starts: children that die with their parent, the
environment that carries settings to them, their names, and URLs safe to log.

Used by the embedded executor (``service/executor.py``), the workers (``workers/``) and the
tests that start real processes. No database, no Celery: importing it is cheap.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable

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


def redact_url(url: str) -> str:
    """A URL without its password (``redis://***@host:6379/0``), for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
