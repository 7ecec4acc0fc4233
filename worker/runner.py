"""Run one job: record it, enforce its timeout, retry transient errors, report the outcome.

`Runner.run` never raises: whatever a job does, the result is an Outcome in the ledger,
a `job.finished` log line and, when configured, Sentry check-ins and alerts.
"""

from __future__ import annotations

import contextvars
import random
import socket
import threading
import time
import traceback
import uuid
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from worker import registry
from worker.job import Job, JobContext, Notice, Outcome, Status, TransientError, cut
from worker.ledger import Fenced, JobChecks, JobState, Ledger, RunRecord, utc_now
from worker.reporting.log import get_logger
from worker.reporting.redact import Redactor
from worker.reporting.sentry import SentryReporter
from worker.schedule import JobSpec
from worker.timespec import format_duration, missed_slots
from worker.version import version

#: Exceptions worth another attempt; anything else is a bug or a config error.
TRANSIENT = (TransientError, ConnectionError, TimeoutError)
# How long an interrupted run may take to clean up; Render's SIGKILL comes 30 s after
# SIGTERM, and the shutdown grace (25 s by default) has used most of that.
_WIND_DOWN_S = 3.0
#: How often a running job checks that its instance still holds the lease.
_WATCH_S = 0.2
#: Missed runs kept in memory while the ledger cannot take them; past this, one line counts the rest.
_PENDING_MAX = 1000
#: Slots of one job recorded as missed one by one after a vacancy of the lead; past this, the log line and the
#: alert say there were more.
GAP_RECORDS = 100


@dataclass
class _Handle:
    """A run in progress, as the daemon sees it when it has to stop."""

    job: JobSpec
    run_id: str
    token: int | None
    """The lease's token of the term that started it."""
    cancel: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    interrupted: bool = False


