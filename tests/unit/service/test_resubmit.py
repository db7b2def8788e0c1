"""CeleryExecutor.resubmit_due: which queued runs the maintenance pass sends again (a broker
restart: all of them; otherwise those unclaimed for resubmit_after_s, doubling per resend).
No broker: a fake Redis answers INFO, a fake clock stands in for time.

The real thing (a private Redis restarted under a worker) is in
tests/integration/test_faults.py."""

from __future__ import annotations

from typing import Any

import pytest

from service.executor import RESUBMIT_MAX_S, CeleryExecutor
from service.settings import Settings


class FakeRedis:
    run_id: str | None = "epoch-1"  # None: unreachable

    def info(self, section: str) -> dict[str, Any]:
        assert section == "server"
        if FakeRedis.run_id is None:
            raise ConnectionError("down")
        return {"run_id": FakeRedis.run_id}

    def close(self) -> None:
        pass


@pytest.fixture
def executor(monkeypatch: pytest.MonkeyPatch) -> CeleryExecutor:
    import redis

    FakeRedis.run_id = "epoch-1"
    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(lambda *a, **k: FakeRedis()))
    settings = Settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", resubmit_after_s=10)
    executor = CeleryExecutor(settings)
    executor.now = 1000.0  # type: ignore[attr-defined]
    executor._clock = lambda: executor.now  # type: ignore[attr-defined]
    monkeypatch.setattr(executor._app, "send_task", lambda *a, **k: None)
    executor.start()
    return executor


def test_a_run_is_resent_after_resubmit_after_s_then_less_and_less_often(executor) -> None:  # noqa: ANN001
    executor.submit("a")
    assert executor.resubmit_due(["a"]) == []
    executor.now += 9.9
    assert executor.resubmit_due(["a"]) == []
    executor.now += 0.1
    assert executor.resubmit_due(["a"]) == ["a"]
    executor.submit("a")  # what the maintenance pass does with it
    executor.now += 10
    assert executor.resubmit_due(["a"]) == []  # now 20 s
    executor.now += 10
    assert executor.resubmit_due(["a"]) == ["a"]
    for _ in range(20):
        executor.submit("a")
    executor.now += RESUBMIT_MAX_S - 1
    assert executor.resubmit_due(["a"]) == []  # capped at an hour, not 10 * 2**21 s
    executor.now += 1
    assert executor.resubmit_due(["a"]) == ["a"]


def test_runs_it_never_sent_wait_a_full_interval_and_claimed_runs_are_forgotten(
    executor,  # noqa: ANN001
) -> None:
    assert executor.resubmit_due(["old"]) == []  # sent by an earlier process: assume in queue
    executor.now += 10
    assert executor.resubmit_due(["old"]) == ["old"]
    executor.submit("b")
    assert executor.resubmit_due([]) == []  # both claimed (or cancelled) meanwhile
    assert executor._sent == {}


def test_a_broker_restart_resends_every_queued_run_at_once(executor) -> None:  # noqa: ANN001
    executor.submit("a")
    assert executor.resubmit_due(["a", "b"]) == []
    FakeRedis.run_id = "epoch-2"  # restarted: its queue may be gone
    assert executor.resubmit_due(["a", "b"]) == ["a", "b"]
    assert executor.resubmit_due(["a", "b"]) == []  # once


def test_nothing_is_resent_while_the_broker_is_down_and_everything_after(executor) -> None:  # noqa: ANN001
    executor.submit("a")
    FakeRedis.run_id = None
    executor.now += 100
    assert executor.resubmit_due(["a"]) == []
    FakeRedis.run_id = "epoch-1"  # back, same identity: only the overdue run goes
    assert executor.resubmit_due(["a", "b"]) == ["a"]


def test_a_broker_unknown_at_start_and_seen_later_counts_as_restarted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    FakeRedis.run_id = None
    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(lambda *a, **k: FakeRedis()))
    executor = CeleryExecutor(Settings(_env_file=None, broker_url="redis://127.0.0.1:1/0"))
    executor.start()  # the broker is down as the API starts
    FakeRedis.run_id = "epoch-9"
    assert executor.resubmit_due(["a"]) == ["a"]
