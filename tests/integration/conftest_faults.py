"""Fixtures for the fault tests (tests/integration/test_faults.py): private PostgreSQL and Redis
servers started from this machine's binaries, so that the tests can stop, kill and restart
them without touching the shared services other tests (and people) use, plus helpers to run
real Celery workers and ``bnlab serve`` against them.

Loaded by ``pytest_plugins`` in test_faults.py. Without the server binaries the tests skip,
except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service import db, migrate
from service.proc import settings_env
from service.settings import Settings
from tests.procs import REPO, celery_worker_command, spawn
from tests.waiting import wait_until  # re-exported: the fault tests import it from here


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def require(what: str, found: object) -> None:
    """Skip (fail under CI) when a server binary is missing."""
    if found:
        return
    if in_ci():
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not found")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- Redis


class PrivateRedis:
    """``redis-server`` on a free port, a subprocess of the test (stop/kill/start at will)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.binary = shutil.which("redis-server")
        self.dir = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        assert self.binary
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
        ]
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    def kill(self) -> None:
        """SIGKILL: what a crash (or an OOM kill) looks like; nothing is saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """A factory of private Redis servers (started), all stopped at the end of the test."""
    require("redis-server", shutil.which("redis-server"))
    servers: list[PrivateRedis] = []

    def make(*, appendonly: bool = False) -> PrivateRedis:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = PrivateRedis(directory, appendonly=appendonly)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists() and Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


class PrivatePostgres:
    """A throwaway cluster (``initdb``) on a free port with its socket in its own directory.
    As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and the server may not be.
        self.root = Path(tempfile.mkdtemp(prefix="bnlab-fault-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, a clean shutdown; ``immediate``: a crash."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def reachable(self) -> bool:
        import psycopg

        try:
            dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
            psycopg.connect(dsn, connect_timeout=1).close()
            return True
        except Exception:
            return False

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster for the module (tests may stop and restart it)."""
    bindir = _pg_bindir()
    require("PostgreSQL server binaries (initdb, pg_ctl)", bindir)
    assert bindir is not None
    server = PrivatePostgres(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        for url in db.engine_urls():
            if f":{server.port}/" in url:
                db.dispose_engine(url)
        server.destroy()


@pytest.fixture(scope="module")
def fault_db(private_pg: PrivatePostgres) -> str:
    """A database on the private server, migrated with Alembic once for the module."""
    url = private_pg.create_database(f"bnlab_faults_{uuid.uuid4().hex[:8]}")
    migrate.upgrade(url)
    return url


def fault_settings(database_url: str, broker_url: str | None, tmp: Path, **overrides) -> Settings:
    """Settings for one fault test: its own queue, short heartbeats, no .env."""
    values: dict[str, object] = {
        "database_url": database_url,
        "broker_url": broker_url,
        "queue": f"bnlab-fault-{uuid.uuid4().hex[:8]}",
        "data_dir": tmp,
        "artifact_dir": tmp / "artifacts",
        "heartbeat_interval_s": 1.0,
        "heartbeat_timeout_s": 6.0,
        "max_attempts": 2,
        "auto_migrate": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


# ----------------------------------------------------------------------------- processes


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """A folder for the test's process logs (servers, workers)."""
    path = tmp_path / "logs"
    path.mkdir()
    return path


def app_client(settings: Settings):  # noqa: ANN201
    """The real app in this process (a TestClient: lifespan, executor and the maintenance
    loop that reaps and resubmits runs, while it is open), server errors answered as 500s."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    return TestClient(create_app(settings), raise_server_exceptions=False)


@dataclass
class Proc:
    """A subprocess with its output in a file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[Proc]]:
    """Subprocesses started by a test, stopped (and their process groups killed) after it."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def start_celery_worker(
    settings: Settings, label: str, logs: Path, started: list[Proc], *, wait: bool = True
) -> Proc:
    """A real ``celery worker`` (prefork, one process) on ``settings``; waits until ready."""
    name = f"{label}-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
    log_path = logs / f"celery-{label}.log"
    proc = spawn(celery_worker_command(settings.queue, name), settings_env(settings), log_path)
    worker = Proc(name, proc, log_path)
    started.append(worker)
    if wait:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"celery worker {label} exited {proc.returncode}:\n{worker.log()}")
            return " ready." in worker.log()

        wait_until(ready, 90, f"celery worker {label} to be ready", step=0.2)
    return worker


def start_server(settings: Settings, logs: Path, started: list[Proc], label: str) -> Proc:
    """A real ``bnlab serve`` subprocess (uvicorn) on a free port; waits for /healthz."""
    import httpx2 as httpx

    port = free_port()
    log_path = logs / f"serve-{label}.log"
    bnlab = Path(sys.executable).with_name("bnlab")
    cmd = (
        [str(bnlab), "serve", "--port", str(port)]
        if bnlab.exists()
        else [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    )
    env = settings_env(settings)
    # This checkout's code, whatever checkout the bnlab entry point was installed from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = spawn(cmd, env, log_path)
    server = Proc(label, proc, log_path, {"base": f"http://127.0.0.1:{port}"})
    started.append(server)

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"bnlab serve exited {proc.returncode}:\n{server.log()}")
        try:
            return httpx.get(f"{server.extra['base']}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, "bnlab serve to answer /healthz", step=0.2)
    return server