class Runner:
    """Runs jobs and reports every run; shared by the daemon and `opskeeper run-now`."""

    def __init__(
        self,
        ledger: Ledger,
        sentry: SentryReporter,
        redactor: Redactor,
        tz: zoneinfo.ZoneInfo,
        build: Callable[[str, Any], Job] = registry.build,
    ) -> None:
        self.build = build
        #: The schedule's jobs by id, for jobs that work on another job's output.
        self.jobs: dict[str, JobSpec] = {}
        self.ledger = ledger
        self.sentry = sentry
        self.redact = redactor
        self.tz = tz
        self.host = socket.gethostname()
        #: Who runs, for the ledger: the daemon sets its instance id and, while leading, the lease's token.
        self.instance = self.host
        self.token: int | None = None
        #: Whether this instance may still start a run (the daemon: its lease is valid), asked again once the
        #: run's start is recorded and before its work begins.
        self.may_start: Callable[[], bool] = lambda: True
        #: Set in the foreground (run-now): runs report their progress to it. The daemon has none.
        self.progress: Any = None
        self.version = version()
        self.log = get_logger()
        self._active: dict[str, _Handle] = {}
        self._idle = threading.Condition()
        # Threads of runs that timed out but have not returned yet, by job id: a new run
        # of the same job waits for none of them, but is skipped while one is alive.
        self._stragglers: dict[str, threading.Thread] = {}
        # Records the ledger could not take when they happened, written once it answers again: (record, whether
        # it is a history entry of something done, written as it is; else a missed run, written under the term then).
        self._pending: list[tuple[RunRecord, bool]] = []
        self._pending_dropped = 0
        #: Ends of runs (finish's arguments) the ledger could not take when they happened.
        self._unfinished: list[tuple[str, Status, str, Mapping[str, Any], datetime]] = []
        self._pending_lock = threading.Lock()
        self._unrecorded_reported = False

    # --- one run ----------------------------------------------------------------

    def run(self, job: JobSpec, scheduled_at: datetime | None = None, rerun_of: RunRecord | None = None) -> RunRecord:
        """Run `job` once, now; returns the finished ledger record.

        `rerun_of` is a run a deploy interrupted: this run takes its place, closing its Crons slot.
        """
        straggler = self._stragglers.get(job.id)
        if straggler is not None and straggler.is_alive():
            return self.missed(
                job, scheduled_at or utc_now(), "skipped: the previous run is still running past its timeout"
            )
        run_id = uuid.uuid4().hex
        # One trace per run: its check-ins, alerts, notices and transaction, and no other run's.
        with self.sentry.run(job, run_id) as txn:
            return self._run(job, run_id, scheduled_at, rerun_of, txn)

    def _run(
        self, job: JobSpec, run_id: str, scheduled_at: datetime | None, rerun_of: RunRecord | None, txn: Any
    ) -> RunRecord:
        started = utc_now()
        # The Crons slot's id is chosen now, kept with the start, and opened only once the start is recorded.
        check_in_id = (rerun_of.check_in if rerun_of and rerun_of.check_in else uuid.uuid4().hex) \
            if self.sentry.monitors(job) else None  # fmt: skip
        record = RunRecord(
            run_id=run_id, job_id=job.id, kind=job.kind, status=Status.RUNNING, started_at=started,
            scheduled_at=scheduled_at, host=self.host, version=self.version, instance=self.instance,
            token=self.token, check_in=check_in_id,
        )  # fmt: skip
        log = self.log.bind(job_id=job.id, kind=job.kind, run_id=run_id)
        # No effect without a record: a run whose start the ledger did not take does not begin.
        try:
            self.ledger.start(record)
        except Exception as exc:  # noqa: BLE001 - any failure to record means no run
            return self._not_started(job, record, exc)
        self._unrecorded_reported = False
        if not self.may_start():
            # The start took long enough (a slow ledger) for the lease's validity to end: another may lead now.
            reason = "not started: the lease's validity ran out while the ledger recorded its start"
            self._finish(run_id, Status.MISSED, reason, {}, utc_now())
            return self._closed_unstarted(job, record, reason, log)
        self.sentry.checkin(job, self.tz, Status.RUNNING, check_in_id)
        precise = datetime.now(UTC)
        lateness = None if scheduled_at is None else round((precise - scheduled_at).total_seconds(), 4)
        extra = {"rerun_of": rerun_of.run_id} if rerun_of else {}
        log.info("job.started", scheduled_at=scheduled_at and scheduled_at.isoformat(), lateness_s=lateness,
                 token=self.token, **extra)  # fmt: skip
        handle = _Handle(job, run_id, record.token)
        with self._idle:
            self._active[run_id] = handle
        try:
            outcome = self._execute(job, handle, scheduled_at or started, log)
            if txn is not None:
                txn.set_status("ok" if outcome.status.is_success else "internal_error")
            return self._report(job, record, outcome, check_in_id, log)
        finally:
            # Only now: the daemon's shutdown waits for this, and the run is fully recorded.
            with self._idle:
                del self._active[run_id]
                self._idle.notify_all()

    def _not_started(self, job: JobSpec, record: RunRecord, exc: BaseException) -> RunRecord:
        """The ledger refused or could not take a run's start: the run does not begin, and it is recorded as
        missed once the ledger answers (a fenced instance records nothing: it no longer leads)."""
        log = self.log.bind(job_id=job.id, kind=job.kind, run_id=record.run_id)
        if isinstance(exc, Fenced):
            reason = f"not started: this instance no longer holds the lease ({exc})"
            log.warning("ledger.fenced", operation="start", token=record.token, summary=reason)
        else:
            reason = f"not started: the ledger did not record its start ({cut(self.redact.text(one_line(exc)), 200)})"
            log.error("job.not_started", summary=reason)
            self._defer(replace(record, status=Status.MISSED, finished_at=utc_now(), summary=reason, check_in=None))
            if not self._unrecorded_reported:
                # Once per outage, whatever the jobs' alert_on: runs not starting is the daemon's problem.
                self._unrecorded_reported = True
                with self.sentry.own_trace():
                    self.sentry.problem(f"opskeeper: runs are not starting, {reason.removeprefix('not started: ')}",
                                        "runs-not-started", job_id=job.id)  # fmt: skip
        return self._closed_unstarted(job, record, reason, log)

    def _closed_unstarted(self, job: JobSpec, record: RunRecord, reason: str, log: Any) -> RunRecord:
        """A run that never began: no Crons check-in was opened (Sentry sees the slot missed); alert as missed."""
        if alerts(job, Status.MISSED):
            self.sentry.alert(job, Outcome(Status.MISSED, reason), record.run_id)
        log.info("job.finished", status=Status.MISSED.value, duration_s=0.0, summary=reason)
        return replace(record, status=Status.MISSED, finished_at=utc_now(), summary=reason)

    def _finish(self, run_id: str, status: Status, summary: str, details: Mapping[str, Any],
                finished_at: datetime) -> bool | None:  # fmt: skip
        """Record a run's end; kept to write later when the ledger cannot take it now (None then), so that no
        run stays `running` in the ledger after it ended."""
        try:
            return bool(self.ledger.finish(run_id, status, summary, details, finished_at))
        except Exception as exc:  # noqa: BLE001 - the ledger being down must not stop the run being reported
            self.log.error("ledger.error", operation="finish", error=self.redact.text(one_line(exc)))
            with self._pending_lock:
                if len(self._unfinished) < _PENDING_MAX:
                    self._unfinished.append((run_id, status, summary, details, finished_at))
            return None

    def _defer(self, record: RunRecord, *, history: bool = False) -> None:
        with self._pending_lock:
            if len(self._pending) < _PENDING_MAX:
                self._pending.append((record, history))
            else:
                self._pending_dropped += 1

    def flush_missed(self) -> int:
        """Write the run ends, history entries and missed runs the ledger could not take (the missed ones under the
        current term); how many missed runs were written.

        Called by the leader at each lease step. What cannot be written yet goes back in the queue.
        """
        with self._pending_lock:
            pending, self._pending = self._pending, []
            dropped, self._pending_dropped = self._pending_dropped, 0
            unfinished, self._unfinished = self._unfinished, []
        for i, end in enumerate(unfinished):
            try:
                self.ledger.finish(*end)
            except Exception:  # noqa: BLE001 - still unreachable: keep them and the rest for the next try
                with self._pending_lock:
                    self._unfinished[:0] = unfinished[i:]
                    self._pending[:0] = pending
                    self._pending_dropped += dropped
                return 0
        missed = [record for record, history in pending if not history]
        if dropped and missed:
            more = f"{dropped} more runs were not started while the ledger was unreachable (not kept one by one)"
            pending.append((replace(missed[-1], run_id=uuid.uuid4().hex, summary=more), False))
        written = 0
        for i, (record, history) in enumerate(pending):
            try:
                if history:
                    self.ledger.record(record, False)
                else:
                    self.ledger.record(replace(record, instance=self.instance, token=self.token))
                    written += 1
            except Fenced:
                continue  # no longer leading: the next leader's gap check records this slot
            except Exception:  # noqa: BLE001 - still unreachable: keep them for the next try
                with self._pending_lock:
                    self._pending[:0] = pending[i:]
                return written
        return written

    def _report(
        self, job: JobSpec, record: RunRecord, outcome: Outcome, check_in_id: str | None, log: Any
    ) -> RunRecord:
        outcome = replace(
            outcome, summary=self.redact.text(outcome.summary), details=self.redact(dict(outcome.details))
        )
        finished = utc_now()
        closed = self._finish(record.run_id, outcome.status, outcome.summary, outcome.details, finished)
        if closed is False:
            # Someone closed it first: the daemon at a deadline, or a new leader that took this instance for dead.
            log.warning("run.already_closed", status=outcome.status.value,
                        summary="the ledger already held this run's end; its outcome is in this line only")  # fmt: skip
        done = replace(record, status=outcome.status, finished_at=finished, summary=outcome.summary,
                       details=outcome.details)  # fmt: skip
        log.info("job.finished", status=outcome.status.value, duration_s=done.duration_s, summary=outcome.summary)
        # A problem the job already announced itself is a finding, not a failed run.
        crons_status = Status.OK if outcome.alerted and outcome.status is Status.FAIL else outcome.status
        if outcome.status is Status.INTERRUPTED:
            # A deploy stopped it; that is no failure of the job. A kind safe to repeat leaves its
            # slot open for the next leader's re-run to close; any other closes it ok.
            crons_status = Status.RUNNING if reruns(job) else Status.OK
        if crons_status is not Status.RUNNING:
            self.sentry.checkin(job, self.tz, crons_status, check_in_id, done.duration_s)
        if alerts(job, outcome.status) and not outcome.alerted:
            self.sentry.alert(job, outcome, record.run_id)
        return done

    def _notify(self, job: JobSpec, run_id: str, notice: Notice, log: Any) -> None:
        message = self.redact.text(notice.message)
        context = self.redact(dict(notice.context))
        getattr(log, notice.level)("job.notice", notice=message, **{k: v for k, v in context.items() if k != "event"})
        self.sentry.notice(job, run_id, replace(notice, message=message, context=context))

    def _action(self, job: JobSpec, kind: str, status: Status, summary: str, details: Mapping[str, Any], *,
                token: int | None) -> str:  # fmt: skip
        """Record something a run did (an automatic rollback) as a history entry of its own kind, stamped with the
        run's term and kept whatever the lease says now: it happened (the fence was before the effect)."""
        now = utc_now()
        record = RunRecord(
            run_id=uuid.uuid4().hex, job_id=job.id, kind=kind, status=status, started_at=now, finished_at=now,
            summary=self.redact.text(summary), details=self.redact(dict(details)), host=self.host,
            version=self.version, instance=self.instance, token=token,
        )  # fmt: skip
        try:
            self.ledger.record(record, False)
        except Exception as exc:  # noqa: BLE001 - the ledger being down must not lose what the run did
            self.log.error("ledger.error", operation="record", kind=kind, error=self.redact.text(one_line(exc)))
            self._defer(record, history=True)
        return record.run_id

    def missed(self, job: JobSpec, scheduled_at: datetime, reason: str, *, alert: bool = True) -> RunRecord:
        """Record and report a run that did not happen; a missed run is never silent.

        Recorded under this instance's term; kept to write later when the ledger cannot take it now.
        """
        now = utc_now()
        record = RunRecord(
            run_id=uuid.uuid4().hex, job_id=job.id, kind=job.kind, status=Status.MISSED, started_at=now,
            scheduled_at=scheduled_at, finished_at=now, summary=reason, host=self.host, version=self.version,
            instance=self.instance, token=self.token,
        )  # fmt: skip
        try:
            self.ledger.record(record)
        except Fenced as exc:
            self.log.warning("ledger.fenced", operation="missed", job_id=job.id, summary=str(exc))
        except Exception as exc:  # noqa: BLE001 - the ledger being down must not lose the record
            self.log.error("ledger.error", operation="record", error=self.redact.text(one_line(exc)))
            self._defer(record)
        self.log.warning(
            "job.missed", job_id=job.id, kind=job.kind, run_id=record.run_id, status="missed",
            scheduled_at=scheduled_at.isoformat(), summary=reason,
        )  # fmt: skip
        if alert and alerts(job, Status.MISSED):
            with self.sentry.own_trace():
                self.sentry.alert(job, Outcome(Status.MISSED, reason), record.run_id)
        return record

    def record_gap(self, job: JobSpec, resumed: datetime) -> datetime | None:
        """Record as missed each slot of `job` that nobody ran between its newest record and `resumed`, a
        take-over (after a crash, a pause, a ledger outage, a deploy's gap): every slot has a record, run or not.
        Returns the newest recorded slot (None when there is none), from which the new leader goes on."""
        try:
            times = [r.scheduled_at for r in self.ledger.recent(job.id, 20) if r.scheduled_at is not None]
        except Exception:  # noqa: BLE001 - a ledger that cannot say leaves no gap to fill
            return None
        if not times:
            return None  # never scheduled before: no slot was owed
        last = max(times)
        slots = missed_slots(job.schedule, self.tz, last, resumed, GAP_RECORDS + 1)
        if not slots:
            return last
        more = len(slots) > GAP_RECORDS
        slots = slots[:GAP_RECORDS]
        reason = (f"missed: no instance ran it (the lead was vacant from after {last.isoformat()} until "
                  f"{resumed.isoformat(timespec='seconds')}, when {self.instance} took over)")  # fmt: skip
        for slot in slots:
            self.missed(job, slot, reason, alert=False)
        counted = f"{len(slots)}{'+' if more else ''}"
        self.log.warning("job.gap", job_id=job.id, missed=len(slots), more=more, first=slots[0].isoformat(),
                         last=slots[-1].isoformat(), summary=f"{counted} slot(s) missed: {reason}")  # fmt: skip
        if alerts(job, Status.MISSED):
            with self.sentry.own_trace():
                self.sentry.alert(job, Outcome(Status.MISSED, f"{counted} runs {reason}"), "gap")
        return last

    def _execute(self, job: JobSpec, handle: _Handle, scheduled_at: datetime, log: Any) -> Outcome:
        timeout = job.timeout.total_seconds()
        ctx = JobContext(
            job_id=job.id,
            run_id=handle.run_id,
            scheduled_at=scheduled_at,
            deadline=time.monotonic() + timeout,
            state=JobState(self.ledger, job.id, None if handle.token is None else (self.instance, handle.token)),
            cancel=handle.cancel,
            log=log.info,
            progress=self.progress.update if self.progress is not None else None,
            notify=lambda notice: self._notify(job, handle.run_id, notice, log),
            checks=JobChecks(self.ledger, job.id),
            jobs=self.jobs,
            history=self.ledger,
            record=lambda kind, status, summary, details: self._action(
                job, kind, status, summary, details, token=handle.token
            ),
            token=handle.token,
            instance=self.instance,
            fence=self._fence_of(handle.token),
        )

        def work() -> None:
            try:
                handle.outcome = self._attempts(job, ctx, log)
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an ERROR outcome
                handle.outcome = _error_outcome(exc)
            handle.wake.set()

        # A thread per run, so a job that ignores its deadline cannot wedge the scheduler.
        # The job's thread runs in this run's context, so what it sends to Sentry joins the run's trace.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), name=f"job:{job.id}",
                                  daemon=True)  # fmt: skip
        thread.start()
        lost = self._watch(handle, time.monotonic() + timeout)
        if handle.outcome is not None and not handle.interrupted:
            return handle.outcome
        handle.cancel.set()
        if handle.interrupted:
            # Give the job a moment to stop what it started (a command kills its process
            # group) before the process exits under it.
            thread.join(_WIND_DOWN_S)
            if lost:
                return Outcome(Status.INTERRUPTED, "stopped: this instance could no longer prove it holds the lease, "
                                                   "so another may run the job now")  # fmt: skip
            return Outcome(Status.INTERRUPTED, "the daemon stopped before this run ended")
        self._stragglers[job.id] = thread
        return Outcome(Status.TIMEOUT, f"did not finish within its timeout of {format_duration(job.timeout)}")

    def _fence_of(self, token: int | None) -> Callable[[], None]:
        if token is None:
            return lambda: None
        instance = self.instance
        return lambda: self.ledger.fence(instance, token)

    def _watch(self, handle: _Handle, deadline: float) -> bool:
        """Wait for the run's end or its deadline; stop it at once if the lease's validity runs out meanwhile
        (a pause, a partition): True then. One active instance means its runs too, not only its starts."""
        while not handle.wake.wait(max(0.0, min(_WATCH_S, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return False
            if not self.may_start():
                handle.interrupted = True
                return True
        return False

    def _attempts(self, job: JobSpec, ctx: JobContext, log: Any) -> Outcome:
        instance = self.build(job.kind, job.options)
        for attempt in range(job.retries + 1):
            try:
                outcome = instance.run(ctx)
            except TRANSIENT as exc:
                delay = job.retry_backoff.total_seconds() * 2**attempt * random.uniform(0.8, 1.2)  # noqa: S311
                out_of_time = time.monotonic() + delay >= ctx.deadline
                if attempt == job.retries or ctx.cancel.is_set() or out_of_time:
                    raise
                log.warning("job.retrying", attempt=attempt + 1, delay_s=round(delay, 2), error=one_line(exc))
                if ctx.cancel.wait(delay):
                    raise
                continue
            if attempt:
                outcome = replace(outcome, details={**outcome.details, "attempts": attempt + 1})
            return outcome
        raise AssertionError("unreachable: the last attempt returns or raises")

    # --- shutdown ---------------------------------------------------------------

    def active(self) -> list[str]:
        """Ids of the jobs running now."""
        with self._idle:
            return [h.job.id for h in self._active.values()]

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is in progress; False if some still are after `timeout` s."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._active, timeout)

    def interrupt_all(self) -> None:
        """Tell every run in progress to stop now; each records itself as `interrupted`."""
        with self._idle:
            for handle in self._active.values():
                handle.interrupted = True
                handle.cancel.set()
                handle.wake.set()


def reruns(job: JobSpec) -> bool:
    """Whether a run of this job that a deploy interrupted is run again by the next leader at once."""
    return job.rerun_interrupted if job.rerun_interrupted is not None else job.kind in registry.SAFE_TO_REPEAT


def alerts(job: JobSpec, status: Status) -> bool:
    """Whether this outcome becomes a Sentry event: listed in alert_on (`error` covers `timeout`)."""
    return status in job.alert_on or (status is Status.TIMEOUT and Status.ERROR in job.alert_on)


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for a log field and a run's summary; an unreachable MongoDB is
    "cannot reach HOST: reason", not pymongo's whole topology description."""
    if type(exc).__module__.startswith("pymongo"):
        from worker.mongodb import unreachable

        said = unreachable(exc)
        if said is not None:
            return said
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _error_outcome(exc: BaseException) -> Outcome:
    tb = traceback.format_exception(exc)
    return Outcome(
        Status.ERROR,
        cut(one_line(exc), 300),
        {"error_type": type(exc).__name__, "traceback": "".join(tb[-12:])},
        fingerprint=type(exc).__name__,
    )
