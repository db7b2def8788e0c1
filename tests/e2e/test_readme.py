"""The README works verbatim: its shell and Python blocks, pasted in order into a fresh shell.

A new user's first hour is the README. This test starts the server with the README's own
command (the part after the install) and runs every ```bash and ```python block in order in
one shell, so variables set by one block (``BN=$(…)``) are there for the next, exactly as in a
terminal. Blocks that cannot run here say so in a marker comment just above them:

    <!-- readme-test: server -->   the command that starts the server (run here in the
                                   background, without the install step)
    <!-- readme-test: skip (why) --> not run (the test suite itself, docker compose)

The only edit is the port: ``127.0.0.1:8000`` becomes a free port, so a server a developer
left running does not answer instead. The shell runs in an empty folder holding the repo's
``examples/`` and the interpreter's ``.venv``, as a checkout would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE = re.compile(
    r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)```", re.S
)
DEFAULT_ADDRESS = "127.0.0.1:8000"

pytestmark = pytest.mark.e2e


@dataclass
class Block:
    lang: str
    body: str
    marker: str


def readme_blocks() -> list[Block]:
    return [
        Block(m["lang"], m["body"], (m["marker"] or "").strip())
        for m in FENCE.finditer(README.read_text())
        if m["lang"] in ("bash", "python")
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def to_script(blocks: list[Block], venv_python: str) -> str:
    """The runnable blocks as one bash script; Python blocks run through the venv's python."""
    parts = ["set -euo pipefail"]
    for block in blocks:
        if block.marker:
            continue
        if block.lang == "python":
            parts.append(f"{venv_python} - <<'PYTHON'\n{block.body}PYTHON")
        else:
            parts.append(block.body)
    return "\n".join(parts) + "\n"


def test_readme_markers_are_known() -> None:
    """Every marker is one this test understands, and exactly one block starts the server."""
    markers = [b.marker for b in readme_blocks() if b.marker]
    assert markers.count("server") == 1, markers
    assert all(m == "server" or m.startswith("skip (") for m in markers), markers


def test_readme_blocks_run_verbatim(tmp_path: Path) -> None:
    blocks = readme_blocks()
    venv = Path(sys.prefix)
    (tmp_path / ".venv").symlink_to(venv)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    port = free_port()
    address = f"127.0.0.1:{port}"

    (server_block,) = [b for b in blocks if b.marker == "server"]
    serve = server_block.body.strip().split("&&")[-1].strip()
    assert serve.startswith(".venv/bin/bnlab serve"), serve
    env = {
        **os.environ,
        "BNLAB_DATABASE_URL": f"sqlite:///{tmp_path / 'bnlab.db'}",
        "BNLAB_DATA_DIR": str(tmp_path / "data"),
        "BNLAB_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),  # this checkout's code, whichever one the venv was built from
    }
    for name in ("BNLAB_BROKER_URL", "BNLAB_API_KEY_HASHES", "BNLAB_SERVER"):
        env.pop(name, None)
    server_log = tmp_path / "server.log"
    with server_log.open("wb") as log:
        server = subprocess.Popen(
            f"{serve} --port {port}",
            shell=True,
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server_log.read_text()
            try:
                if httpx.get(f"http://{address}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start:\n" + server_log.read_text()
            time.sleep(0.2)

        script = to_script(blocks, ".venv/bin/python").replace(DEFAULT_ADDRESS, address)
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, (
            f"README blocks failed (exit {result.returncode})\n--- stdout\n{result.stdout}"
            f"\n--- stderr\n{result.stderr}\n--- server\n{server_log.read_text()}"
        )
        png = tmp_path / "compare.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "compare --plot wrote no PNG"
        assert "speed-up" in result.stdout.lower()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
