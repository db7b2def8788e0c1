r"""The event id of a sweep's stream (/api/v1/sweeps/{id}/events): a cursor holding the last
step sent for every run of the sweep, so a reconnecting EventSource (``Last-Event-ID``)
resumes each run exactly where it stopped.

Format
------
For a sweep whose runs, in its stable order (creation time, then id), are
:math:`r_1, \dots, r_n`, with :math:`s_i` the last step of :math:`r_i` sent (-1: none yet):

.. math::
    \text{cursor} = F \,\texttt{.}\, E,\qquad
    F = \mathrm{hex}_8\big(\mathrm{CRC32}(r_1\texttt{,}r_2\texttt{,}\dots\texttt{,}r_n)\big),
    \qquad v_i = s_i + 1 \in [0,\ \text{MAX\_STEP} + 1]

* ``F``, the fingerprint, ties the cursor to that exact list of runs: a cursor of another
  sweep, or one made before a run was deleted from (or added to) this one, does not match
  (:class:`CursorMismatch`, answered 409) instead of resuming the wrong runs.
* ``E`` lists :math:`v_1, \dots, v_n` in base 36 (digits ``0-9a-z``), comma-separated, and
  ``V*N`` (N in base 36) stands for N runs in a row at V:

  .. math::
      \underbrace{v, v, \dots, v}_{N} \;\mapsto\; \texttt{b36}(v)\texttt{*}\texttt{b36}(N)

Examples: ``1c9a02f3.0*8`` is 8 runs with nothing sent; ``1c9a02f3.6y*3,0*5`` has steps
0..249 of the first three runs sent (:math:`v = 250 = 6\cdot 36 + 34`, "6y").

Bounds
------
:math:`v \le \text{MAX\_STEP} + 1 = 2^{31}` = ``zik0zk`` is at most 6 base-36 digits (the
parser allows 7 and checks the value), so with :math:`n \le` MAX_SWEEP_RUNS an id is at most

.. math::
    |\text{cursor}| \le 9 + 8\,n \quad(\text{"}F\texttt{.}\text{" and, per run, 6 digits, a
    comma and a spare character})

characters: ~7 kB at worst (1000 runs, all at different steps). Runs that move in step
compress to a few characters.

Canonical and streamed forms
----------------------------
:func:`encode_sweep_cursor` merges every run of equal values. While one run's steps go out the
stream only changes that run's entry, so :func:`step_cursors` encodes the others once and
leaves that entry unmerged (``5,5`` where the canonical form has ``5*2``). Both decode to the
same steps; the ids a stream sends are the streamed form.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import groupby

from service.api.common import MAX_STEP
from service.schemas import MAX_SWEEP_RUNS

_FINGERPRINT = re.compile(r"[0-9a-f]{8}")
_ENTRY = re.compile(r"([0-9a-z]{1,7})(?:\*([0-9a-z]{1,4}))?")
MAX_CURSOR_CHARS = 9 + 8 * MAX_SWEEP_RUNS  # "fp." + up to MAX_SWEEP_RUNS "vvvvvv," entries


class CursorMismatch(ValueError):
    """A well-formed cursor for another list of runs (another sweep, or a run was deleted)."""


def _b36(n: int) -> str:
    """``n`` ≥ 0 in base 36, lower-case digits, no leading zeros."""
    digits = ""
    while True:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
        if n == 0:
            return digits


def _fingerprint(run_ids: Sequence[str]) -> str:
    """:math:`F`: CRC-32 of the comma-joined run ids, 8 lower-case hex digits."""
    return f"{zlib.crc32(','.join(run_ids).encode()):08x}"


def _rle(values: Iterable[int]) -> str:
    """Base-36 entries, runs of equal values as "V*N"."""
    parts = []
    for value, group in groupby(values):
        n = sum(1 for _ in group)
        token = _b36(value)
        parts.append(token if n == 1 else f"{token}*{_b36(n)}")
    return ",".join(parts)


def encode_sweep_cursor(run_ids: Sequence[str], sent: Mapping[str, int]) -> str:
    """The id of a sweep's event: the last step sent per run (absent or -1: none)."""
    return f"{_fingerprint(run_ids)}." + _rle(sent.get(r, -1) + 1 for r in run_ids)


def step_cursors(
    run_ids: Sequence[str], sent: Mapping[str, int], index: int
) -> Callable[[int], str]:
    r"""``step → id`` for the events of ``run_ids[index]`` while only its entry changes: the
    entries before and after it (``sent`` must hold every run) are encoded once, its own is
    :math:`\texttt{b36}(step + 1)`, never merged with equal neighbours (the streamed form)."""
    before = _rle(sent[r] + 1 for r in run_ids[:index])
    behind = _rle(sent[r] + 1 for r in run_ids[index + 1 :])
    head = f"{_fingerprint(run_ids)}." + (before + "," if before else "")
    tail = "," + behind if behind else ""
    return lambda step: head + _b36(step + 1) + tail


def decode_sweep_cursor(cursor: str, run_ids: Sequence[str]) -> dict[str, int]:
    """{run_id: last step sent (-1: none)}. ValueError for anything we did not make;
    CursorMismatch for a cursor made for another list of runs."""
    fingerprint, dot, body = cursor.partition(".")
    if not dot or not _FINGERPRINT.fullmatch(fingerprint) or len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError("not a sweep event id")
    values: list[int] = []
    for entry in body.split(",") if body else []:
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise ValueError("not a sweep event id")
        value, count = int(match[1], 36), int(match[2] or "1", 36)
        if value > MAX_STEP + 1 or count < 1 or len(values) + count > MAX_SWEEP_RUNS:
            raise ValueError("not a sweep event id")
        values.extend([value] * count)
    if fingerprint != _fingerprint(run_ids):
        raise CursorMismatch("made for another list of runs")
    if len(values) != len(run_ids):
        raise ValueError("not a sweep event id")
    return {run_id: value - 1 for run_id, value in zip(run_ids, values, strict=True)}
