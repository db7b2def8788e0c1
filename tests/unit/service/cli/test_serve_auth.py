"""`bnlab serve` opens no network door by accident: without API keys it binds loopback only,
unless told --allow-open (or BNLAB_ALLOW_OPEN); `bnlab hash-key` makes named, scoped keys."""

from __future__ import annotations

import hashlib

import pytest
import uvicorn
from typer.testing import CliRunner

from service import auth
from service.cli import app, server
from service.settings import Settings

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def started(monkeypatch, tmp_path) -> list[dict]:  # noqa: ANN001
    """uvicorn.run and the database check replaced by recorders: a test sees whether serve got
    as far as opening the database or starting the server."""
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(server, "check_database", lambda url: calls.append({"database": url}))
    return calls


def serve_with(monkeypatch, *args: str, **settings: object):  # noqa: ANN001, ANN201
    configured = Settings(_env_file=None, database_url="sqlite:///unused.db", **settings)
    monkeypatch.setattr(server, "get_settings", lambda: configured)
    return runner.invoke(app, ["serve", *args], env=WIDE)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "bnlab.example.org"])
def test_serve_refuses_an_open_non_loopback_bind(monkeypatch, started, host: str) -> None:  # noqa: ANN001
    result = serve_with(monkeypatch, "--host", host)
    assert result.exit_code == 1, result.output
    assert started == []  # refused before opening the database and starting uvicorn
    assert f"refusing to serve on {host} without API keys" in result.stderr
    assert "bnlab hash-key" in result.stderr and "--allow-open" in result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_serve_binds_loopback_without_keys(monkeypatch, started, host: str) -> None:  # noqa: ANN001
    result = serve_with(monkeypatch, "--host", host)
    assert result.exit_code == 0, result.output
    assert [call["host"] for call in started if "host" in call] == [host]
    assert "open (no API keys)" in result.stdout


def test_allow_open_flag_or_setting_serves_open(monkeypatch, started) -> None:  # noqa: ANN001
    assert serve_with(monkeypatch, "--host", "0.0.0.0", "--allow-open").exit_code == 0
    assert serve_with(monkeypatch, "--host", "0.0.0.0", allow_open=True).exit_code == 0
    assert [call["host"] for call in started if "host" in call] == ["0.0.0.0", "0.0.0.0"]


def test_allow_open_reads_the_environment(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BNLAB_ALLOW_OPEN", "true")
    assert Settings(_env_file=None).allow_open is True


def test_serve_with_keys_binds_any_address(monkeypatch, started, tmp_path) -> None:  # noqa: ANN001
    entry = auth.ApiKey("ops", frozenset({auth.Scope.admin}), auth.hash_key("k")).entry()
    result = serve_with(monkeypatch, "--host", "0.0.0.0", api_key_hashes=[entry])
    assert result.exit_code == 0, result.output
    assert "1 API key(s), required for writes" in result.stdout
    key_file = tmp_path / "keys"
    key_file.write_text(f"# ops team\n{entry}\n\n{auth.hash_key('other')}\n")
    result = serve_with(monkeypatch, "--host", "0.0.0.0", api_key_file=key_file)
    assert result.exit_code == 0, result.output
    assert "2 API key(s)" in result.stdout
    assert len([call for call in started if "host" in call]) == 2


def test_a_malformed_key_entry_stops_serve_without_quoting_it(monkeypatch, started) -> None:  # noqa: ANN001
    pasted_key = "bnlab_this-is-a-key-not-a-digest"
    result = serve_with(monkeypatch, "--host", "0.0.0.0", api_key_hashes=[pasted_key])
    assert result.exit_code == 1 and started == []
    assert "BNLAB_API_KEY_HASHES, entry 1: not a SHA-256 hex digest" in result.stderr
    assert pasted_key not in result.output


def test_hash_key_makes_a_named_scoped_key(monkeypatch) -> None:  # noqa: ANN001
    result = runner.invoke(app, ["hash-key", "alice", "--scope", "submit"], env=WIDE)
    assert result.exit_code == 0, result.output
    key_line, entry_line = result.stdout.splitlines()
    key = key_line.split()[1]
    entry = entry_line.split()[1]
    assert entry == f"alice:submit:{hashlib.sha256(key.encode()).hexdigest()}"
    (parsed,) = auth.parse_entries([entry], "test")
    assert parsed.name == "alice" and parsed.scopes == {auth.Scope.submit}
    again = runner.invoke(app, ["hash-key", "alice", "--scope", "submit"], env=WIDE)
    assert again.stdout.splitlines()[0] != key_line  # a fresh random key each time


def test_hash_key_from_stdin_prints_the_entry_only() -> None:
    args = ["hash-key", "ops", "--key-stdin", "-s", "admin", "-s", "read"]
    result = runner.invoke(app, args, input="s3cret\n", env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ops:read+admin:{hashlib.sha256(b's3cret').hexdigest()}"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["bad name!"], "NAME: a key name is"), (["ok", "--scope", "root"], "root")],
)
def test_hash_key_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["hash-key", *args], env=WIDE)
    assert result.exit_code == 2 and message in result.output
