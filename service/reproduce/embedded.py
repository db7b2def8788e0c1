"""An in-process bnlab server for the suite: the real app on SQLite with the embedded executor.

The only module of the client side that imports ``service.app`` (the import contracts allow it
here and nowhere else): ``bnlab reproduce`` without ``--server`` needs a server, and this one
lives as long as the ``with`` block. Everything else in the package sees only the
:class:`~service.client.BnlabClient` it yields, exactly as for a remote server.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.client import BnlabClient
from service.settings import Settings


@contextlib.contextmanager
def embedded_client(
    database: Path | None = None, concurrency: int | None = None
) -> Iterator[BnlabClient]:
    """A BnlabClient on an in-process server (the real app, SQLite, the embedded executor).

    Training still happens in subprocesses. With several parallel runs each trainer is held to
    one thread: tiny MLPs gain nothing from intra-op threads, and N runs × N threads on N cores
    would oversubscribe them (measured: ~4× slower on 2 cores).
    """
    workers = concurrency or max(1, os.cpu_count() or 1)
    if workers > 1:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")  # inherited by the trainer subprocesses
    with contextlib.ExitStack() as stack:
        if database is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bnlab-repro-")))
            database = tmp / "bnlab.db"
        settings = Settings(  # explicit: no broker or API keys from this machine's BNLAB_*
            _env_file=None,
            database_url=f"sqlite:///{database}",
            broker_url=None,
            api_key_hashes=[],
            embedded_concurrency=workers,
            log_level="WARNING",  # the suite's progress bar, not every claim, on the terminal
        )
        http = stack.enter_context(TestClient(create_app(settings)))
        yield BnlabClient(http=http, timeout=120.0)
