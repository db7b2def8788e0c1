"""GET /api/v1/runs/{id}/checkpoint and BnlabClient.download, on the in-process app: the final
model a trainer saved comes back whole and loads into bncore.models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from bncore.models import build_model
from bncore.spec import JobSpec
from service import store
from service.app import create_app
from service.artifacts import final_model_path
from service.client import BnlabClient, BnlabError
from service.settings import Settings

SPEC = JobSpec.model_validate({"name": "tiny", "dataset": "digits", "model": {"hidden": [8]}})


class Recorder:
    def submit(self, run_id: str) -> None: ...
    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    def broker_ok(self) -> bool:
        return True

    def resubmit_due(self, queued: list[str]) -> list[str]:
        return []


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[BnlabClient, Settings, object]]:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'bnlab.db'}",
        artifact_dir=tmp_path / "artifacts",
    )
    app = create_app(settings, executor=Recorder())
    with TestClient(app) as http:
        yield BnlabClient(http=http), settings, app


def test_the_final_model_downloads_and_loads_into_bncore_models(api, tmp_path: Path) -> None:  # noqa: ANN001
    client, settings, app = api
    run = client.submit(SPEC)
    with app.state.session_factory() as session:
        token = store.claim_run(session, run["id"], "w@h:1:ab")

    with pytest.raises(BnlabError) as missing:
        client.download(run["id"], tmp_path)
    assert missing.value.status == 404 and "it is running" in str(missing.value)

    trained = build_model(SPEC.model, (64,), 10)
    final = final_model_path(settings, run["id"])
    final.parent.mkdir(parents=True)
    torch.save(trained.state_dict(), final)
    with app.state.session_factory() as session:
        assert store.finish_run(session, run["id"], store.RunStatus.succeeded, "ok", token=token)

    path = client.download(run["id"], tmp_path)
    assert path == tmp_path / f"bnlab-{run['id'][:8]}-model.pt"
    assert client.download(run["id"], tmp_path / "named.pt") == tmp_path / "named.pt"
    model = build_model(SPEC.model, (64,), 10)
    model.load_state_dict(torch.load(path, weights_only=True))
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert not list(tmp_path.glob(".*.part"))

    client.delete(run["id"])  # the run's files go with it
    assert not final.parent.exists() and final.parent.parent.is_dir()


def test_an_unknown_run_has_no_checkpoint(api, tmp_path: Path) -> None:  # noqa: ANN001
    client, _settings, _app = api
    with pytest.raises(BnlabError) as missing:
        client.download("00000000-0000-0000-0000-000000000000", tmp_path)
    assert missing.value.status == 404
