"""API keys: who may call the API and what each key may do.

A key is known to the server only as a SHA-256 digest, with a name (recorded on the runs it
creates and in the audit trail) and scopes:

- ``read``    list and read runs, sweeps, metrics, events, workers
- ``submit``  also submit runs and sweeps, tag them, cancel and delete *its own* runs
- ``admin``   also cancel and delete anyone's runs and read the audit trail

Each scope includes the ones above it. Keys are configured as entries, in
``BNLAB_API_KEY_HASHES`` (comma-separated) or ``BNLAB_API_KEY_FILE`` (one per line, ``#``
comments), as printed by ``bnlab hash-key NAME --scope SCOPE``::

    alice:submit:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae

A bare digest (the format before names and scopes) still works: it is a key with every scope,
named ``key-`` and the digest's first 8 hex digits.

This module is pure (hashlib, hmac): the CLI uses it without loading the server.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Scope(StrEnum):
    read = "read"
    submit = "submit"
    admin = "admin"


_RANK = {Scope.read: 0, Scope.submit: 1, Scope.admin: 2}
ALL_SCOPES = frozenset(Scope)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
SCOPE_SEPARATOR = "+"  # within an entry: "," separates entries in BNLAB_API_KEY_HASHES


def hash_key(key: str) -> str:
    """API keys are kept and compared as SHA-256 digests, never in clear."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits), for ``bnlab hash-key`` when none is given."""
    return "bnlab_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    """A configured key: its name, its scopes and the digest it is recognised by."""

    name: str
    scopes: frozenset[Scope]
    digest: str

    def entry(self) -> str:
        """The configuration entry for this key (what ``bnlab hash-key`` prints)."""
        ordered = sorted(self.scopes, key=_RANK.__getitem__)
        return f"{self.name}:{SCOPE_SEPARATOR.join(ordered)}:{self.digest}"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name and scopes. ``None`` in place of a Caller means an open
    server (no keys configured), where everyone may do everything."""

    name: str
    scopes: frozenset[Scope]

    def may(self, needed: Scope) -> bool:
        return any(_RANK[scope] >= _RANK[needed] for scope in self.scopes)


def parse_scopes(text: str) -> frozenset[Scope]:
    names = [part.strip() for part in text.split(SCOPE_SEPARATOR) if part.strip()]
    if not names:
        raise ValueError("no scope (expected read, submit or admin)")
    unknown = [name for name in names if name not in Scope.__members__]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (expected read, submit or admin)")
    return frozenset(Scope(name) for name in names)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            "a key name is 1-64 letters, digits or _ . @ - (starting with a letter or digit)"
        )
    return name


def parse_entry(entry: str) -> ApiKey:
    """``NAME:SCOPES:DIGEST`` or a bare ``DIGEST``. Errors never quote the entry: it may be a
    key pasted by mistake."""
    parts = entry.strip().split(":")
    if len(parts) == 1:
        digest = parts[0].lower()
        if not _DIGEST.match(digest):
            raise ValueError(
                "not a SHA-256 hex digest (64 hex digits; `bnlab hash-key` prints one)"
            )
        return ApiKey(f"key-{digest[:8]}", ALL_SCOPES, digest)
    if len(parts) != 3:
        raise ValueError("expected NAME:SCOPES:SHA256 or a bare SHA-256 digest")
    name, scopes, digest = parts[0].strip(), parts[1], parts[2].strip().lower()
    if not _DIGEST.match(digest):
        raise ValueError("the digest is not 64 hex digits (`bnlab hash-key` prints one)")
    return ApiKey(check_name(name), parse_scopes(scopes), digest)


def parse_entries(entries: Iterable[str], source: str) -> list[ApiKey]:
    keys = []
    for number, entry in enumerate(entries, start=1):
        try:
            keys.append(parse_entry(entry))
        except ValueError as exc:
            raise ValueError(f"{source}, entry {number}: {exc}") from None
    return keys


def read_key_file(path: Path) -> list[ApiKey]:
    """The entries of a key file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"BNLAB_API_KEY_FILE {path}: cannot read ({exc.strerror})") from None
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return parse_entries([line for line in lines if line], f"BNLAB_API_KEY_FILE {path}")


def load_keys(entries: Sequence[str], key_file: Path | None) -> list[ApiKey]:
    """Every configured key: the env entries, then the file's."""
    keys = parse_entries(entries, "BNLAB_API_KEY_HASHES")
    if key_file is not None:
        keys += read_key_file(key_file)
    return keys


def match_key(presented: str, keys: Sequence[ApiKey]) -> ApiKey | None:
    """The configured key whose digest is the presented key's. Every digest is compared,
    without stopping at a match, in constant time per comparison: how long this takes says
    nothing about which key (or how much of one) matched."""
    digest = hash_key(presented)
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest) and found is None:
            found = key
    return found
