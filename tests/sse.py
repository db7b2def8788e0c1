"""Reading an API event stream (Server-Sent Events) in tests, whole, as parsed events.

The parser is the tests' own, not the client's (``service.client.events``): a stream is checked
by code that shares nothing with the code that reads it in production.
"""

from __future__ import annotations

import json
from typing import Any


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Every event of a stream's text, in order, as its fields (``event``, ``id``…) with
    ``data`` decoded from JSON; comments and blocks without an event are left out."""
    parsed = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        if "event" in fields:
            fields["data"] = json.loads(fields["data"])
            parsed.append(fields)
    return parsed


def read_events(
    client: Any, path: str, params: dict[str, Any] | None = None, **headers: str
) -> list[dict[str, Any]]:
    """GET ``path`` with ``client`` (a TestClient) as an event stream until the server ends
    it, and return its events; the answer must be a 200 ``text/event-stream``."""
    with client.stream("GET", path, params=params, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.read().decode())
