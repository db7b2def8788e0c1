"""The one exception the client raises: :class:`BnlabError`, an API problem (RFC 9457
problem+json: ``title``, ``status``, ``detail``, field ``errors``) or a transport failure,
with a message meant for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx2 as httpx


class BnlabError(Exception):
    """An API error (problem+json) or a transport failure, with a message meant for people."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []

    def __str__(self) -> str:
        """The message, then each field error not already spelled out in it."""
        lines = [self.message]
        for error in self.errors:
            line = f"{format_loc(error.get('loc') or [])}: {error.get('msg', error)}"
            if line not in self.message:
                lines.append(f"  {line}")
        return "\n".join(lines)

    @classmethod
    def from_response(cls, response: httpx.Response) -> BnlabError:
        """Build the error from a problem+json body, or from whatever the body is."""
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            title = body.get("title") or response.reason_phrase
            detail = body.get("detail")
            if not isinstance(detail, str):  # FastAPI's default {"detail": [...]} shape
                detail = json.dumps(detail) if detail is not None else None
            errors = body.get("errors") if isinstance(body.get("errors"), list) else None
        else:
            title = response.reason_phrase or "Error"
            detail = response.text.strip()[:500] or None
            errors = None
        message = f"{title} ({status})" + (f": {detail}" if detail and detail != title else "")
        return cls(message, status=status, title=title, detail=detail, errors=errors)


def format_loc(loc: Sequence[Any]) -> str:
    """["body", "model", "hidden", 0] → "model.hidden[0]", as the server's problem details
    write it (the transport part, body/query/path/header, is dropped)."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header") and len(parts) > 1:
        parts = parts[1:]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(spec)"
