"""Waiting for a run or a sweep to finish: follow its event stream, reconnect, or poll.

:func:`follow` is the loop behind ``BnlabClient.wait`` and ``BnlabClient.watch_sweep``: it
reads ``GET …/events`` (Server-Sent Events), resumes a dropped connection (or a restarting
server) with ``Last-Event-ID`` and backoff, and falls back to polling ``GET`` of the run or
sweep when there is no usable stream or it keeps failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from service.client.errors import BnlabError
from service.client.events import EventCallback, RunEvent, parse_data, parse_sse

# (path, query parameters, Last-Event-ID or None, read timeout in s) → a streamed response
OpenStream = Callable[
    [str, Mapping[str, Any], str | None, float], AbstractContextManager[httpx.Response]
]


class StreamUnavailable(Exception):
    """The server has no usable event stream for this run: fall back to polling."""


@dataclass
class Followed:
    """What :func:`follow` waits for: a run or a sweep."""

    noun: str  # "run" or "sweep", as the server's 404 detail names it
    id: str
    events_path: str
    fetch: Callable[[], dict[str, Any]]  # GET it (RunOut or SweepOut)
    finished: Callable[[dict[str, Any]], bool]
    poll_events: Callable[[dict[str, Any]], list[RunEvent]]  # what a poll reports

    @property
    def label(self) -> str:
        return f"{self.noun} {self.id}"


def follow(
    target: Followed,
    open_stream: OpenStream,
    on_event: EventCallback | None,
    timeout: float | None,
    poll_interval: float,
    max_reconnects: int,
) -> dict[str, Any]:
    """Block until ``target`` has finished; return its final state (see the module doc)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    callback = on_event or (lambda _event: None)
    last_event_id: str | None = None
    failures = 0
    while True:
        try:
            for event in stream_events(target, open_stream, last_event_id, deadline):
                failures = 0  # progress: the connection is healthy again
                if event.id is not None:
                    last_event_id = event.id
                callback(event)
                if event.kind == "end":
                    return target.fetch()
        except StreamUnavailable:
            break
        except (httpx.TransportError, httpx.StreamError):
            pass  # refused (a restarting server) or dropped mid-stream: retry below
        # The stream ended without "end", or dropped: is it over anyway?
        try:
            current = target.fetch()
        except BnlabError as exc:
            if exc.status is not None:  # the server answered, e.g. 404: run deleted
                raise
        else:
            if target.finished(current):
                for event in target.poll_events(current):
                    callback(event)
                return current
        check_deadline(deadline, target.label)
        failures += 1
        if failures > max_reconnects:
            break
        time.sleep(min(0.5 * 2 ** (failures - 1), 5.0))
    # No usable stream: poll (which also reports an unreachable server clearly).
    return poll(target, callback, deadline, poll_interval)


def stream_events(
    target: Followed, open_stream: OpenStream, last_event_id: str | None, deadline: float | None
) -> Iterator[RunEvent]:
    # Reads may be quiet for a while between evaluations; connect quickly though.
    read_timeout = 60.0 if deadline is None else max(0.5, min(60.0, deadline - time.monotonic()))
    # The server closes the stream by itself after ?timeout= seconds, so a quiet run (only
    # keep-alives) cannot hold us past the deadline.
    params = {} if deadline is None else {"timeout": max(1, int(deadline - time.monotonic()) + 1)}
    try:
        with open_stream(target.events_path, params, last_event_id, read_timeout) as response:
            if response.status_code in (404, 405, 406, 501) and is_missing_route(response, target):
                raise StreamUnavailable
            if response.status_code >= 400:
                response.read()
                raise BnlabError.from_response(response)
            if "text/event-stream" not in response.headers.get("content-type", ""):
                raise StreamUnavailable
            for message in parse_sse(response.iter_lines()):
                yield RunEvent(message.event, parse_data(message.data), id=message.id)
                check_deadline(deadline, target.label)
    except httpx.ReadTimeout:
        check_deadline(deadline, target.label)
        raise


def poll(
    target: Followed, callback: EventCallback, deadline: float | None, poll_interval: float
) -> dict[str, Any]:
    while True:
        current = target.fetch()
        for event in target.poll_events(current):
            callback(event)
        if target.finished(current):
            return current
        check_deadline(deadline, target.label)
        time.sleep(poll_interval)


def is_missing_route(response: httpx.Response, target: Followed) -> bool:
    """404 can mean "no such run/sweep" (a real error) or "no events endpoint" (fall back)."""
    if response.status_code != 404:
        return True
    response.read()
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        return True
    return target.id not in detail and target.noun not in detail.lower()


def check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise BnlabError(f"timed out waiting for {what} to finish")
