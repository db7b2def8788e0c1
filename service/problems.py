"""Every error the API returns is RFC 9457 problem+json, never an HTML page or a stack trace.

Body: ``{"type", "title", "status", "detail"}`` plus ``errors: [{"loc", "msg", "type"}]`` for
field problems (422). Handlers here cover HTTPException, request validation (malformed JSON is a
400, a bad field a 422 whose ``detail`` names the field and the bound), store.NotFound (404),
store.Conflict (409), an unreachable database (503) and anything unexpected (500, logged with
its traceback server-side only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.store import Conflict, NotFound

log = logging.getLogger("bnlab.api")

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """Raised by routes for errors that are not plain HTTP ones (e.g. a sweep combination that
    fails validation: a 422 with its own ``errors`` list)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.errors = errors
        self.headers = headers


def problem(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or _phrase(status),
        "status": status,
        "detail": detail or _phrase(status),
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# ----------------------------------------------------------------------------- validation


def format_loc(loc: Sequence[Any]) -> str:
    """("body", "model", "hidden", 0) → "model.hidden[0]"; the transport part is dropped."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        source, parts = parts[0], parts[1:]
        if not parts:
            return "body" if source == "body" else source
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "spec"


def clean_errors(
    errors: Iterable[dict[str, Any]], prefix: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """pydantic's error dicts without ``input``/``ctx`` (they may echo a large body or hold
    objects JSON cannot carry); ``loc`` as a list, optionally under ``prefix``."""
    return [
        {"loc": [*prefix, *err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type")}
        for err in errors
    ]


def one_line(errors: Sequence[dict[str, Any]], limit: int = 5) -> str:
    """A readable summary: "steps: Input should be less than or equal to 200000; …"."""
    parts = [f"{format_loc(e['loc'])}: {e['msg']}" for e in errors[:limit]]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def validation_problem(
    exc: RequestValidationError | ValidationError, prefix: Sequence[Any] = ()
) -> JSONResponse:
    raw = list(exc.errors())
    if any(err.get("type") == "json_invalid" for err in raw):
        # Not a field problem: the body is not JSON at all.
        bad = next(e for e in raw if e.get("type") == "json_invalid")
        pos, reason = bad["loc"][-1], (bad.get("ctx") or {}).get("error")
        detail = f"malformed JSON body at position {pos}" + (f": {reason}" if reason else "")
        return problem(400, detail, title="Malformed JSON")
    errors = clean_errors(raw, prefix)
    return problem(422, one_line(errors), title="Validation failed", errors=errors)


# ----------------------------------------------------------------------------- OpenAPI

# Errors any operation of the versioned API can answer, beyond what each route documents.
API_ERRORS = {
    "400": "A value the database cannot store or compare (e.g. a NUL character).",
    "401": "No API key (when keys are configured): `WWW-Authenticate: Bearer`.",
    "403": "The API key is not valid.",
    "503": "The database is unavailable; retry after `Retry-After` seconds.",
}
BODY_ERRORS = {
    "400": "Malformed JSON body.",
    "413": "Body over the size limit.",
    "422": "Invalid body: names the field and the bound.",
}
VALIDATION_ERROR = "Invalid parameter: names the field and the bound."


def document_errors(schema: dict[str, Any], api_prefix: str = "/api/v1") -> dict[str, Any]:
    """Make the OpenAPI document say what is sent: every error response (4xx/5xx) is
    ``application/problem+json`` with the Problem schema (FastAPI documents its default 422
    as ``application/json`` HTTPValidationError, and a route's Problem model under
    ``application/json`` as well); operations under ``api_prefix`` also document 401, 403 and
    503, and operations with a body 400 (malformed JSON), 413 and 422."""
    from service.schemas import Problem  # schemas does not import this module: no cycle

    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(
        "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            extra = dict(API_ERRORS) if path.startswith(api_prefix) else {}
            if "requestBody" in operation:
                extra.update(BODY_ERRORS)
            for status, description in extra.items():
                responses.setdefault(status, {"description": description})
            if "422" in responses and responses["422"].get("description") == "Validation Error":
                responses["422"]["description"] = VALIDATION_ERROR
            for status, response in responses.items():
                if status[:1] in ("4", "5"):
                    response["content"] = dict(content)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


# ----------------------------------------------------------------------------- handlers


async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = getattr(exc, "headers", None)
    if exc.status_code == 400 and detail == FASTAPI_PARSE_ERROR and exc.__cause__ is not None:
        detail = f"malformed JSON body: {_parse_failure(exc.__cause__)}"
        return problem(400, detail, title="Malformed JSON")
    if exc.status_code == 405:
        # Starlette's Allow lists the methods of the first route matching the path only;
        # /runs has GET and POST as two routes, so a PUT was told "Allow: POST".
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return problem(exc.status_code, detail, headers=headers)


# FastAPI's detail when decoding a body fails other than by a JSON syntax error (which is a
# json_invalid validation error, see validation_problem); the cause says what went wrong.
FASTAPI_PARSE_ERROR = "There was an error parsing the body"


def _parse_failure(cause: BaseException) -> str:
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"not valid UTF-8 (byte {cause.start})"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number with too many digits"
    return "it cannot be decoded"


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts at this request's path (asked of the routes, which
    FastAPI may nest in included routers)."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    ]


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_problem(exc)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return problem(exc.status, exc.detail, title=exc.title, errors=exc.errors, headers=exc.headers)


async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
    return problem(404, str(exc))


async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
    return problem(409, str(exc))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DataError):
        # The database refused a value this request carried (PostgreSQL: a NUL character in a
        # string, a number out of range): the client's input, not an outage and not a 500.
        reason = _first_line(exc)
        log.warning(
            "database refused a value on %s %s: %s", request.method, request.url.path, reason
        )
        return problem(400, f"a value in this request cannot be stored or compared: {reason}")
    if isinstance(exc, IntegrityError | ProgrammingError):
        # The database answered: this is a bug or a race we did not handle, not an outage.
        return await _unexpected(request, exc)
    # One line, no traceback: an outage would otherwise flood the log with identical stacks.
    log.error(
        "database unavailable on %s %s: %s", request.method, request.url.path, _first_line(exc)
    )
    return problem(503, "database unavailable", headers={"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal server error")


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    # OperationalError and InterfaceError (server down, connection lost, file unreadable) are
    # DBAPIErrors; the handler sends the ones that are not outages to the 500 path.
    for exc_type in (OperationalError, InterfaceError, DBAPIError):
        app.add_exception_handler(exc_type, _database_error)
    app.add_exception_handler(Exception, _unexpected)
