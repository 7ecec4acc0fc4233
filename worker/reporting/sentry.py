"""Sentry: Crons check-ins for every run, one grouped event per alert, a transaction per run.

Each run is its own trace: its check-ins, events, notices and transaction share one trace id
and no other run's (reference §11). Monitors are shaped by the job's `monitor:` block, and
transactions are sampled per job. An outage's recovery resolves its DOWN issue through the
web API when a token allows it. The SDK sends from a background thread with a bounded queue,
so a slow or unreachable Sentry never delays a job; nothing here raises into the runner.
"""

from __future__ import annotations

import hashlib
import math
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sentry_sdk
from sentry_sdk.crons import capture_checkin

from worker.job import Notice, Outcome, Status
from worker.reporting.log import get_logger
from worker.reporting.redact import Redactor
from worker.schedule import JobSpec
from worker.timespec import CronSchedule, next_fire

# At exit, wait at most this long for queued envelopes: Render's SIGTERM grace is short.
FLUSH_TIMEOUT_S = 2.0


def resolve_owners(jobs: Iterable[JobSpec], web: Any) -> tuple[dict[str, str], list[str]]:
    """({team slug: "team:<id>"} for the monitors that name a team by slug, and a problem for each that cannot be
    resolved), through Sentry's web API (`web`, a SentryAPI; None: no token, so none can be)."""
    wanted = {job.monitor.team_slug: job.id for job in jobs if job.monitor.team_slug}
    if not wanted:
        return {}, []
    if web is None:
        return {}, [f"job {job_id!r}: monitor owner team:{slug}: Sentry Crons takes a team's numeric id (team:ID); "
                    "set SENTRY_ORG and a SENTRY_AUTH_TOKEN with org:read for opskeeper to look the slug up, or "
                    "write the id" for slug, job_id in sorted(wanted.items())]  # fmt: skip
    from worker.http import HttpError

    try:
        teams = {str(t.get("slug")): str(t.get("id")) for t in web.teams() if isinstance(t, Mapping)}
    except HttpError as exc:
        return {}, [f"monitor owners team:{', team:'.join(sorted(wanted))}: the teams could not be read: {exc}"]
    owners = {slug: f"team:{teams[slug]}" for slug in wanted if teams.get(slug, "").isdigit()}
    problems = [f"job {job_id!r}: monitor owner team:{slug}: no such team in the Sentry organization "
                f"(it has: {', '.join(sorted(teams)) or 'none'})" for slug, job_id in sorted(wanted.items())
                if slug not in owners]  # fmt: skip
    return owners, problems


