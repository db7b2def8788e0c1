"""Execute one run: claim → trainer subprocess → stream its events into the store → finish.

    python -m workers.execute RUN_ID [--worker NAME]     # what the embedded executor runs

``execute_run`` is the whole job of a worker, whoever calls it (the Celery task or the
embedded executor's subprocess):

* claim the run with a guarded UPDATE, which returns this attempt's claim token; a
  re-delivered task finds it taken and returns. Every later write carries the token, so an
  attempt that lost the run (stalled, reaped, claimed again, even under the same worker name)
  changes nothing and stops its trainer at its next heartbeat;
* the trainer resumes from the run's last checkpoint (``BNLAB_ARTIFACT_DIR/runs/RUN_ID``)
  and says so first: the points a lost attempt stored after that step are deleted;
* spawn ``python -m bncore.train SPEC.json --data-dir DIR`` (with ``replicas`` > 1,
  torch.distributed's launcher running one per replica: ``workers/launch.py``) in its own
  process group, with PR_SET_PDEATHSIG so it never outlives the thread that spawned it (the
  one running here); a run with more replicas than this worker holds is failed, not started;
* read its JSON lines: the start event → device and torch version; metrics → the batching
  writer in ``workers/ingest.py``;
* ``workers/heartbeat.py`` keeps the run's heartbeat (and the worker's row) fresh; when the
  store says stop (cancel requested, or the run was reaped and given to someone else) this
  module kills the trainer's process group: SIGTERM, then SIGKILL after a grace period;
* record exactly one outcome: the trainer's end event (succeeded / diverged), cancelled, or
  failed with the exit code and the tail of stderr (for a group: the first rank that failed
  and why). Every exception path ends the run too.

The worker never imports torch: the trainer subprocess is the only place CUDA is touched
(``workers/device.py`` names the device without it). Past 400 lines because one attempt is
one story (claim, resume, spawn, stream, outcome, temp-folder cleanup) best read in order;
the batching writer and the heartbeat live in their own modules.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bncore import events
from bncore.checkpoint_files import prune
from service import store
from service.artifacts import run_artifact_dir
from service.db import first_line, open_session, with_db_retry
from service.proc import die_with_parent, embedded_worker_name, run_temp_dir, unique_worker_id
from service.settings import Settings, get_settings
from service.vocab import RunStatus
from workers.device import detect_device
from workers.heartbeat import Heartbeat
from workers.ingest import FINAL_WRITE_DEADLINE_S, MetricWriter
from workers.launch import capacity, exit_description, read_stderr, trainer_command

log = logging.getLogger("bnlab.execute")

KILL_GRACE_S = 5.0  # SIGTERM → SIGKILL
STDERR_TAIL_LINES = 30


class Interrupted(BaseException):
    """This process is asked to stop (SIGTERM in ``python -m workers.execute``): stop the
    trainer and put the run back in the queue rather than failing it."""


# ----------------------------------------------------------------------------- one run


class _Execution:
    """The state of one claimed run, from spawn to outcome."""

    def __init__(self, run_id: str, worker: str, claim: Claim, settings: Settings):
        self.run_id, self.worker, self.settings = run_id, worker, settings
        self.spec = claim.spec
        self.token = claim.token  # this attempt's claim: every write carries it
        self.stored_step = claim.stored_step
        self.resumed = False  # the trainer reported a resume (or a fresh start) to the store
        self.device = detect_device()
        self.proc: subprocess.Popen[str] | None = None
        self.end: dict[str, Any] | None = None
        self.stop_reason: str | None = None  # "cancel" | "lost", set by the heartbeat
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.replicas = int(self.spec.get("replicas", 1))
        self.rank_failures: list[tuple[int, str]] = []  # (rank, why), in the order reported
        self.started = time.monotonic()
        self._kill_lock = threading.Lock()

    def run(self) -> str:
        writer = MetricWriter(self.run_id, self.token, self.settings, self._prune_checkpoints)
        heartbeat = Heartbeat(
            self.run_id, self.worker, self.token, self.device, self.settings, self._stop
        )
        status: str | None = None
        try:
            with run_temp_dir(self.run_id) as tmp:
                spec_path = Path(tmp) / "spec.json"
                spec_path.write_text(json.dumps(self.spec))
                self.proc = self._spawn(spec_path)
                stderr_reader = threading.Thread(
                    target=read_stderr,
                    args=(self.proc.stderr, self.stderr_tail, self.run_id, self.rank_failures),
                    name=f"stderr-{self.run_id[:8]}",
                    daemon=True,
                )
                stderr_reader.start()
                writer.start()
                heartbeat.start()
                self._read_events(writer)
                code = self.proc.wait()
                stderr_reader.join(timeout=5)
            # The heartbeat goes on until the outcome is recorded: a final flush that waits out
            # a database outage must not make the run look lost.
            lost_points = writer.close()
            status = self._finish(code, writer, lost_points)
            return status
        except Interrupted:
            log.warning(
                "run %s: worker %s interrupted; stopping the trainer", self.run_id, self.worker
            )
            heartbeat.stop()
            self._kill()
            writer.close(deadline_s=10)
            status = self._release()
            return status
        except BaseException as exc:
            log.exception("run %s: worker error", self.run_id)
            heartbeat.stop()
            self._kill()
            writer.close(deadline_s=30)
            status = self._record(
                RunStatus.failed,
                f"worker error: {first_line(exc)}"[:500],
                error=f"{type(exc).__name__}: {exc}\n" + "\n".join(self.stderr_tail),
            )
            raise
        finally:
            heartbeat.stop()
            self._kill()  # stragglers in the trainer's group, on every path
            if status is None:  # the recording itself failed: one last plain attempt
                self._last_resort()
            self._worker_idle()

    # -- the trainer process

    def _spawn(self, spec_path: Path) -> subprocess.Popen[str]:
        cmd = trainer_command(
            self.settings,
            self.settings.python or sys.executable,
            spec_path,
            run_artifact_dir(self.settings, self.run_id),
            self.stored_step,
            self.replicas,
            self.run_id,
        )
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            start_new_session=True,  # its own process group: one killpg reaches all of it
            preexec_fn=die_with_parent(),  # noqa: PLW1509 (spawned by this run's own thread)
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.info(
            "run %s: trainer started (pid %d, %d replica(s)) on %s",
            self.run_id,
            proc.pid,
            self.replicas,
            self.device,
        )
        return proc

    def _prune_checkpoints(self, stored_step: int) -> None:
        """Points up to ``stored_step`` are stored: keep the newest ``checkpoint_keep``
        checkpoints at or before it and every later one (a retry resumes from the newest
        checkpoint its stored curve reaches; the trainer, running ahead of the store, cannot
        know which that is). Only after this attempt's own fenced writes: a lost attempt
        prunes nothing."""
        directory = run_artifact_dir(self.settings, self.run_id)
        prune(directory, self.settings.checkpoint_keep, stored_step)

    def _read_events(self, writer: MetricWriter) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            event = events.decode(line)
            if event is None:
                if line.strip():
                    log.debug("run %s trainer stdout: %s", self.run_id, line.rstrip()[:500])
                continue
            kind = event.get("event")
            if kind == "metrics":
                writer.add(int(event["step"]), event.get("values") or {})
            elif kind == "resume":
                step = int(event.get("step") or 0)
                self._record_resume(step if step > 0 else -1, str(event.get("reason") or ""))
            elif kind == "start":
                if not self.resumed:  # no checkpoint: this attempt starts from step 0
                    self._record_resume(-1, "")
                writer.set_start(str(event.get("device", "")), str(event.get("torch", "")))
            elif kind == "end":
                self.end = event

    def _record_resume(self, step: int, why: str) -> None:
        """Before any of its points: the store keeps only the points up to ``step`` (those of
        the checkpoint this attempt resumed from; -1: none), so the curve is one attempt's."""
        self.resumed = True
        where = f"resumed from step {step}" if step > 0 else "started from step 0"
        reason = f"running on {self.worker}; {where}" + (f" ({why})" if why else "")

        def record(session: Session) -> bool:
            return store.record_resume(session, self.run_id, self.token, step, reason[:500])

        if not with_db_retry(
            self.settings, f"run {self.run_id}: resume point", record, deadline_s=60
        ):
            log.warning("run %s: claim lost before the resume point was recorded", self.run_id)
            self._stop("lost")
        elif step > 0 or why:
            log.info("run %s: %s", self.run_id, reason)

    def _stop(self, why: str) -> None:
        """Called by the heartbeat thread when the store says this run must stop."""
        self.stop_reason = why
        if why == "cancel":
            log.info("run %s: cancel requested; stopping the trainer", self.run_id)
        else:
            log.warning(
                "run %s is no longer %s's (reaped or deleted); stopping", self.run_id, self.worker
            )
        self._kill()

    def _kill(self) -> None:
        """SIGTERM to the trainer's process group, SIGKILL after KILL_GRACE_S."""
        proc = self.proc
        if proc is None:
            return
        with self._kill_lock:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                return  # the group is gone
            try:
                proc.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("run %s: trainer ignored SIGTERM; killing it", self.run_id)
            # The leader may be gone while others in its group live on.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_GRACE_S)

    # -- outcomes

    def _finish(self, code: int, writer: MetricWriter, lost_points: int) -> str:
        elapsed = time.monotonic() - self.started
        end = self.end
        if end is not None:
            if code != 0:
                log.warning(
                    "run %s: trainer %s after its end event", self.run_id, exit_description(code)
                )
            step = int(end.get("step") or 0)
            last_step = max(step, writer.max_step or 0)
            common = {
                "summary": end.get("summary"),
                "wall_time": end.get("wall_time", elapsed),
                "last_step": last_step,
            }
            if lost_points:
                common["error"] = f"{lost_points} metric point(s) could not be stored"
            outcome = end.get("outcome")
            if outcome == "succeeded":
                return self._record(RunStatus.succeeded, f"finished {step} steps", **common)
            if outcome == "diverged":
                reason = end.get("reason") or f"diverged at step {step}"
                return self._record(RunStatus.diverged, reason, diverged_step=step, **common)
            return self._record(
                RunStatus.failed,
                f"trainer reported an unknown outcome {outcome!r}",
                **common,
            )
        if self.stop_reason == "cancel":
            return self._record(RunStatus.cancelled, "cancelled by request", wall_time=elapsed)
        if self.stop_reason == "lost":
            return self._current_status()
        tail = [line for line in self.stderr_tail if line.strip()]
        last = tail[-1].strip() if tail else "no output on stderr"
        what = f"trainer {exit_description(code)} without an end event"
        failed_ranks = ""  # the launcher's own summary fills the tail: keep the ranks' words
        if self.rank_failures:  # the first rank to fail; the others followed it down
            rank, last = self.rank_failures[0]
            what = f"rank {rank} of {self.replicas} failed (launcher {exit_description(code)})"
            failed_ranks = "".join(f"[rank {r}] {why}\n" for r, why in self.rank_failures)
        log.error("run %s: %s", self.run_id, what)
        return self._record(
            RunStatus.failed,
            f"{what}: {last}"[:500],
            error=f"{what}\n{failed_ranks}--- last lines of stderr ---\n"
            + "\n".join(self.stderr_tail),
            wall_time=elapsed,
        )

    def _record(self, status: RunStatus, reason: str, **outcome: Any) -> str:
        """finish_run guarded on this worker (a reaped run's retry keeps its own outcome)."""

        def finish(session: Session) -> bool:
            return store.finish_run(
                session, self.run_id, status, reason, token=self.token, **outcome
            )

        if with_db_retry(
            self.settings,
            f"run {self.run_id}: recording {status}",
            finish,
            deadline_s=FINAL_WRITE_DEADLINE_S,
        ):
            log.info("run %s %s on %s: %s", self.run_id, status.value, self.worker, reason)
            return status.value
        current = self._current_status()
        log.warning(
            "run %s: could not record %s, it is already %s (reaped or cancelled meanwhile)",
            self.run_id,
            status.value,
            current,
        )
        return current

    def _release(self) -> str:
        if self.stop_reason == "cancel":
            return self._record(RunStatus.cancelled, "cancelled by request")

        def release(session: Session) -> bool:
            return store.release_run(
                session,
                self.run_id,
                self.worker,
                f"worker {self.worker} stopped; requeued",
                token=self.token,
            )

        if with_db_retry(self.settings, f"run {self.run_id}: release", release, deadline_s=10):
            log.info("run %s put back in the queue by %s (shutdown)", self.run_id, self.worker)
            return RunStatus.queued.value
        return self._current_status()

    def _current_status(self) -> str:
        def read(session: Session) -> str:
            return store.get_run(session, self.run_id).status

        try:
            return with_db_retry(self.settings, "reading run status", read, deadline_s=10)
        except store.NotFound:
            return "deleted"

    def _last_resort(self) -> None:
        try:
            with open_session(self.settings) as session:
                store.finish_run(
                    session,
                    self.run_id,
                    RunStatus.failed,
                    "worker could not record the outcome",
                    token=self.token,
                )
        except Exception as exc:  # the reaper will find it by its stale heartbeat
            log.error("run %s: could not record any outcome: %s", self.run_id, first_line(exc))

    def _worker_idle(self) -> None:
        try:
            with open_session(self.settings) as session:
                store.worker_seen(session, self.worker, device=self.device, current_run_id=None)
        except Exception as exc:
            log.warning("worker %s: could not update its row: %s", self.worker, first_line(exc))


