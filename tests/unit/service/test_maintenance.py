"""service.maintenance: one pass over a real SQLite store with an executor that records what it
is sent (the reaper's own rules are tested with the store)."""

from __future__ import annotations

from collections.abc import Sequence

from bncore.spec import JobSpec
from service import store
from service.db import open_session, session_factory
from service.executor import LocalExecutor
from service.maintenance import maintain_once
from service.settings import Settings
from service.vocab import SUBMIT_FAILED, WAITING


class ResendingExecutor:
    """Submits by recording; ``due`` is what resubmit_due answers, ``down`` refuses submits."""

    def __init__(self, due: Sequence[str] = ()) -> None:
        self.submitted: list[str] = []
        self.asked: list[list[str]] = []
        self.due = list(due)
        self.down = False

    def submit(self, run_id: str) -> None:
        if self.down:
            raise ConnectionError("broker down (test)")
        self.submitted.append(run_id)

    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    def broker_ok(self) -> bool:
        return not self.down

    def resubmit_due(self, queued: Sequence[str]) -> list[str]:
        self.asked.append(list(queued))
        return [r for r in self.due if r in queued]


def queued_runs(settings: Settings, count: int) -> list[str]:
    with open_session(settings) as session:
        return [store.create_run(session, JobSpec(steps=10))[0].id for _ in range(count)]


def reason_of(settings: Settings, run_id: str) -> str | None:
    with open_session(settings) as session:
        return store.get_run(session, run_id).status_reason


def test_the_pass_resends_what_the_executor_says_is_due(settings: Settings) -> None:
    first, second = queued_runs(settings, 2)
    executor = ResendingExecutor(due=[second])
    maintain_once(settings, session_factory(settings.database_url), executor)
    assert executor.asked == [[first, second]]
    assert executor.submitted == [second]


def test_a_refused_run_is_retried_once_the_broker_is_back(settings: Settings) -> None:
    (run_id,) = queued_runs(settings, 1)
    executor = ResendingExecutor()
    executor.down = True
    with open_session(settings) as session:
        store.set_queued_reason(session, run_id, SUBMIT_FAILED)
    maintain_once(settings, session_factory(settings.database_url), executor)
    assert executor.submitted == [] and executor.asked == []  # still down: stop there
    assert reason_of(settings, run_id) == SUBMIT_FAILED
    executor.down = False
    maintain_once(settings, session_factory(settings.database_url), executor)
    assert executor.submitted == [run_id]
    assert executor.asked == [[]]  # retried above, so not offered for a second resend
    assert reason_of(settings, run_id) == WAITING


def test_the_embedded_executor_never_has_anything_to_resend(settings: Settings) -> None:
    executor = LocalExecutor(settings)
    try:
        assert executor.resubmit_due(["a", "b"]) == []
    finally:
        executor.shutdown()
