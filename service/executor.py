"""How a run id reaches the job-execution code (``workers/execute.py``), without importing it.

Two executors behind one protocol (docs/api-contract.md):

* ``CeleryExecutor`` — a thin Celery *client*: it only sends the task ``vocab.TASK_NAME`` by
  name to the queue; Celery workers (``workers/celery_app.py``) pick it up.
* ``LocalExecutor`` — the embedded default: a bounded pool of threads, each running
  ``python -m workers.execute RUN_ID`` as a subprocess. The API process never trains, so a
  trainer crash (or CUDA state) cannot take the API down, and the subprocess dies with us
  (PR_SET_PDEATHSIG, see service/proc.py) instead of training on as an orphan.

``submit_run`` is how the API (routers and the maintenance pass) hands a queued run to either:
a broker that is down leaves the run queued with a reason, to be retried.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sqlalchemy.orm import Session

from service import store
from service.db import open_session
from service.proc import (
    clean_stale_temp_dirs,
    die_with_parent,
    embedded_worker_name,
    gone_local_workers,
    redact_url,
    settings_env,
    unique_worker_id,
)
from service.settings import Settings
from service.vocab import SUBMIT_FAILED, TASK_NAME, WAITING, RunStatus, queue_for_replicas

log = logging.getLogger("bnlab.executor")

CHILD_STOP_GRACE_S = 10.0  # embedded children get this long to stop their trainer and release
RESUBMIT_MAX_S = 3600.0  # the longest wait between two resends of one queued run


class Executor(Protocol):
    # Never blocks on training; raises if refused. ``replicas`` (the spec's) picks the Celery
    # queue, so that only a worker able to hold the run gets it (service.vocab).
    def submit(self, run_id: str, replicas: int = 1) -> None: ...
    def start(self) -> None: ...  # called in the API lifespan startup
    def shutdown(self) -> None: ...
    def broker_ok(self) -> bool: ...  # for /readyz

    def resubmit_due(self, queued: Sequence[str]) -> list[str]:
        """Which of these queued runs to send again now, because their message may have been
        lost on the way to a worker (asked by every maintenance pass)."""
        ...


def submit_run(session: Session, executor: Executor, run_id: str, *, retry: bool = False) -> bool:
    """Hand a queued run to the executor. If the broker is down the run stays queued with the
    reason ``SUBMIT_FAILED`` and the maintenance pass tries again later (``retry=True``)."""
    try:
        replicas = int(store.get_run(session, run_id).spec.get("replicas", 1))
        if replicas > 1:  # sized: the Celery queue of runs this large
            executor.submit(run_id, replicas=replicas)
        else:
            executor.submit(run_id)
    except Exception as exc:
        log.warning("run %s: submit failed (%s); will retry", run_id, exc)
        store.set_queued_reason(session, run_id, SUBMIT_FAILED)
        return False
    if retry:  # it was refused before: it is now simply waiting
        store.set_queued_reason(session, run_id, WAITING, only_if_reason=SUBMIT_FAILED)
    return True


# ----------------------------------------------------------------------------- Celery


class CeleryExecutor:
    """Sends ``TASK_NAME`` by name; never imports the task code.

    A message can be lost after it was sent: a Redis without persistence forgets its queue on
    restart (and the unacknowledged messages of running tasks). The database still says
    ``queued``, so the API's maintenance pass asks ``resubmit_due`` which queued runs to send
    again: all of them when the broker restarted (its Redis run id changed), and any run left
    unclaimed ``settings.resubmit_after_s`` after it was last sent (doubling per resend, up to
    RESUBMIT_MAX_S) as a safety net for other losses. A duplicate costs a worker one guarded
    UPDATE that finds the run taken (see workers/execute.py), never a second execution.
    """

    def __init__(self, settings: Settings) -> None:
        from celery import Celery  # only the Celery deployment needs it

        self.settings = settings
        self._app = Celery("bnlab-client", broker=settings.broker_url, set_as_current=False)
        self._app.conf.update(
            task_default_queue=settings.queue,
            # A POST must not hang while the broker is down: fail fast, the run stays queued
            # and the API's maintenance loop resubmits it.
            broker_connection_timeout=2,
            broker_connection_retry=False,
            broker_connection_max_retries=1,
            broker_transport_options={
                "visibility_timeout": settings.visibility_timeout_s,
                "socket_connect_timeout": 2,
                "socket_timeout": 5,
                "max_retries": 1,
            },
        )
        self._clock = time.monotonic
        self._lock = threading.Lock()
        self._sent: dict[str, tuple[float, int]] = {}  # run id → (last sent, resends so far)
        self._epoch: str | None = None  # the broker's identity (Redis run id) when last seen
        self._seen_down = False  # the broker was unreachable since we last knew its identity

    def submit(self, run_id: str, replicas: int = 1) -> None:
        queue = queue_for_replicas(self.settings.queue, replicas)
        self._app.send_task(
            TASK_NAME,
            args=[run_id],
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5},
        )
        with self._lock:
            previous = self._sent.get(run_id)
            self._sent[run_id] = (self._clock(), 0 if previous is None else previous[1] + 1)
        log.info("run %s sent to queue %s", run_id, queue)

    def start(self) -> None:
        """Nothing to start: Celery workers run elsewhere; the API reaps lost runs. Notes the
        broker's identity, so that a restart from now on is noticed (see resubmit_due)."""
        self._observe_epoch()

    def resubmit_due(self, queued: Sequence[str]) -> list[str]:
        """Which of these queued runs (not refused by the broker: those are retried anyway) to
        send again now. Empty while the broker is down."""
        restarted, up = self._observe_epoch()
        if not up:
            return []
        now = self._clock()
        due: list[str] = []
        with self._lock:
            waiting = set(queued)
            for run_id in [r for r in self._sent if r not in waiting]:
                del self._sent[run_id]  # claimed, cancelled or deleted: forget it
            for run_id in queued:
                sent = self._sent.get(run_id)
                if sent is None:  # sent before we started, or by another API replica
                    self._sent[run_id] = (now, 0)
                    if restarted:
                        due.append(run_id)
                elif restarted or now - sent[0] >= self._resend_interval(sent[1]):
                    due.append(run_id)
        if due:
            why = "the broker restarted" if restarted else "not claimed in time"
            log.warning("resending %d queued run(s): %s", len(due), why)
        return due

    def _resend_interval(self, resends: int) -> float:
        base = self.settings.resubmit_after_s
        return min(base * 2.0 ** min(resends, 32), max(base, RESUBMIT_MAX_S))

    def _observe_epoch(self) -> tuple[bool, bool]:
        """(restarted since last seen, reachable now). A Redis broker is identified by its run
        id, which changes on every restart; other brokers are not checked (always up here,
        leaving failures to submit)."""
        url = self.settings.broker_url or ""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return False, True
        try:
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
            try:
                epoch = str(client.info("server")["run_id"])
            finally:
                client.close()
        except Exception as exc:
            if not self._seen_down:
                log.warning("broker %s unreachable: %s", redact_url(url), exc)
            self._seen_down = True
            return False, False
        # Unknown before (we started while it was down) counts as a restart: its queue may
        # have been lost meanwhile.
        restarted = epoch != self._epoch and (self._epoch is not None or self._seen_down)
        self._epoch, self._seen_down = epoch, False
        return restarted, True

    def shutdown(self) -> None:
        self._app.close()

    def broker_ok(self) -> bool:
        url = self.settings.broker_url or ""
        try:
            if url.startswith(("redis://", "rediss://", "unix://")):
                import redis

                client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
                try:
                    return bool(client.ping())
                finally:
                    client.close()
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=1)
            return True
        except Exception as exc:  # any failure means "not ready"
            log.warning("broker %s unreachable: %s", redact_url(url), exc)
            return False


