"""The daemon: APScheduler 3.x behind one small class (the only module that imports it).

APScheduler's own defaults hide trouble (a late run is dropped silently after 1 s, an
overlapping run is skipped silently): here every missed or skipped run is recorded and
reported, schedules use standard cron semantics, and the schedule file is reloaded live.

Only the holder of the ledger's lease schedules (`worker.leadership`): a standby keeps its
schedule up to date and adds its jobs to APScheduler only when it takes over.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import (
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from worker import registry
from worker.job import Status, cut
from worker.leadership import Leadership, Presence, instance_id
from worker.ledger import Ledger, RunRecord
from worker.reporting.log import get_logger
from worker.reporting.redact import Redactor
from worker.reporting.sentry import SentryReporter
from worker.runner import Runner, one_line, reruns
from worker.schedule import ConfigError, JobSpec, ScheduleConfig, load_config
from worker.signals import SignalFlag
from worker.timespec import CronSchedule, following_slot, format_duration, next_fire

# Threads are started only when runs overlap, so a generous cap costs nothing idle.
_MAX_PARALLEL_RUNS = 64
#: How often a standby asks for the lease (the leader renews every OPSKEEPER_LEASE_RENEW).
STANDBY_ASK = timedelta(seconds=1)
#: How long ago a deploy may have interrupted a run for the next leader to run it again.
RERUN_WITHIN = timedelta(hours=24)


class _StandardCronTrigger(BaseTrigger):  # type: ignore[misc]
    """APScheduler trigger over our CronSchedule: standard day-of-week, DST-safe, no double runs."""

    def __init__(self, schedule: CronSchedule, tz: Any, jitter: float | None) -> None:
        self.schedule = schedule
        self.tz = tz
        self.jitter = jitter

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        after = previous_fire_time if previous_fire_time is not None else now - timedelta(microseconds=1)
        moment = next_fire(self.schedule, after, self.tz)
        if moment is None:
            return None
        jittered: datetime | None = self._apply_jitter(moment, self.jitter, now)
        return jittered

    def __str__(self) -> str:
        return f"cron[{self.schedule.crontab}]"


def build_trigger(job: JobSpec, tz: Any) -> BaseTrigger:
    """The APScheduler trigger for a job's schedule."""
    jitter = job.jitter.total_seconds() or None
    if isinstance(job.schedule, CronSchedule):
        return _StandardCronTrigger(job.schedule, tz, jitter)
    return IntervalTrigger(seconds=job.schedule.every.total_seconds(), timezone=tz, jitter=jitter)


class _RunExecutor(BasePoolExecutor):  # type: ignore[misc]
    """A thread pool that hands each run its scheduled time (APScheduler's own does not)."""

    def __init__(self) -> None:
        super().__init__(concurrent.futures.ThreadPoolExecutor(_MAX_PARALLEL_RUNS, thread_name_prefix="opskeeper-run"))

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        def call() -> list[JobExecutionEvent]:
            events = []
            for run_time in run_times:
                late = datetime.now(UTC) - run_time
                if job.misfire_grace_time is not None and late > timedelta(seconds=job.misfire_grace_time):
                    events.append(JobExecutionEvent(EVENT_JOB_MISSED, job.id, job._jobstore_alias, run_time))
                    continue
                job.func(run_time)
                events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, job._jobstore_alias, run_time))
            return events

        future = self._pool.submit(call)
        future.add_done_callback(
            lambda f: (
                self._run_job_error(job.id, f.exception(), None)
                if f.exception()
                else self._run_job_success(job.id, f.result())
            )
        )


@dataclass
class _Watched:
    """What the daemon knows of the schedule file, to notice a change of content cheaply."""

    stat: tuple[int, int, int] | None = None
    digest: str = ""