def execute_run(run_id: str, worker_name: str, settings: Settings | None = None) -> str:
    """Claim and execute one run; returns its status afterwards. A run that is not queued
    (a re-delivered task, a cancelled run, another worker's) is left alone."""
    settings = settings or get_settings()

    def claim(session: Session) -> Claim | str:
        token = store.claim_run(session, run_id, worker_name)
        if token is not None:
            stored = store.metric_summary(session, run_id)
            stored_step = max((s["last_step"] for s in stored.values()), default=0)
            return Claim(token, store.get_run(session, run_id).spec, stored_step)
        try:
            return store.get_run(session, run_id).status
        except store.NotFound:
            return "missing"

    claimed = with_db_retry(settings, f"claiming run {run_id}", claim, deadline_s=30)
    if not isinstance(claimed, Claim):
        log.info("run %s not executed by %s: it is %s, not queued", run_id, worker_name, claimed)
        return claimed
    log.info("run %s claimed by %s", run_id, worker_name)
    replicas, holds = int(claimed.spec.get("replicas", 1)), capacity(settings)
    if replicas > holds:  # routing keeps such runs away (Celery); the embedded pool cannot
        return _refuse(run_id, worker_name, claimed.token, settings, replicas, holds)
    return _Execution(run_id, worker_name, claimed, settings).run()


