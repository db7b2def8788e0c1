"""Worker rows: every executing process has a name of its own, so the rows of stopped ones are
pruned once silent for ``worker_retention_s``; live ones (idle or busy) stay."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from service import store
from service.models import Worker, utcnow


def test_silent_worker_rows_are_pruned_and_live_ones_kept(session: Session) -> None:
    for name in ("gone@h:1:aa", "gone-mid-run@h:2:bb", "idle@h:3:cc", "busy@h:4:dd"):
        store.worker_seen(session, name, device="cpu")
    store.worker_seen(session, "busy@h:4:dd", device="cpu", current_run_id="r1")
    week_ago = utcnow() - timedelta(days=7, seconds=1)
    session.execute(
        update(Worker)
        .where(Worker.name.in_(["gone@h:1:aa", "gone-mid-run@h:2:bb"]))
        .values(last_heartbeat=week_ago)
    )
    session.execute(  # crashed while executing a run: its row still names the run
        update(Worker).where(Worker.name == "gone-mid-run@h:2:bb").values(current_run_id="r0")
    )
    session.commit()

    assert store.prune_workers(session, 7 * 24 * 3600.0) == 2
    assert [w.name for w in store.list_workers(session)] == ["busy@h:4:dd", "idle@h:3:cc"]
    assert store.prune_workers(session, 7 * 24 * 3600.0) == 0