class Daemon:
    """Runs the schedule until told to stop; reloads it on SIGHUP or when the file changes."""

    def __init__(self, config: ScheduleConfig, ledger: Ledger, sentry: SentryReporter, redactor: Redactor,
                 *, grace: timedelta, poll: timedelta, lease_ttl: timedelta = timedelta(seconds=15),
                 lease_renew: timedelta = timedelta(seconds=5), instance: str | None = None) -> None:  # fmt: skip
        self.config = config
        self.ledger = ledger
        self.sentry = sentry
        self.redactor = redactor
        self.grace = grace
        self.poll = poll
        self.instance = instance or instance_id()
        self.runner = Runner(ledger, sentry, redactor, config.timezone)
        self.runner.instance = self.instance
        self.presence = Presence(ledger, self.instance, lease_renew)
        self.leadership = Leadership(ledger, self.instance, lease_ttl)
        self.runner.may_start = self.leadership.valid
        self.lease_renew = lease_renew
        self.leading = False
        self._reruns: dict[str, RunRecord] = {}
        self._lease_trouble = ""
        self._standing_by = False
        self.log = get_logger()
        # Set by signal handlers: flags that take no lock (worker/signals.py says why a threading.Event deadlocks).
        self.stop = SignalFlag()
        self.reload = SignalFlag()
        self._watched = _Watched()
        self._settling: str | None = None
        #: job id -> the jobs that follow it (JobOptions.follows), and whether its last run in this daemon failed.
        self._followers: dict[str, list[str]] = {}
        self._failing: dict[str, bool] = {}
        self._scheduler = BackgroundScheduler(
            timezone=config.timezone,
            executors={"default": _RunExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        #: Regenerates the status page after runs (OPSKEEPER_STATUS_PAGE), when set.
        self.publisher: Any = None
        self._publishing = threading.Lock()

    # --- lifecycle --------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the daemon; SIGHUP reloads the schedule."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())

    def serve(self, run_for: timedelta | None = None, **started: Any) -> None:
        """Run until stopped (or for `run_for`), then shut down gracefully; `started` goes into `daemon.started`."""
        self._watched = self._look(Path(self.config.path))
        self.presence.start()
        self._scheduler.start()
        self._apply(self.config, initial=True)
        self.log.info(
            "daemon.started", config=self.config.path, jobs=len(self.config.jobs), timezone=self.config.timezone.key,
            pid=os.getpid(), version=self.runner.version, instance=self.instance, **started,
        )  # fmt: skip
        clock = time.monotonic
        deadline = None if run_for is None else clock() + run_for.total_seconds()
        next_lease, next_poll = clock(), clock() + self.poll.total_seconds()
        while not self.stop.is_set():
            if deadline is not None and clock() >= deadline:
                break
            if clock() >= next_lease:
                self._lease_step()
                # A standby asks every second: a released lease (a deploy) is taken within one.
                every = self.lease_renew if self.leading else min(self.lease_renew, STANDBY_ASK)
                next_lease = clock() + every.total_seconds()
            if clock() >= next_poll:
                next_poll = clock() + self.poll.total_seconds()
                forced = self.reload.is_set()
                self.reload.clear()
                self._maybe_reload(forced)
            wake = min(next_lease, next_poll, deadline if deadline is not None else next_poll)
            if self.stop.wait(max(0.0, wake - clock())):
                break
        self._shutdown()

    # --- leadership -------------------------------------------------------------

    def _lease_step(self) -> None:
        """Ask for (or renew) the lease; take the lead, keep it, or step down."""
        try:
            token = self.leadership.ask()
        except Exception as exc:  # noqa: BLE001 - any ledger failure: keep the lead only while it is still valid
            trouble = cut(self.redactor.text(one_line(exc)), 300)
            if trouble != self._lease_trouble:
                self._lease_trouble = trouble
                self.log.warning("lease.unreachable", instance=self.instance, error=trouble)
            if self.leading and not self.leadership.valid():
                self._step_down(f"the lease could not be renewed in time ({trouble})")
            return
        self._lease_trouble = ""
        if token is None:
            if self.leading:
                self._step_down("another instance holds the lease")
            if not self._standing_by:
                self._standing_by = True
                self.log.info("lease.standby", instance=self.instance,
                              summary="another instance schedules; this one takes over when it stops")  # fmt: skip
            return
        self._standing_by = False
        # A lease that lapsed unnoticed (a stalled step) and was taken again is a new term: runs carry its token.
        self.runner.token = token
        # Before a take-over's gap check: the runs this instance could not start are records, not gaps.
        written = self.runner.flush_missed()
        if written:
            self.log.info("ledger.missed_recorded", count=written,
                          summary="runs not started while the ledger was unreachable, recorded as missed")  # fmt: skip
        if not self.leading:
            self._take_lead(token)
        self._close_orphans()
        self._queue_reruns()

    def _take_lead(self, token: int) -> None:
        self.leading = True
        self.log.info("lease.acquired", instance=self.instance, token=token,
                      summary="this instance schedules the jobs now")  # fmt: skip
        try:
            # Before any run of this term starts: the last term's runs are over as far as anyone can prove (a
            # paused or cut-off leader stops its own when it notices), so none is left open beside a new one.
            why = f"its term of the lease ended: {self.instance} took the lead with token {token}"
            ended = self.ledger.interrupt_term(token, datetime.now(UTC), why)
        except Exception:  # noqa: BLE001 - the orphan check at every step closes them later
            ended = 0
        if ended:
            self.log.warning("ledger.term_runs_closed", count=ended,
                             summary="runs of the previous lease term, recorded interrupted")  # fmt: skip
        for job in self.config.jobs:
            if not job.enabled:
                continue
            resumed = datetime.now(UTC)
            last = self.runner.record_gap(job, resumed)
            # The first run is the slot after the ones just recorded missed: an interval goes on in the phase of its
            # newest slot, so that a restart (a deploy) neither shifts nor postpones it (`every 24h` with a deploy
            # every 20 h still runs every 24 h).
            first = None if last is None else following_slot(job.schedule, self.config.timezone, last, resumed)
            self._add(job, self.config, first=first)

    def _close_orphans(self) -> None:
        """Close the runs of instances that stopped heartbeating (a crash, a kill -9), at every step of the lead:
        a dead leader's last heartbeat may be younger than the lease it let expire."""
        try:
            orphans = self.ledger.interrupt_orphans(datetime.now(UTC), self.leadership.ttl)
        except Exception:  # noqa: BLE001 - the next step tries again
            return
        if orphans:
            self.log.warning("ledger.orphan_runs", count=orphans, summary="runs of an instance that went quiet")

    def _step_down(self, reason: str) -> None:
        self.leading = False
        self.runner.token = None
        self._scheduler.remove_all_jobs()
        self._reruns.clear()
        self.log.warning("lease.lost", instance=self.instance, summary=f"stopped scheduling: {reason}")

    def _queue_reruns(self) -> None:
        """Run at once each safe-to-repeat job whose newest run a deploy (or a crash) interrupted."""
        now = datetime.now(UTC)
        for job in self.config.jobs:
            if not job.enabled or not reruns(job) or job.id in self._reruns:
                continue
            try:
                newest = self.ledger.recent(job.id, 1)
            except Exception:  # noqa: BLE001 - the next step asks again
                return
            if not newest or newest[0].status is not Status.INTERRUPTED:
                continue
            ended = newest[0].finished_at or newest[0].started_at
            if now - ended > RERUN_WITHIN or self._scheduler.get_job(job.id) is None:
                continue
            self._reruns[job.id] = newest[0]
            self.log.info("job.rerun_queued", job_id=job.id, rerun_of=newest[0].run_id,
                          summary="interrupted by a deploy or a crash: running it again now")  # fmt: skip
            self._scheduler.modify_job(job.id, next_run_time=datetime.now(self.config.timezone))

    def _shutdown(self) -> None:
        running = self.runner.active()
        self.log.info("daemon.stopping", running=running, grace_s=self.grace.total_seconds())
        # Stop starting runs, but let the ones in progress go on, still holding the lease, so that no other
        # instance starts the same job beside them.
        self._scheduler.shutdown(wait=False)
        if not self._drain():
            self.log.warning("daemon.interrupting", running=self.runner.active())
            self.runner.interrupt_all()
            self.runner.wait_idle(5.0)
        if self.leading:
            # Hand over once every run is recorded, not when the lease runs out: the standby takes over at its
            # next ask, and finds the interrupted runs' records to re-run.
            self.leading = False
            try:
                self.leadership.release()
                self.log.info("lease.released", instance=self.instance)
            except Exception:  # noqa: BLE001 - then it expires by itself
                self.log.warning("lease.release_failed", instance=self.instance)
        # Beat until the runs are recorded, so the successor does not take them for orphans.
        self.presence.stop()
        self.sentry.flush()
        self.log.info("daemon.stopped")

    def _drain(self) -> bool:
        """Wait up to the grace for the runs in progress, renewing the lease meanwhile; False if some are still
        going (at the end of the grace, or once the lease can no longer be proven)."""
        deadline = time.monotonic() + self.grace.total_seconds()
        while True:
            if self.leading:
                # Renew first: the loop's last renewal may be most of a period ago.
                try:
                    if self.leadership.ask() is None:
                        return self.runner.wait_idle(0)
                except Exception:  # noqa: BLE001, S110 - validity runs out by itself; checked below
                    pass
            left = deadline - time.monotonic()
            if left <= 0 or (self.leading and not self.leadership.valid()):
                return self.runner.wait_idle(0)
            if self.runner.wait_idle(min(left, self.lease_renew.total_seconds())):
                return True

    # --- the schedule -----------------------------------------------------------

    def _apply(self, config: ScheduleConfig, *, initial: bool = False) -> None:
        old = {} if initial else {j.id: j for j in self.config.jobs if j.enabled}
        new = {j.id: j for j in config.jobs if j.enabled}
        tz_changed = not initial and config.timezone.key != self.config.timezone.key
        removed = [i for i in old if i not in new]
        added = [i for i in new if i not in old]
        changed = [i for i in new if i in old and (tz_changed or new[i] != old[i])]
        self.config = config
        self.runner.tz = config.timezone
        self.runner.jobs = {j.id: j for j in config.jobs}
        self.redactor.add(config.secrets)
        self._followers = {}
        for spec in new.values():
            for followed in sorted(spec.options.follows()):
                self._followers.setdefault(followed, []).append(spec.id)
        if self.leading:
            for job_id in removed + changed:
                self._scheduler.remove_job(job_id)
            for job_id in added + changed:
                self._add(new[job_id], config)
        if not initial:
            self.log.info("config.reloaded", added=added, removed=removed, changed=changed, jobs=len(new))

    def _add(self, job: JobSpec, config: ScheduleConfig, first: datetime | None = None) -> None:
        """Schedule `job`; its first run at `first` when given (else its trigger's next time from now)."""
        when = {} if first is None else {"next_run_time": first.astimezone(config.timezone)}
        scheduled = self._scheduler.add_job(
            self._fire_callable(job.id), trigger=build_trigger(job, config.timezone), id=job.id,
            name=job.id, misfire_grace_time=int(job.misfire_grace.total_seconds()) or 1, **when,
        )  # fmt: skip
        self.log.info(
            "job.scheduled", job_id=job.id, kind=job.kind, schedule=job.schedule.text,
            next_run=scheduled.next_run_time and scheduled.next_run_time.isoformat(),
        )  # fmt: skip

    def _fire_callable(self, job_id: str) -> Callable[[datetime], None]:
        # The default only satisfies APScheduler's signature check: _RunExecutor always passes it.
        def fire(scheduled_at: datetime | None = None) -> None:
            job = next((j for j in self.config.jobs if j.id == job_id), None)
            if job is None:
                return
            if not self.leadership.valid():
                # Cut off from the ledger past the lease's validity: another instance may lead by now. The slot is
                # a record all the same (kept until the ledger answers, dropped if another leads by then: its gap
                # check records it).
                self.runner.missed(
                    job,
                    (scheduled_at or datetime.now(UTC)).astimezone(UTC),
                    "not started: this instance could no longer prove it holds the lease",
                    alert=False,
                )
                return
            rerun_of = self._reruns.pop(job_id, None)
            when = rerun_of.scheduled_at if rerun_of is not None and rerun_of.scheduled_at else scheduled_at
            record = self.runner.run(job, when and when.astimezone(UTC), rerun_of=rerun_of)
            self._wake_followers(job_id, record.status)
            self._publish()

        return fire

    def _publish(self) -> None:
        """Write the status page if one is configured and the last write is a minute old; never fail a run."""
        now = datetime.now(UTC)
        if self.publisher is None or not self.publisher.due(now) or not self._publishing.acquire(blocking=False):
            return
        if not self.leadership.valid():
            self._publishing.release()
            return  # only the lease's holder writes the page: a deposed leader's view may be stale
        try:
            link = self.publisher.publish(self.config, self.ledger, self.redactor, now)
            self.log.info("status_page.written", target=self.redactor.text(self.publisher.target),
                          **({"link": link} if link else {}))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a page that cannot be written must not stop the schedule
            self.log.warning("status_page.failed", target=self.redactor.text(self.publisher.target),
                             error=self.redactor.text(f"{type(exc).__name__}: {exc}"))  # fmt: skip
        finally:
            self._publishing.release()

    def _wake_followers(self, job_id: str, status: Status) -> None:
        """Run at once the jobs that follow this one, when it turned to FAIL or back (or starts out failing)."""
        if status in (Status.MISSED, Status.INTERRUPTED):
            return  # no verdict on the app: neither a turn nor a reason to forget the last one
        failing = status is Status.FAIL
        was = self._failing.get(job_id)  # None: no run of it seen yet by this daemon
        self._failing[job_id] = failing
        if was == failing or (was is None and not failing):
            return
        for follower in self._followers.get(job_id, ()):
            if self.leading and self._scheduler.get_job(follower) is not None:
                self.log.info("job.woken", job_id=follower, by=job_id, status=status.value,
                              summary=f"{job_id} turned {status.value}: running {follower} now")  # fmt: skip
                self._scheduler.modify_job(follower, next_run_time=datetime.now(self.config.timezone))

    def _on_missed(self, event: JobExecutionEvent | JobSubmissionEvent) -> None:
        job = next((j for j in self.config.jobs if j.id == event.job_id), None)
        if job is None:
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            times = event.scheduled_run_times
            reason = "skipped: the previous run was still running"
        else:
            times = [event.scheduled_run_time]
            late = format_duration(datetime.now(UTC) - event.scheduled_run_time)
            reason = f"missed: started {late} late, past misfire_grace {format_duration(job.misfire_grace)}"
        for moment in times:
            self.runner.missed(job, moment.astimezone(UTC), reason)

    def _maybe_reload(self, forced: bool) -> None:
        path = Path(self.config.path)
        seen = self._look(path, previous=self._watched)
        changed = seen.digest != self._watched.digest
        self._watched = seen
        if not forced:
            if changed:
                # Wait one poll for the content to settle: an editor saving in place may not be done.
                self._settling = seen.digest
                self.log.info("config.changed", config=str(path), summary="reloading once the file stops changing")
                return
            if self._settling != seen.digest:
                return
        self._settling = None
        try:
            config = load_config(path, registry.OPTIONS)
        except ConfigError as exc:  # load_config raises nothing else, whatever the file holds
            errors = [self.redactor.text(str(p)) for p in exc.problems]
            self.log.error("config.invalid", config=str(path), errors=errors,
                           summary="kept the running schedule; fix the file and save it again")  # fmt: skip
            self.sentry.problem(f"schedule reload failed: {errors[0]}", "config-invalid", errors=errors)
            return
        if not config.jobs and self.config.jobs:
            # An emptied file is far more often a bad save than a wish to stop everything; that wish is explicit.
            message = ("the file now has no jobs: kept the running schedule; to stop jobs, set enabled: false on "
                       "each (or stop the daemon)")  # fmt: skip
            self.log.error("config.invalid", config=str(path), errors=[message], summary=message)
            self.sentry.problem(f"schedule reload refused: {message}", "config-invalid", errors=[message])
            return
        self._apply(config)

    @staticmethod
    def _look(path: Path, previous: _Watched | None = None) -> _Watched:
        """The file's stat and content digest; the digest is recomputed only when the stat moved."""
        try:
            st = path.stat()
        except OSError:
            return _Watched(None, "missing")
        stat = (st.st_mtime_ns, st.st_size, st.st_ino)
        if previous is not None and previous.stat == stat:
            return previous
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digest = "unreadable"
        return _Watched(stat, digest)