def _refuse(
    run_id: str, worker: str, token: str, settings: Settings, replicas: int, holds: int
) -> str:
    """Fail a run this worker cannot hold, saying why, rather than start part of it."""
    reason = (
        f"the run needs {replicas} replicas; worker {worker} holds at most {holds} (max_replicas)"
    )

    def finish(session: Session) -> bool:
        return store.finish_run(session, run_id, RunStatus.failed, reason, token=token)

    with_db_retry(settings, f"run {run_id}: refusing it", finish, deadline_s=30)
    log.warning("run %s: %s", run_id, reason)
    return RunStatus.failed.value


@dataclass(frozen=True)
class Claim:
    """A claimed attempt: its token, the run's spec, and the last step whose points earlier
    attempts stored (a resume must not start past it)."""

    token: str
    spec: dict[str, Any]
    stored_step: int


# ----------------------------------------------------------------------------- entry point


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.execute", description=__doc__)
    parser.add_argument("run_id")
    parser.add_argument(
        "--worker", default=None, help="default: a unique embedded@<hostname>:<pid>:<random>"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=get_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGTERM, _raise_interrupted)
    # execute_run logs the outcome itself, whichever it is. Interrupted before the claim, there
    # is nothing to put back.
    with contextlib.suppress(Interrupted):
        execute_run(args.run_id, args.worker or unique_worker_id(embedded_worker_name()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
