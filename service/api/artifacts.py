"""A run's artifacts over HTTP: GET /runs/{id}/checkpoint, the final model's ``state_dict``
(torch format) as its trainer saved it (service/artifacts.py says where).

Load it with ``torch.load(path, weights_only=True)`` into ``bncore.models.build_model`` of the
run's spec (README, "Downloading a trained model").
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse

from service import store
from service.api.deps import SettingsDep, in_session
from service.artifacts import final_model_path
from service.schemas import Problem
from service.vocab import short_id

router = APIRouter(prefix="/runs", tags=["artifacts"])

RunId = Annotated[str, Path(max_length=64, description="The run's id (a UUID).")]
MEDIA_TYPE = "application/octet-stream"


@router.get(
    "/{run_id}/checkpoint",
    summary="Download a run's final model",
    response_class=FileResponse,
    responses={
        200: {"content": {MEDIA_TYPE: {}}, "description": "The final state_dict (torch.save)."},
        404: {"model": Problem, "description": "No such run, or it has no final model (yet)."},
    },
)
async def get_checkpoint(run_id: RunId, request: Request, settings: SettingsDep) -> Any:
    run = await in_session(request, lambda session: store.get_run(session, run_id))
    path = final_model_path(settings, run.id)
    if not path.is_file():
        raise store.NotFound(
            f"run {run.id} has no final model: it is {run.status}"
            + ("" if run.status in store.FINISHED else " (the model is saved when it ends)")
        )
    filename = f"bnlab-{short_id(run.id)}-model.pt"
    return FileResponse(path, media_type=MEDIA_TYPE, filename=filename)
