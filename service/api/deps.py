"""Request dependencies: the app's settings, a database session, the executor and auth.

Everything hangs off ``request.app.state`` (set up by ``service.app.create_app``) rather than
module globals, so tests can run several apps on different databases in one process.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from service.settings import Settings, hash_key


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


def get_executor(request: Request) -> Any:
    return request.app.state.executor


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


def authorize(request: Request, settings: SettingsDep) -> None:
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
