"""Where a run's files live: ``ARTIFACT_DIR/runs/RUN_ID/`` holds its checkpoints (written by
the trainer, see bncore/checkpoint.py) and its final model, ``model.pt``.

Shared by the workers, which hand the folder to the trainer, and the API, which serves the
final model (GET /api/v1/runs/{id}/checkpoint). Neither imports torch for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bncore.checkpoint_files import FINAL_MODEL
from service.settings import Settings


def run_artifact_dir(settings: Settings, run_id: str) -> Path:
    """The run's own folder under ``settings.artifact_dir``."""
    return Path(settings.artifact_dir) / "runs" / run_id


def final_model_path(settings: Settings, run_id: str) -> Path:
    """The final ``state_dict`` of the run's model (torch format), once it finished."""
    return run_artifact_dir(settings, run_id) / FINAL_MODEL


def remove_run_artifacts(settings: Settings, run_id: str) -> None:
    """Delete the run's folder (checkpoints, final model) once the run itself is deleted."""
    shutil.rmtree(run_artifact_dir(settings, run_id), ignore_errors=True)
