"""The one engine and session factory of a process, tuned per backend, and retries for
connection trouble.

One engine per database URL, made on first use and shared by everything in the process that
talks to that database: the app (``service/app.py``), the embedded executor, the workers and
the tests. A worker process forked from a parent that had connections calls ``reset_engines()``
first: pooled connections must not be shared across processes.

SQLite (the embedded default) gets WAL and a busy timeout so the API and the trainer-output
writer do not trip over each other's locks; PostgreSQL gets pre-ping so a restarted server
costs one failed connection, not a failed request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings, get_settings

log = logging.getLogger("bnlab.db")

DB_ERRORS = (OperationalError, InterfaceError)  # connection trouble: worth retrying

T = TypeVar("T")


def make_engine(url: str) -> Engine:
    """A new engine for ``url`` (most code wants the shared one: ``engine_for``)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """This process's engine for ``url``, made on first use."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def session_factory(url: str) -> sessionmaker[Session]:
    """Sessions on ``engine_for(url)``; objects stay readable after commit."""
    engine = engine_for(url)
    with _lock:
        factory = _factories.get(url)
        if factory is None or factory.kw.get("bind") is not engine:
            factory = _factories[url] = sessionmaker(bind=engine, expire_on_commit=False)
        return factory


def open_session(settings: Settings | None = None) -> Session:
    """A session on ``settings.database_url`` (default: the process settings). Use it as a
    context manager; commits are explicit (the store commits its own writes)."""
    return session_factory((settings or get_settings()).database_url)()


def engine_urls() -> list[str]:
    """The URLs this process has an engine for (tests that stop a server dispose its own)."""
    with _lock:
        return list(_engines)


def dispose_engine(url: str) -> None:
    """Close ``url``'s pooled connections and forget its engine (an app shutting down, a test
    about to drop its database). The next use makes a fresh one."""
    with _lock:
        engine = _engines.pop(url, None)
        _factories.pop(url, None)
    if engine is not None:
        engine.dispose()


def reset_engines() -> None:
    """In a freshly forked process: forget the parent's engines without closing the parent's
    connections (``close=False``: they are the parent's to close)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _factories.clear()
    for engine in engines:
        engine.dispose(close=False)


def with_db_retry(
    settings: Settings, what: str, fn: Callable[[Session], T], *, deadline_s: float
) -> T:
    """Run ``fn`` in a fresh session, retrying connection errors with backoff for up to
    ``deadline_s`` (a PostgreSQL restart costs a few seconds, not the run)."""
    delay, start = 0.2, time.monotonic()
    while True:
        try:
            with open_session(settings) as session:
                return fn(session)
        except DB_ERRORS as exc:
            if time.monotonic() - start + delay > deadline_s:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, first_line(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def first_line(exc: BaseException) -> str:
    """An error in one line, for logs (database errors carry the whole statement after it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
