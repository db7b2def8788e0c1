"""The trainer's command line and the worker's capacity (no torch here: see .importlinter).

One replica: ``python -m bncore.train SPEC ...``. More (``spec.replicas`` > 1): torch.distributed's
own launcher, one process per replica on this machine, its rendezvous on a free loopback port
(no network)::

    python -m torch.distributed.run --nnodes 1 --nproc-per-node N --max-restarts 0
        --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:0 --rdzv-id RUN_ID
        --local-addr 127.0.0.1 -m bncore.train SPEC ...

The launcher starts each rank in a session of its own; killing the launcher's process group
reaches the ranks through it (SIGTERM is forwarded) or, if it is SIGKILLed, through each rank's
parent-death signal (bncore/distributed.py). A failing rank makes the launcher stop the others
and exit non-zero; the rank's own last stderr line says why (``bncore.events.rank_failure``).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from bncore import events
from service.settings import Settings
from workers.device import gpu_count

log = logging.getLogger("bnlab.execute")

MAX_REPLICAS = 8  # bncore.spec.MAX_REPLICAS
STDERR_LINE_CHARS = 2_000


def trainer_command(
    settings: Settings,
    python: str,
    spec_path: Path,
    checkpoint_dir: Path,
    resume_max_step: int,
    replicas: int,
    run_id: str,
) -> list[str]:
    """The worker's command for a run: the trainer on ``spec_path`` with its data folder and
    checkpoints, launched by :func:`train_command`."""
    trainer_args = [
        str(spec_path),
        "--data-dir",
        str(settings.data_dir),
        # Checkpoints: resumed from when the run is retried (bncore/checkpoint.py).
        "--checkpoint-dir",
        str(checkpoint_dir),
        "--checkpoint-every",
        str(settings.checkpoint_every),
        "--checkpoint-keep",
        "0",  # all: the worker prunes, keeping what a retry may still resume from
        # A checkpoint past the points stored so far would leave a gap in the curve.
        "--resume-max-step",
        str(resume_max_step),
    ]
    return train_command(python, replicas, trainer_args, rdzv_id=run_id)


def train_command(
    python: str, replicas: int, trainer_args: Sequence[str], rdzv_id: str | None = None
) -> list[str]:
    """``python -m bncore.train ARGS`` for one replica; for more, the same under
    torch.distributed's launcher (see the module doc), its rendezvous named ``rdzv_id`` if
    given. The benchmarks and tests launch the trainer with it too, as the worker does."""
    if replicas <= 1:
        return [python, "-m", "bncore.train", *trainer_args]
    launcher = [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(replicas),
        "--max-restarts",
        "0",  # a failed rank fails the run; a retry is the store's business (resume)
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "127.0.0.1:0",  # a free port, chosen by the launcher
        *(["--rdzv-id", rdzv_id] if rdzv_id is not None else []),
        "--local-addr",
        "127.0.0.1",
    ]
    return [*launcher, "-m", "bncore.train", *trainer_args]


def capacity(settings: Settings) -> int:
    """How many replicas one run may have here: ``settings.max_replicas``, else one per GPU
    on a CUDA worker, else one per CPU (capped at MAX_REPLICAS)."""
    if settings.max_replicas is not None:
        return settings.max_replicas
    gpus = gpu_count()
    if gpus:
        return min(gpus, MAX_REPLICAS)
    return max(1, min(os.cpu_count() or 1, MAX_REPLICAS))


def exit_description(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


def read_stderr(  # noqa: ANN001
    stream, tail: collections.deque[str], run_id: str, rank_failures: list[tuple[int, str]]
) -> None:
    for line in stream:
        line = line.rstrip("\n")[:STDERR_LINE_CHARS]
        tail.append(line)
        failure = events.rank_failure(line)  # kept apart: the launcher's summary follows
        if failure is not None and len(rank_failures) < 8:
            rank_failures.append(failure)
        log.debug("run %s trainer stderr: %s", run_id, line)
