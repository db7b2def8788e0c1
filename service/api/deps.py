"""Request dependencies: the app's settings, a database session, the executor and auth.

Everything hangs off ``request.app.state`` (set up by ``service.app.create_app``) rather than
module globals, so tests can run several apps on different databases in one process.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, Response
from pydantic import TypeAdapter
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.auth import ApiKey, Caller, Scope, load_keys, match_key
from service.quotas import RateLimiter, check_rate
from service.settings import Settings

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
KEY_REQUIRED = "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


def presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


def api_keys(request: Request) -> list[ApiKey]:
    """The app's configured keys, parsed once per app (settings are fixed once it runs)."""
    state = request.app.state
    keys = getattr(state, "api_keys", None)
    if keys is None:
        settings: Settings = state.settings
        keys = state.api_keys = load_keys(settings.api_key_hashes, settings.api_key_file)
    return keys


def needed_scope(request: Request, settings: Settings) -> Scope | None:
    """What a request needs by its method: writes ``submit``; reads ``read`` with
    ``auth_reads``, else nothing. Routes that need more say so (:func:`require_admin`, and
    the owner check of cancel and delete)."""
    if request.method in WRITE_METHODS:
        return Scope.submit
    return Scope.read if settings.auth_reads else None


async def authorize(request: Request, settings: SettingsDep) -> None:
    """No keys configured: open (the embedded default), the caller is ``None``. Otherwise a
    presented key must be valid (403), a request that needs a scope needs a key (401) with
    that scope (403), and the caller (the key's name and scopes) is kept on ``request.state``
    for the routes. The key itself is never logged or echoed."""
    request.state.caller = None
    keys = api_keys(request)
    if not keys:
        return
    needed = needed_scope(request, settings)
    key = presented_key(request)
    if key is None:
        if needed is None:
            return
        raise HTTPException(401, KEY_REQUIRED, headers={"WWW-Authenticate": "Bearer"})
    matched = match_key(key, keys)
    if matched is None:
        raise HTTPException(403, "the API key is not valid")
    caller = request.state.caller = Caller(matched.name, matched.scopes)
    if needed is not None and not caller.may(needed):
        raise HTTPException(403, f"the API key {caller.name!r} lacks the {needed} scope")
    if request.method == "POST":
        check_rate(rate_limiter(request), caller.name)


def rate_limiter(request: Request) -> RateLimiter:
    """The app's POST rate limiter (one per app; a test may set its own, with a fake clock)."""
    state = request.app.state
    limiter = getattr(state, "rate_limiter", None)
    if limiter is None:
        limiter = state.rate_limiter = RateLimiter(state.settings.quota_posts_per_minute)
    return limiter


async def get_caller(request: Request) -> Caller | None:
    """Who is calling (set by :func:`authorize`); None on an open server or an anonymous
    read."""
    return getattr(request.state, "caller", None)


CallerDep = Annotated[Caller | None, Depends(get_caller)]


def caller_name(caller: Caller | None) -> str | None:
    return caller.name if caller is not None else None


async def require_admin(request: Request, caller: CallerDep) -> None:
    """Admin-only routes: on a server with keys, a key with the ``admin`` scope."""
    if not api_keys(request):
        return
    if caller is None:
        raise HTTPException(401, KEY_REQUIRED, headers={"WWW-Authenticate": "Bearer"})
    if not caller.may(Scope.admin):
        raise HTTPException(403, f"the API key {caller.name!r} lacks the admin scope")


def ensure_may_change(caller: Caller | None, created_by: str | None, what: str) -> None:
    """Cancel and delete: a key may change the runs it submitted (``submit``, checked by
    :func:`authorize`); anyone else's, or those submitted with no key, need ``admin``."""
    if caller is None or caller.may(Scope.admin):
        return
    if created_by is None or created_by != caller.name:
        raise HTTPException(
            403,
            f"{what} another key's run needs the admin scope (the API key {caller.name!r} "
            "may change only the runs it submitted)",
        )
