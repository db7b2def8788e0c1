"""Runs driven through the HTTP API in the integration tests (a plain module: pytest puts this
folder on sys.path): a tiny spec, and just enough of a client to submit a run, read it and
wait for it, over a TestClient or a real server's base URL."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx

from service.vocab import FINISHED_STATUSES

# Finishes in seconds (30 steps), logging every step and evaluating three times on the way.
TINY: dict[str, Any] = {
    "dataset": "digits",
    "model": {"hidden": [16]},
    "steps": 30,
    "eval_every": 10,
    "batch_size": 32,
}


class Api:
    """Just enough of a client over either a TestClient or a real server's base URL."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, **kw)

    def submit(self, **spec: Any) -> str:
        response = self.post("/api/v1/runs", json=TINY | spec)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, run_id: str, done: Callable[[dict], bool], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if done(run):
                return run
            assert time.monotonic() < deadline, f"run {run_id} stuck: {run}"
            time.sleep(0.2)

    def finished(self, run_id: str, timeout: float = 120) -> dict:
        return self.wait(run_id, lambda r: r["status"] in FINISHED_STATUSES, timeout)
