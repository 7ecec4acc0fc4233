"""Sentry: Crons check-ins for every run, one grouped event per alert, a transaction per run.

The SDK sends from a background thread with a bounded queue, so a slow or unreachable
Sentry never delays a job; nothing here raises into the runner.
"""

from __future__ import annotations

import math
import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import sentry_sdk
from sentry_sdk.crons import capture_checkin

from worker.job import Notice, Outcome, Status
from worker.reporting.redact import Redactor
from worker.schedule import JobSpec
from worker.timespec import CronSchedule

# At exit, wait at most this long for queued envelopes: Render's SIGTERM grace is short.
FLUSH_TIMEOUT_S = 2.0


def monitor_config(job: JobSpec, tz: zoneinfo.ZoneInfo) -> dict[str, Any]:
    """The Sentry Crons monitor for a job, derived from its schedule, grace and timeout."""
    schedule: dict[str, Any]
    if isinstance(job.schedule, CronSchedule):
        schedule = {"type": "crontab", "value": job.schedule.crontab}
    else:
        # Sentry's smallest interval unit is the minute: round up, and let the
        # margin absorb the difference.
        minutes = max(1, math.ceil(job.schedule.every.total_seconds() / 60))
        unit, value = "minute", minutes
        for name, size in (("day", 1440), ("hour", 60)):
            if minutes % size == 0:
                unit, value = name, minutes // size
                break
        schedule = {"type": "interval", "value": value, "unit": unit}
    return {
        "schedule": schedule,
        "timezone": tz.key,
        "checkin_margin": max(1, math.ceil(job.misfire_grace.total_seconds() / 60)),
        "max_runtime": max(1, math.ceil(job.timeout.total_seconds() / 60)),
        "failure_issue_threshold": 1,
        "recovery_threshold": 1,
    }


class SentryReporter:
    """Everything opskeeper sends to Sentry; a no-op when no DSN is configured."""

    def __init__(self, dsn: str | None, *, environment: str, release: str | None,
                 traces_sample_rate: float, redactor: Redactor) -> None:  # fmt: skip
        self.enabled = bool(dsn)
        self._redactor = redactor
        if not self.enabled:
            return
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            release=release,
            traces_sample_rate=traces_sample_rate,
            # send_default_pii is off by default (and deprecated in favour of data_collection).
            # Local variables and request bodies are where secrets hide.
            include_local_variables=False,
            max_request_body_size="never",
            auto_enabling_integrations=False,
            shutdown_timeout=FLUSH_TIMEOUT_S,
            before_send=self._scrub,
            before_send_transaction=self._scrub,
            before_breadcrumb=self._scrub_breadcrumb,
        )

    def _scrub(self, event: Any, _hint: Any) -> Any:
        return self._redactor(event)

    def _scrub_breadcrumb(self, crumb: Any, _hint: Any) -> Any:
        return self._redactor(crumb)

    def checkin(self, job: JobSpec, tz: zoneinfo.ZoneInfo, status: Status,
                check_in_id: str | None = None, duration_s: float | None = None) -> str | None:  # fmt: skip
        """Send a Crons check-in; returns the id that the closing check-in must reuse."""
        if not self.enabled:
            return None
        wire = "in_progress" if status is Status.RUNNING else "ok" if status.is_success else "error"
        try:
            return capture_checkin(
                monitor_slug=job.id,
                check_in_id=check_in_id,
                status=wire,
                duration=duration_s,
                monitor_config=monitor_config(job, tz),  # type: ignore[arg-type]
            )
        except Exception:  # noqa: BLE001 - reporting must never break a run
            return None

    def alert(self, job: JobSpec, outcome: Outcome, run_id: str) -> None:
        """One Sentry event for an outcome the job's `alert_on` lists, grouped by problem."""
        if not self.enabled:
            return
        level: Literal["warning", "error"] = (
            "warning" if outcome.status in (Status.WARN, Status.OK, Status.MISSED) else "error"
        )
        try:
            with sentry_sdk.new_scope() as scope:
                scope.set_tag("job_id", job.id)
                scope.set_tag("kind", job.kind)
                scope.set_tag("status", outcome.status.value)
                scope.set_context("run", {"run_id": run_id, "details": dict(outcome.details)})
                scope.fingerprint = ["opskeeper", job.id, outcome.status.value, outcome.problem_key()]
                sentry_sdk.capture_message(f"{job.id} {outcome.status.value}: {outcome.summary}", level=level)
        except Exception:  # noqa: BLE001, S110 - reporting must never break a run
            pass

    def notice(self, job: JobSpec, run_id: str, notice: Notice) -> None:
        """A job's own notice (an outage began, a service recovered), grouped by its fingerprint."""
        if not self.enabled:
            return
        try:
            with sentry_sdk.new_scope() as scope:
                scope.set_tag("job_id", job.id)
                scope.set_tag("kind", job.kind)
                scope.set_context("notice", {"run_id": run_id, **dict(notice.context)})
                scope.fingerprint = ["opskeeper", job.id, *notice.fingerprint]
                sentry_sdk.capture_message(notice.message, level=notice.level)
        except Exception:  # noqa: BLE001, S110 - reporting must never break a run
            pass

    def problem(self, message: str, fingerprint: str, level: Literal["warning", "error"] = "error",
                **context: Any) -> None:  # fmt: skip
        """A problem that is not a run's: a schedule reload that failed, a ledger a deploy will wipe."""
        if not self.enabled:
            return
        with sentry_sdk.new_scope() as scope:
            scope.fingerprint = ["opskeeper", fingerprint]
            scope.set_context("opskeeper", context)
            sentry_sdk.capture_message(message, level=level)

    @contextmanager
    def transaction(self, job: JobSpec, run_id: str) -> Iterator[Any]:
        """A performance transaction spanning one run (a no-op span without Sentry)."""
        if not self.enabled:
            yield None
            return
        with sentry_sdk.isolation_scope() as scope:
            scope.set_tag("job_id", job.id)
            scope.set_tag("kind", job.kind)
            with sentry_sdk.start_transaction(op="opskeeper.job", name=job.id, source="task") as txn:
                txn.set_data("run_id", run_id)
                yield txn

    def flush(self) -> None:
        """At exit: send what is queued, waiting at most FLUSH_TIMEOUT_S in all, then close the client.

        Closing here leaves the SDK's own exit hook nothing to wait for; flushing alone would let it
        wait its shutdown_timeout a second time (4 s where 2 s are promised).
        """
        if self.enabled:
            sentry_sdk.get_client().close(timeout=FLUSH_TIMEOUT_S)