# ----------------------------------------------------------------------------- embedded


class LocalExecutor:
    """The embedded executor: ``settings.embedded_concurrency`` runs at a time, each in its own
    ``python -m workers.execute`` subprocess (which spawns the trainer in turn).

    Each child executes under its own name, ``embedded@HOST:PID:RANDOM`` with this server's
    pid (its children die with it): a server starting on the same host and database can tell
    the runs of a previous, dead server (reaped at once) from those of a live one (left alone).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_name = embedded_worker_name()  # the prefix of its children's names
        self._pool = ThreadPoolExecutor(
            max_workers=settings.embedded_concurrency, thread_name_prefix="bnlab-run"
        )
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # submitted and not yet done
        # Submitted again while still pending (reaped while its child stalled): executed again
        # once that child ends, if the run is still queued then.
        self._again: set[str] = set()
        self._names: dict[str, str] = {}  # run id → the worker name of its child
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._closed = False

    def submit(self, run_id: str, replicas: int = 1) -> None:
        """``replicas`` is not needed here: the child's worker checks its own capacity.

        A run submitted while its child still runs was reaped: the child sent no heartbeat
        for the timeout (stalled, or stopped). Its claim is void, so it can write nothing
        more, but it holds the run's place: it is killed (its trainer dies with it) and the
        run is executed again once it is gone, whether it would ever have woken or not."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the embedded executor is shut down")
            fresh = run_id not in self._pending
            if fresh:
                self._pending.add(run_id)
            else:
                self._again.add(run_id)
            stale = None if fresh else self._children.get(run_id)
        if fresh:
            self._pool.submit(self._execute, run_id)
        elif stale is not None:
            log.warning("run %s: requeued while its process %d ran; killing it", run_id, stale.pid)
            with contextlib.suppress(ProcessLookupError):
                stale.kill()

    def start(self) -> None:
        """Recover after a restart: runs left ``running`` by an embedded server of this host
        whose process is gone lost it with that server, so requeue (or fail) them now rather
        than after the heartbeat timeout, then submit everything queued. Runs of a live server
        (a second one on the same database) are left to it. Also removes the temporary folders
        of killed runs."""
        for path in clean_stale_temp_dirs():
            log.info("removed %s, left behind by a killed run", path)
        with open_session(self.settings) as session:
            local = store.running_workers(session, f"{self.worker_name}:")
            gone = gone_local_workers(local)
            if gone:
                for run_id, status in store.reap_stale(
                    session, 0, self.settings.max_attempts, workers=gone, why="its server is gone"
                ):
                    log.warning("run %s was left running by a previous server: %s", run_id, status)
            queued = store.queued_run_ids(session)
        for run_id in queued:
            self.submit(run_id)
        if queued:
            log.info("embedded executor: %d queued run(s) submitted on start", len(queued))

    def shutdown(self) -> None:
        """Stop taking work and stop the running children: each stops its trainer and puts its
        run back in the queue (see workers.execute), so the next start picks it up."""
        with self._lock:
            self._closed = True
            children = list(self._children.values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        for child in children:
            try:
                child.wait(CHILD_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("embedded child %d did not stop in time; killing it", child.pid)
                child.kill()
                child.wait()

    def broker_ok(self) -> bool:
        return True  # no broker: the pool lives in this process

    def resubmit_due(self, queued: Sequence[str]) -> list[str]:
        """Nothing: no message can get lost between this process and its own pool (start()
        submits what a previous process left queued)."""
        return []

    def _execute(self, run_id: str) -> None:
        """Runs in a pool thread, which lives for the whole child (PDEATHSIG follows it)."""
        try:
            name = unique_worker_id(self.worker_name)
            cmd = [self.settings.python or sys.executable, "-m", "workers.execute", run_id]
            cmd += ["--worker", name]
            with self._lock:
                if self._closed:
                    return
                child = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    env=settings_env(self.settings),
                    preexec_fn=die_with_parent(),  # noqa: PLW1509 (intended, see die_with_parent)
                )
                self._children[run_id] = child
                self._names[run_id] = name
            code = child.wait()
            with self._lock:
                self._children.pop(run_id, None)
                closed = self._closed
            if code != 0 and not closed:
                self._fail_abandoned(run_id, name, code)
        except Exception:
            log.exception("run %s: embedded executor could not execute it", run_id)
        finally:
            with self._lock:
                self._pending.discard(run_id)
                self._names.pop(run_id, None)
                again = run_id in self._again and not self._closed
                self._again.discard(run_id)
            if again:  # a claim that finds the run no longer queued is a no-op
                log.info("run %s was requeued while its process ran: executing it again", run_id)
                with contextlib.suppress(RuntimeError):
                    self.submit(run_id)

    def _fail_abandoned(self, run_id: str, name: str, code: int) -> None:
        """The child died without recording an outcome (it records one on every path it
        controls): fail the run so that it is not left running or waiting forever."""
        reason = f"embedded worker process exited with code {code} before finishing the run"
        log.error("run %s: %s", run_id, reason)
        with open_session(self.settings) as session:
            finished = store.finish_run(session, run_id, RunStatus.failed, reason, worker=name)
            with self._lock:
                requeued = run_id in self._again  # reaped meanwhile: it gets another try
            if not finished and not requeued:
                store.fail_queued(session, run_id, reason)


class RecordingExecutor:
    """An executor that trains nothing: it records the run ids it is given. For tests and
    dry runs of the API, where the caller plays the worker through the store.
    ``fail_submit`` makes submit raise (a broker that is down); ``broker_up`` is what
    broker_ok() says."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.started = False
        self.stopped = False
        self.fail_submit = False
        self.broker_up = True

    def submit(self, run_id: str, replicas: int = 1) -> None:
        if self.fail_submit:
            raise ConnectionError("broker down (test)")
        self.submitted.append(run_id)

    def start(self) -> None:
        self.started = True

    def shutdown(self) -> None:
        self.stopped = True

    def broker_ok(self) -> bool:
        return self.broker_up

    def resubmit_due(self, queued: Sequence[str]) -> list[str]:
        return []


def make_executor(settings: Settings) -> Executor:
    """Celery when a broker is configured, else the embedded pool."""
    if settings.broker_url:
        return CeleryExecutor(settings)
    return LocalExecutor(settings)
