"""Events as the client reports them (:class:`RunEvent`) and the Server-Sent Events framing
they arrive in (:func:`parse_sse`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class RunEvent:
    """One event as :meth:`BnlabClient.wait` (or :meth:`BnlabClient.watch_sweep`) sees it.

    ``kind`` is ``"status"`` (``data`` is a RunOut), ``"metrics"`` (``data`` is
    ``{"step", "values"}``, plus ``"run_id"`` on a sweep's stream) or ``"end"``; a sweep's
    stream may also send ``"deleted"`` (``{"run_id"}``). ``via`` says whether it came from the
    event stream or from polling (polling only produces status events).
    """

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    via: Literal["stream", "poll"] = "stream"


EventCallback = Callable[[RunEvent], None]


@dataclass
class SseMessage:
    event: str
    data: str
    id: str | None


def parse_sse(lines: Iterator[str]) -> Iterator[SseMessage]:
    """Server-Sent Events framing (the WHATWG rules that matter here): ``field: value`` lines,
    ``data`` lines joined by newlines, a blank line dispatches, ``:`` lines are comments
    (keep-alives), the event name defaults to "message"."""
    event, data, event_id = "", [], None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or event:
                yield SseMessage(event or "message", "\n".join(data), event_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            event_id = value
    # A message without its terminating blank line was cut off: it is not dispatched.


def parse_data(data: str) -> dict[str, Any]:
    if not data:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError:
        return {"text": data}
    return parsed if isinstance(parsed, dict) else {"value": parsed}
