"""Integration fixtures: a fresh PostgreSQL database migrated with Alembic, Redis, real Celery
workers as subprocesses, and the real app (lifespan and maintenance loop running).

Everything is namespaced per test session (database ``bnlab_test_<hex>``, queue
``bnlab-test-<hex>``, Redis db 15) so parallel sessions on one machine do not collide. Without
PostgreSQL or Redis these tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service import db, migrate
from service.proc import settings_env
from service.settings import Settings
from tests.procs import celery_worker_command, spawn

# api_runs, a sibling module the tests import (pytest puts this folder on sys.path): its
# asserts are rewritten (explained on failure) only if registered before the first import.
pytest.register_assert_rewrite("api_runs")

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/15"
SESSION = uuid.uuid4().hex[:10]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.integration)


def _unavailable() -> str | None:
    """Why the services cannot be used, or None."""
    import psycopg
    import redis

    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN} unreachable: {exc}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis at {REDIS_URL} unreachable: {exc}"
    return None


@pytest.fixture(scope="session")
def services() -> None:
    reason = _unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"integration services are required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_admin_url(services: None) -> str:
    return PG_ADMIN


@pytest.fixture(scope="session")
def pg_url(services: None) -> Iterator[str]:
    """A fresh database for this session, migrated once with Alembic, dropped at the end."""
    import psycopg

    name = f"bnlab_test_{SESSION}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    migrate.upgrade(url)
    yield url
    db.dispose_engine(url)  # close this process's connections, or DROP waits on them
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def int_settings(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Short heartbeats so that a lost worker is noticed in seconds, not minutes."""
    settings = Settings(
        _env_file=None,
        database_url=pg_url,
        broker_url=REDIS_URL,
        queue=f"bnlab-test-{SESSION}",
        data_dir=tmp_path_factory.mktemp("data"),
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        heartbeat_interval_s=1.0,
        heartbeat_timeout_s=6.0,
        max_attempts=2,
        auto_migrate=False,  # migrated once above
    )
    yield settings
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"*{SESSION}*"))
    if keys:
        client.delete(*keys)
    # The killed worker's unacknowledged message would be restored a day from now.
    for tag, message in client.hgetall("unacked").items():
        if SESSION.encode() in message:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


@dataclass
class CeleryWorker:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        # The pool children and anything else in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="session")
def start_worker(
    int_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., CeleryWorker]]:
    """Start a real ``celery worker`` subprocess (prefork, one process) and wait until ready."""
    started: list[CeleryWorker] = []
    logs = tmp_path_factory.mktemp("celery")

    def start(label: str, queue: str | None = None) -> CeleryWorker:
        settings = int_settings.model_copy(update={"queue": queue or int_settings.queue})
        name = f"{label}-{SESSION}@%h"
        log_path = logs / f"{label}.log"
        cmd = celery_worker_command(settings.queue, name)
        proc = spawn(cmd, settings_env(settings), log_path)
        worker = CeleryWorker(name.replace("%h", os.uname().nodename), proc, log_path)
        started.append(worker)
        deadline = time.monotonic() + 90
        while " ready." not in worker.log():
            if proc.poll() is not None:
                pytest.fail(f"celery worker {label} exited {proc.returncode}:\n{worker.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"celery worker {label} not ready after 90 s:\n{worker.log()}")
            time.sleep(0.2)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., CeleryWorker]) -> CeleryWorker:
    """The session's long-lived worker on the session's queue."""
    return start_worker("main")


@pytest.fixture(scope="session")
def api(int_settings: Settings, worker: CeleryWorker) -> Iterator:
    """The real app with its Celery executor, lifespan and maintenance loop running."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(int_settings)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def pg_session(int_settings: Settings) -> Iterator:
    with db.open_session(int_settings) as session:
        yield session
