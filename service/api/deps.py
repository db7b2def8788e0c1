"""Request dependencies: the app's settings, a database session, the executor and auth.

Everything hangs off ``request.app.state`` (set up by ``service.app.create_app``) rather than
module globals, so tests can run several apps on different databases in one process.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, Response
from pydantic import TypeAdapter
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.settings import Settings, hash_key

T = TypeVar("T")

# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the
# threadpool, and every hop there and back costs a thread switch and a GIL handoff (under load,
# several ms each while another thread computes).


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    session: Session = request.app.state.session_factory()  # no connection until first used
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)  # returns the connection: a ROLLBACK round trip


async def get_executor(request: Request) -> Any:
    return request.app.state.executor


async def in_session(request: Request, work: Callable[[Session], T]) -> T:
    """``work(session)`` in the threadpool, with a session opened and closed in that thread: one
    hop for the whole request. The hot read routes use this instead of SessionDep, which costs a
    hop to close the session, plus one to validate the response of a plain ``def`` route."""

    def run() -> T:
        with request.app.state.session_factory() as session:
            return work(session)

    return await run_in_threadpool(run)


@functools.cache
def _adapter(model: Any) -> TypeAdapter:
    return TypeAdapter(model)


def json_body(model: Any, value: Any) -> bytes:
    """``value`` as FastAPI sends it for ``response_model=model`` (validated, from attributes,
    by alias, to JSON by pydantic-core), to be sent as is or kept in a cache."""
    adapter = _adapter(model)
    return adapter.dump_json(adapter.validate_python(value, from_attributes=True), by_alias=True)


def json_response(body: bytes, status_code: int = 200) -> Response:
    return Response(body, status_code=status_code, media_type="application/json")


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
ExecutorDep = Annotated[Any, Depends(get_executor)]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


def key_matches(key: str, hashes: list[str]) -> bool:
    digest = hash_key(key)
    # Compare against every hash, without stopping early, in constant time per comparison.
    found = False
    for stored in hashes:
        found |= hmac.compare_digest(digest, stored)
    return found


async def authorize(request: Request, settings: SettingsDep) -> None:
    """No keys configured: open (the embedded default). Otherwise writes need a key, and reads
    too with ``auth_reads``. The key itself is never logged or echoed."""
    if not settings.api_key_hashes:
        return
    if request.method not in WRITE_METHODS and not settings.auth_reads:
        return
    key = presented_key(request)
    if key is None:
        raise HTTPException(
            401,
            "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(key, settings.api_key_hashes):
        raise HTTPException(403, "the API key is not valid")
