"""Process helpers for tests that start real processes: ``celery worker`` and ``bnlab serve``
subprocesses (the integration tests), and a walk of /proc to check that a killed worker, a
cancelled run or a crashed rank took its trainers with it (integration and unit tests alike,
which is why this lives here and not in tests/integration/)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from service.cli import worker_command

REPO = Path(__file__).resolve().parents[1]


def celery_worker_command(queue: str, name: str) -> list[str]:
    """The command ``bnlab worker`` runs (prefork, one process: one run at a time, as
    deployed), named, and without the cluster chatter a test does not need."""
    command = worker_command(concurrency=1, queues=[queue], loglevel="INFO")
    return [*command, "-n", name, "--without-gossip", "--without-mingle", "--without-heartbeat"]


def spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in the repository, output to ``log_path``, in a session of its own (so a
    test can kill its whole process group)."""
    with log_path.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def descendants(pid: int) -> dict[int, bytes]:
    """pid → command line of every live descendant of ``pid``."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, bytes] = {}
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found[child] = cmdlines.get(child, b"")
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie (state Z) has exited and only awaits its parent's
    wait(), so it counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