def monitor_config(job: JobSpec, tz: zoneinfo.ZoneInfo, owners: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Sentry Crons monitor for a job, derived from its schedule, grace and timeout.

    A team named by slug goes as `team:<id>` from `owners` (resolve_owners); unresolved, no owner is sent, as
    the slug would give none either."""
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
    config: dict[str, Any] = {
        "schedule": schedule,
        "timezone": tz.key,
        # A run may start up to `jitter` late on purpose, and up to misfire_grace late by accident.
        "checkin_margin": max(1, math.ceil((job.misfire_grace + job.jitter).total_seconds() / 60)),
        # The schedule file bounds timeout to 7 days: 10080 minutes, Sentry's limit.
        "max_runtime": min(MAX_RUNTIME_MIN, max(1, math.ceil(job.timeout.total_seconds() / 60))),
        "failure_issue_threshold": job.monitor.failure_issue_threshold,
        "recovery_threshold": job.monitor.recovery_threshold,
    }
    slug = job.monitor.team_slug
    owner = (owners or {}).get(slug) if slug else job.monitor.owner
    if owner:
        config["owner"] = owner
    return config


MAX_RUNTIME_MIN = 10080


def sample_rate(job: JobSpec, default: float | None = None) -> float:
    """Share of the job's runs sent as transactions: its own setting, the process's, else by frequency.

    By frequency: every run of a job that fires hourly or less often, and about one an hour of a
    more frequent one (an `every 1m` health job sends 24 a day, not 1,440).
    """
    if job.traces_sample_rate is not None:
        return job.traces_sample_rate
    if default is not None:
        return default
    return min(1.0, _shortest_gap(job).total_seconds() / 3600)


def _shortest_gap(job: JobSpec) -> timedelta:
    if not isinstance(job.schedule, CronSchedule):
        return job.schedule.every
    moment, gaps = datetime(2026, 1, 5, tzinfo=UTC), []
    for _ in range(12):
        later = next_fire(job.schedule, moment, UTC)
        if later is None:
            break
        gaps.append(later - moment)
        moment = later
    return min(gaps[1:] or gaps or [timedelta(days=1)])


# Fields the SDK sets whose values are plain by design: never masked, or Sentry misfiles the data.
_PLAIN = ("environment", "release", "server_name", "dist", "platform", "level", "logger", "event_id", "timestamp",
          "start_timestamp", "type", "sdk", "monitor_slug", "check_in_id", "status", "duration", "monitor_config",
          "transaction", "transaction_info")  # fmt: skip
_PLAIN_TRACE = ("trace_id", "span_id", "parent_span_id", "op", "status", "origin", "dynamic_sampling_context")


def problem_tag(fingerprint: tuple[str, ...]) -> str:
    """A short searchable tag for a fingerprint: a recovery finds its DOWN issue by it."""
    return hashlib.blake2b("\x1f".join(fingerprint).encode(), digest_size=6).hexdigest()


class SentryReporter:
    """Everything opskeeper sends to Sentry; a no-op when no DSN is configured."""

    def __init__(self, dsn: str | None, *, environment: str, release: str | None,
                 traces_sample_rate: float | None, redactor: Redactor, web: Any = None,
                 owners: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.enabled = bool(dsn)
        self.owners = dict(owners or {})
        """Monitor owners named by team slug, as `team:<id>` (resolve_owners)."""
        self._redactor = redactor
        self._default_rate = traces_sample_rate
        self.web = web
        """A SentryAPI (org, token) for resolving issues; None where no token is configured."""
        if not self.enabled:
            return
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            release=release,
            # Each run's transaction carries its job's rate (sample_rate()); anything else is not traced.
            traces_sampler=lambda context: float(context.get("opskeeper_rate", 0.0)),
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
        """Mask secrets everywhere but in the SDK's own plain fields (environment, release, trace ids, the
        trace header with the DSN's public key: not secrets, and Sentry misfiles data if they are masked)."""
        if not isinstance(event, Mapping):
            return self._redactor(event)
        scrubbed = self._redactor(dict(event))
        for key in _PLAIN:
            if key in event:
                scrubbed[key] = event[key]
        trace = (event.get("contexts") or {}).get("trace")
        if isinstance(trace, Mapping) and isinstance(scrubbed.get("contexts"), dict):
            kept = scrubbed["contexts"].get("trace") or {}
            scrubbed["contexts"]["trace"] = {**kept, **{k: trace[k] for k in _PLAIN_TRACE if k in trace}}
        return scrubbed

    def _scrub_breadcrumb(self, crumb: Any, _hint: Any) -> Any:
        return self._redactor(crumb)

    def monitors(self, job: JobSpec) -> bool:
        """Whether this job's runs send Crons check-ins."""
        return bool(self.enabled and job.monitor.enabled)

    def checkin(self, job: JobSpec, tz: zoneinfo.ZoneInfo, status: Status,
                check_in_id: str | None = None, duration_s: float | None = None) -> str | None:  # fmt: skip
        """Send a Crons check-in; returns the id that the closing check-in must reuse."""
        if not self.enabled or not job.monitor.enabled:
            return None
        wire = "in_progress" if status is Status.RUNNING else "ok" if status.is_success else "error"
        try:
            return capture_checkin(
                monitor_slug=job.id,
                check_in_id=check_in_id,
                status=wire,
                duration=duration_s,
                # Without upsert the monitor stays as the team configured it in Sentry.
                monitor_config=monitor_config(job, tz, self.owners) if job.monitor.upsert else None,  # type: ignore[arg-type]
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
                fingerprint = ("opskeeper", job.id, outcome.status.value, outcome.problem_key())
                scope.fingerprint = list(fingerprint)
                scope.set_tag("opskeeper_problem", problem_tag(fingerprint))
                sentry_sdk.capture_message(f"{job.id} {outcome.status.value}: {outcome.summary}", level=level)
        except Exception:  # noqa: BLE001, S110 - reporting must never break a run
            pass

    def notice(self, job: JobSpec, run_id: str, notice: Notice) -> None:
        """A job's own notice (an outage began, a service recovered), grouped by its fingerprint.

        A notice that `resolves` another (a recovery resolves its outage) resolves that issue too. Without a
        token to resolve it with, the recovery joins the outage's own issue instead (its fingerprint, level info,
        tag `opskeeper_state: resolved`), so one outage is one issue in Sentry, its newest event saying it ended;
        with a token it is its own event, as resolving first and then adding to the issue would reopen it.
        """
        if not self.enabled:
            return
        try:
            with sentry_sdk.new_scope() as scope:
                scope.set_tag("job_id", job.id)
                scope.set_tag("kind", job.kind)
                scope.set_context("notice", {"run_id": run_id, **dict(notice.context)})
                fingerprint = ("opskeeper", job.id, *notice.fingerprint)
                if notice.resolves and self.web is None:
                    fingerprint = ("opskeeper", job.id, *notice.resolves)
                    scope.set_tag("opskeeper_state", "resolved")
                scope.fingerprint = list(fingerprint)
                scope.set_tag("opskeeper_problem", problem_tag(fingerprint))
                sentry_sdk.capture_message(notice.message, level=notice.level)
        except Exception:  # noqa: BLE001, S110 - reporting must never break a run
            pass
        if notice.resolves:
            self.resolve(("opskeeper", job.id, *notice.resolves))

    def resolve(self, fingerprint: tuple[str, ...]) -> list[str]:
        """Resolve the unresolved issues of this fingerprint through the web API; the ids resolved.

        Without a token (SENTRY_AUTH_TOKEN with event:write and SENTRY_ORG) this does nothing:
        the issue stays open until someone resolves it, as Sentry's own auto-resolve allows.
        """
        if self.web is None:
            return []
        tag = problem_tag(fingerprint)
        try:
            issues = self.web.issues(f"is:unresolved opskeeper_problem:{tag}", "14d", limit=25, max_pages=1)
            ids = [str(issue["id"]) for issue in issues if isinstance(issue, Mapping) and "id" in issue]
            for issue_id in ids:
                self.web.resolve_issue(issue_id)
        except Exception as exc:  # noqa: BLE001 - reporting must never break a run
            get_logger().warning("sentry.resolve_failed", problem=tag, error=self._redactor.text(str(exc))[:300])
            return []
        if ids:
            get_logger().info("sentry.resolved", problem=tag, issues=ids)
        return ids

    def problem(self, message: str, fingerprint: str, level: Literal["warning", "error"] = "error",
                **context: Any) -> None:  # fmt: skip
        """A problem that is not a run's: a schedule reload that failed, a ledger a deploy will wipe."""
        if not self.enabled:
            return
        with self.own_trace(), sentry_sdk.new_scope() as scope:
            scope.fingerprint = ["opskeeper", fingerprint]
            scope.set_context("opskeeper", context)
            sentry_sdk.capture_message(message, level=level)

    @contextmanager
    def own_trace(self) -> Iterator[None]:
        """A fresh trace for what is sent inside (a missed run, a problem of the daemon's own)."""
        if not self.enabled:
            yield
            return
        with sentry_sdk.isolation_scope() as scope:
            scope.set_new_propagation_context()
            yield

    @contextmanager
    def run(self, job: JobSpec, run_id: str) -> Iterator[Any]:
        """One run's trace and transaction: check-ins, alerts and notices sent inside share its trace id.

        The transaction is sent for sample_rate(job) of the runs; the trace exists for every run.
        """
        if not self.enabled:
            yield None
            return
        with sentry_sdk.isolation_scope() as scope:
            scope.set_new_propagation_context()
            scope.set_tag("job_id", job.id)
            scope.set_tag("kind", job.kind)
            rate = sample_rate(job, self._default_rate)
            with sentry_sdk.start_transaction(op="opskeeper.job", name=job.id, source="task",
                                              custom_sampling_context={"opskeeper_rate": rate}) as txn:  # fmt: skip
                txn.set_data("run_id", run_id)
                yield txn

    def flush(self) -> None:
        """At exit: send what is queued, waiting at most FLUSH_TIMEOUT_S in all, then close the client.

        Closing here leaves the SDK's own exit hook nothing to wait for; flushing alone would let it
        wait its shutdown_timeout a second time (4 s where 2 s are promised).
        """
        if self.enabled:
            sentry_sdk.get_client().close(timeout=FLUSH_TIMEOUT_S)
        if self.web is not None:
            self.web.close()
