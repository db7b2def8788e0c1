"""A run's checkpoint folder, as files: names, listing and retention. No torch, so the worker
(which prunes) and the API (which serves the final model) use it without loading torch.

    DIR/step-000000500.pt   the state after step 500 (bncore/checkpoint.py writes and reads it)
    DIR/model.pt            the final model's ``state_dict``

Retention is decided by what is safe to resume from: a checkpoint is only usable while the
run's stored curve reaches its step (resuming past the stored points would leave a gap). So
``prune`` keeps every checkpoint past the stored step, plus the newest ``keep`` at or before
it; the trainer alone (no worker storing its points) prunes against its own step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

FINAL_MODEL = "model.pt"
_PREFIX, _SUFFIX = "step-", ".pt"


def step_path(directory: Path, step: int) -> Path:
    return directory / f"{_PREFIX}{step:09d}{_SUFFIX}"


def step_checkpoints(directory: Path | None) -> list[tuple[int, Path]]:
    """The folder's step checkpoints as (step, path), newest first."""
    if directory is None or not directory.is_dir():
        return []
    found = []
    for path in directory.glob(f"{_PREFIX}*{_SUFFIX}"):
        with contextlib.suppress(ValueError):
            found.append((int(path.name[len(_PREFIX) : -len(_SUFFIX)]), path))
    return sorted(found, reverse=True)


def prune(directory: Path | None, keep: int, stored_step: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints at or before ``stored_step``; those
    after it are kept (the points up to them are not stored yet). Returns what was deleted."""
    usable = [path for step, path in step_checkpoints(directory) if step <= stored_step]
    deleted = []
    for path in usable[max(1, keep) :]:
        with contextlib.suppress(OSError):
            path.unlink()
            deleted.append(path)
    return deleted
