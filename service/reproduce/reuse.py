"""Resuming a suite: which runs already on the server can stand in for the ones a plan needs.

A long profile (``paper``: hours) must survive an interruption. Rerun against the same server
(or the same embedded database), the runner looks up each run the plan would create by its
name (``key[norm=none,seed=0]``: the sweep's name plus its grid values, see ``plan.expand``)
and takes an existing run when its stored spec is exactly the planned one after validation
(same defaults filled in) and it has not failed or been cancelled: finished runs are reused,
queued or running ones are waited for. Everything else is submitted again.

Pure functions on the API's run dicts; the runner does the HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bncore.spec import JobSpec
from service.vocab import RunStatus

# A failed or cancelled run measured nothing: it is trained again rather than reused.
REUSABLE_STATUSES = (RunStatus.succeeded, RunStatus.diverged, RunStatus.running, RunStatus.queued)
FINISHED_FIRST = {status: rank for rank, status in enumerate(REUSABLE_STATUSES)}


def stored_form(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec as the server stores it: validated, every default filled in."""
    return JobSpec.model_validate(spec).model_dump(mode="json")


def pick_reusable(spec: dict[str, Any], candidates: Sequence[dict[str, Any]]) -> dict | None:
    """The existing run (``RunOut`` dicts, e.g. ``GET /runs?name=``) that can stand in for
    ``spec``: same name and stored spec, not failed or cancelled; a finished one before one
    still queued or running, then the newest. None when there is none."""
    wanted = stored_form(spec)
    usable = [
        run
        for run in candidates
        if run.get("status") in REUSABLE_STATUSES
        and run.get("name") == wanted["name"]
        and run.get("spec") == wanted
    ]
    if not usable:
        return None
    newest_first = sorted(usable, key=lambda r: r.get("created_at") or "", reverse=True)
    return min(newest_first, key=lambda r: FINISHED_FIRST[RunStatus(r["status"])])
