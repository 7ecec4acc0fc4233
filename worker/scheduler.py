"""The daemon: APScheduler 3.x behind one small class (the only module that imports it).

APScheduler's own defaults hide trouble (a late run is dropped silently after 1 s, an
overlapping run is skipped silently): here every missed or skipped run is recorded and
reported, schedules use standard cron semantics, and the schedule file is reloaded live.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import threading
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
from worker.ledger import Ledger
from worker.reporting.log import get_logger
from worker.reporting.redact import Redactor
from worker.reporting.sentry import SentryReporter
from worker.runner import Runner
from worker.schedule import ConfigError, JobSpec, ScheduleConfig, load_config
from worker.timespec import CronSchedule, format_duration, next_fire

# Threads are started only when runs overlap, so a generous cap costs nothing idle.
_MAX_PARALLEL_RUNS = 64


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
                 *, grace: timedelta, poll: timedelta) -> None:  # fmt: skip
        self.config = config
        self.ledger = ledger
        self.sentry = sentry
        self.redactor = redactor
        self.grace = grace
        self.poll = poll
        self.runner = Runner(ledger, sentry, redactor, config.timezone)
        self.log = get_logger()
        self.stop = threading.Event()
        self.reload = threading.Event()
        self._watched = _Watched()
        self._settling: str | None = None
        self._scheduler = BackgroundScheduler(
            timezone=config.timezone,
            executors={"default": _RunExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    # --- lifecycle --------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the daemon; SIGHUP reloads the schedule."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())

    def serve(self, run_for: timedelta | None = None) -> None:
        """Run until stopped (or for `run_for`), then shut down gracefully."""
        stale = self.runner.ledger.interrupt_stale(self.runner.host, datetime.now(UTC))
        if stale:
            self.log.warning("ledger.stale_runs", count=stale, summary="runs left running by a previous crash")
        self._watched = self._look(Path(self.config.path))
        self._scheduler.start()
        self._apply(self.config, initial=True)
        self.log.info(
            "daemon.started", config=self.config.path, jobs=len(self.config.jobs), timezone=self.config.timezone.key,
            pid=os.getpid(), version=self.runner.version,
        )  # fmt: skip
        deadline = None if run_for is None else datetime.now(UTC) + run_for
        while not self.stop.is_set():
            if deadline is not None and datetime.now(UTC) >= deadline:
                break
            wait = self.poll.total_seconds()
            if deadline is not None:
                wait = max(0.0, min(wait, (deadline - datetime.now(UTC)).total_seconds()))
            if self.stop.wait(wait):
                break
            forced = self.reload.is_set()
            self.reload.clear()
            self._maybe_reload(forced)
        self._shutdown()

    def _shutdown(self) -> None:
        running = self.runner.active()
        self.log.info("daemon.stopping", running=running, grace_s=self.grace.total_seconds())
        # Stop starting runs, but let the ones in progress go on.
        self._scheduler.shutdown(wait=False)
        if not self.runner.wait_idle(self.grace.total_seconds()):
            self.log.warning("daemon.interrupting", running=self.runner.active())
            self.runner.interrupt_all()
            self.runner.wait_idle(5.0)
        self.sentry.flush()
        self.log.info("daemon.stopped")

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
        for job_id in removed + changed:
            self._scheduler.remove_job(job_id)
        for job_id in added + changed:
            job = new[job_id]
            scheduled = self._scheduler.add_job(
                self._fire_callable(job_id), trigger=build_trigger(job, config.timezone), id=job_id,
                name=job_id, misfire_grace_time=int(job.misfire_grace.total_seconds()) or 1,
            )  # fmt: skip
            self.log.info(
                "job.scheduled", job_id=job_id, kind=job.kind, schedule=job.schedule.text,
                next_run=scheduled.next_run_time and scheduled.next_run_time.isoformat(),
            )  # fmt: skip
        if not initial:
            self.log.info("config.reloaded", added=added, removed=removed, changed=changed, jobs=len(new))

    def _fire_callable(self, job_id: str) -> Callable[[datetime], None]:
        # The default only satisfies APScheduler's signature check: _RunExecutor always passes it.
        def fire(scheduled_at: datetime | None = None) -> None:
            job = next((j for j in self.config.jobs if j.id == job_id), None)
            if job is not None:
                self.runner.run(job, scheduled_at and scheduled_at.astimezone(UTC))

        return fire

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
        except ConfigError as exc:
            errors = [self.redactor.text(str(p)) for p in exc.problems]
            self.log.error("config.invalid", config=str(path), errors=errors,
                           summary="kept the running schedule; fix the file and save it again")  # fmt: skip
            self.sentry.problem(f"schedule reload failed: {errors[0]}", "config-invalid", errors=errors)
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
