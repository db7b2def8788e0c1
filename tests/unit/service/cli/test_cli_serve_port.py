"""``bnlab serve`` on a port another server holds exits with a clear message before it opens
the database (issue 12, F3: a second server must not touch the first one's runs)."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from service import cli


def test_serve_on_a_taken_port_exits_before_touching_the_database(tmp_path: Path) -> None:
    database = tmp_path / "bnlab.db"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(
            cli.app,
            ["serve", "--port", str(port)],
            env={"BNLAB_DATABASE_URL": f"sqlite:///{database}", "COLUMNS": "200"},
        )
    assert result.exit_code != 0
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert not database.exists()
