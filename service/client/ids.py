"""Short ids: a unique prefix of a run's or a sweep's id (a UUID) standing for the whole id.

Tables show the first 8 characters (``service.vocab.short_id``); every command takes them
back. These helpers check what a user typed and pick the one id it matches, with errors that
say what went wrong (not hex, no match, several matches named). The lookups themselves are
``BnlabClient.resolve_run_id`` and ``resolve_sweep_id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from service.client.errors import BnlabError

HEX_DIGITS = frozenset("0123456789abcdef-")  # what a run or sweep id (a UUID) is made of
MAX_CANDIDATES = 5  # how many ids an ambiguous prefix error names at most


def prefix_of(id_or_prefix: str, noun: str) -> str | None:
    """None for a whole UUID (used as is); else the lower-case prefix to match, or
    BnlabError(400) when it cannot be one."""
    text = id_or_prefix.strip()
    if is_uuid(text):
        return None
    prefix = text.lower()
    if not prefix or not set(prefix) <= HEX_DIGITS:
        raise BnlabError(
            f"{id_or_prefix!r} is not a {noun} id: give the id or a prefix of it "
            f"(hex digits, e.g. the 8 characters `bnlab {noun}s` shows)",
            status=400,
        )
    return prefix


def matching(items: Iterator[dict[str, Any]], prefix: str) -> list[str]:
    """Ids starting with ``prefix``, stopping at MAX_CANDIDATES (enough to name them)."""
    found: list[str] = []
    for item in items:
        if str(item.get("id", "")).startswith(prefix):
            found.append(str(item["id"]))
            if len(found) >= MAX_CANDIDATES:
                break
    return found


def one_id(ids: Sequence[str], prefix: str, noun: str) -> str:
    """The one id a prefix matched; BnlabError 404 (none) or 400 (several, named)."""
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise BnlabError(f"no {noun} id starts with {prefix!r}", status=404)
    raise BnlabError(
        f"several {noun}s start with {prefix!r}, e.g. {', '.join(ids[:MAX_CANDIDATES])}; "
        "give more characters of the id",
        status=400,
    )


def is_uuid(text: str) -> bool:
    """A whole UUID in its 36-character form (what the server uses as run ids)."""
    if len(text) != 36:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
