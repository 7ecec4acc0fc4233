"""`weekly_review`: one report of the week, from the ledger, Sentry and Render.

The report says what happened (uptime and outages, backups, restore drills, dependency
findings, deploys and rollbacks, Sentry issues and slow transactions, Render CPU and memory)
and what needs a human. A source that cannot be read becomes a named gap; it never fails
the review. WARN means something needs attention or a configured source could not be read.

Everything but the two HTTP sources is a pure function of the ledger's rows and `now`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field

from jobs.deploys.job import FAILED as FAILED_DEPLOYS
from jobs.deploys.job import RELEASES_GAP, ServiceHistory, state_key
from jobs.health.job import percentile, uptime_report
from jobs.platform.job import SEEN as PLATFORM_SEEN
from jobs.review.sources import SourceError
from worker.http import HttpError, RetryPolicy
from worker.job import CheckRecord, History, JobContext, JobOptions, Notice, Outcome, Status
from worker.schedule import Duration
from worker.timespec import format_duration
from worker.vendors.render import RENDER_API, RenderAPI
from worker.vendors.sentry_api import SENTRY_API, SentryAPI

#: Render instance types: (CPU cores, memory MB), as Render's pricing page lists them.
RENDER_PLANS: Mapping[str, tuple[float, int]] = {
    "free": (0.1, 512), "starter": (0.5, 512), "standard": (1, 2048), "pro": (2, 4096),
    "pro_plus": (4, 8192), "pro_max": (4, 16384), "pro_ultra": (8, 32768),
}  # fmt: skip
_BAD = frozenset({"fail", "error", "timeout"})
_TROUBLED = _BAD | {"missed", "interrupted"}
#: The kinds of run the weekly review reads (rollbacks are recorded by `opskeeper rollback` and the deploy guard).
_REVIEWED_KINDS = ("backup", "atlas_backup", "restore_drill", "dependencies", "rollback", "rollback_outcome")
#: How far back the review looks for the newest drill and dependency report, which run monthly.
_LOOKBACK = timedelta(days=92)


class SentrySource(JobOptions):
    """Which Sentry organization (and projects) to read; the token needs `event:read`."""

    org: str
    projects: tuple[str, ...] = ()
    """Project ids; empty means every project the token can see."""
    api_url: str = SENTRY_API
    token: str | None = None
    """Defaults to the SENTRY_AUTH_TOKEN environment variable."""
    top: Annotated[int, Field(ge=1, le=100)] = 5


class RenderService(JobOptions):
    """A Render service and its instance type, whose limits CPU and memory are measured against."""

    name: str
    service_id: Annotated[str, Field(pattern=r"^srv-[A-Za-z0-9]+$")]
    plan: Literal["free", "starter", "standard", "pro", "pro_plus", "pro_max", "pro_ultra"] = "starter"
    cpu: float | None = None
    """CPU cores, when not the plan's."""
    memory_mb: int | None = None
    """Memory in MB, when not the plan's."""

    def limits(self) -> tuple[float, int]:
        cpu, memory = RENDER_PLANS[self.plan]
        return self.cpu or cpu, self.memory_mb or memory


class RenderSource(JobOptions):
    """Which Render services to measure; empty means every service of the schedule's deploys jobs."""

    services: tuple[RenderService, ...] = ()
    api_url: str = RENDER_API
    api_key: str | None = None
    """Defaults to the RENDER_API_KEY environment variable."""


class Thresholds(JobOptions):
    """When something in the week needs a human."""

    min_uptime_pct: float = 99.9
    new_issues: Annotated[int, Field(ge=1)] = 1
    """This many new Sentry issues or more."""
    regressions: Annotated[int, Field(ge=1)] = 1
    slow_p95_ms: float = 2000
    cpu_pct: float = 80
    """Average CPU against the instance's cores."""
    memory_pct: float = 90
    """Peak memory against the instance's memory."""


class WeeklyReviewOptions(JobOptions):
    """What the weekly review reads besides the ledger, and where it keeps the report."""

    period: Duration = timedelta(days=7)
    sentry: SentrySource | None = None
    render: RenderSource | None = None
    thresholds: Thresholds = Thresholds()
    backup_job: str | None = None
    """Also save the report in this backup job's storage, under reports/weekly/."""
    api_timeout: Duration = timedelta(seconds=20)
    keep: Annotated[int, Field(ge=1)] = 12
    """How many reports the ledger keeps."""
    status_page: str | None = None
    """Where the status page is read (a URL), for the report's link; default: OPSKEEPER_STATUS_PAGE."""


@dataclass
class Week:
    """What the ledger holds for the review: runs, each endpoint's uptime, and deploy histories."""

    since: datetime
    until: datetime
    runs: list[Any]
    """Runs that started in the lookback window (drills and dependency reports are monthly)."""
    uptime: list[dict[str, Any]]
    """Each endpoint's uptime row (computed while reading: one endpoint's checks in memory at a time)."""
    deploys: dict[str, ServiceHistory] = field(default_factory=dict)
    """Deploy history per service name."""
    backup_jobs: list[str] = field(default_factory=list)
    """Backup jobs the schedule has, so a week without any of their runs is noticed."""
    platform: list[dict[str, Any]] | None = None
    """What the schedule's platform_notices jobs have seen (None: the schedule has none)."""
    troubled: list[Any] = field(default_factory=list)
    """The week's runs of any job that failed, errored, timed out, were missed or interrupted."""


def read_week(history: History, jobs: Mapping[str, Any], since: datetime, until: datetime) -> Week:
    """The ledger's side of the review (the one place it is read)."""
    deploys: dict[str, ServiceHistory] = {}
    for spec in jobs.values():
        if spec.kind == "deploys":
            for service in spec.options.services:
                deploys[service.name] = ServiceHistory.load(history.get_state(spec.id, state_key(service.name)))
    # A week of 10 s probes is 60,000 checks per endpoint: read and summarise one endpoint at a
    # time, so the review's memory does not grow with the number of endpoints.
    uptime = [row for job_id, endpoint in history.endpoints(since)
              for row in uptime_rows(history.checks(since, job_id, endpoint), since, until)]  # fmt: skip
    runs = history.runs(since - _LOOKBACK, until, _REVIEWED_KINDS)
    notices = sorted(s.id for s in jobs.values() if s.kind == "platform_notices")
    platform = [entry for job_id in notices for entry in (history.get_state(job_id, PLATFORM_SEEN) or {}).values()]
    troubled = history.runs(since, until, statuses=sorted(_TROUBLED))
    return Week(since, until, runs, uptime, deploys,
                sorted(s.id for s in jobs.values() if s.kind in ("backup", "atlas_backup")),
                platform if notices else None, troubled)  # fmt: skip


# --- the ledger's sections: pure ------------------------------------------------------


def _days(since: datetime, until: datetime) -> list[date]:
    first, last = since.astimezone(UTC).date(), (until - timedelta(microseconds=1)).astimezone(UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def uptime_rows(checks: list[CheckRecord], since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Per endpoint: the window's uptime, latency and outages, and the same per UTC day. Pure."""
    checks = [c for c in checks if since <= c.at < until]
    rows = uptime_report(checks, format_duration(until - since), until)
    by_day: dict[tuple[str, str, date], list[CheckRecord]] = {}
    for check in checks:
        by_day.setdefault((check.job_id, check.endpoint, check.at.astimezone(UTC).date()), []).append(check)
    for row in rows:
        row["days"] = []
        for day in _days(since, until):
            today = by_day.get((row["job_id"], row["endpoint"], day), [])
            latencies = [c.latency_ms for c in today if c.latency_ms is not None and c.verdict != "fail"]
            failed = sum(1 for c in today if c.verdict == "fail")
            row["days"].append({
                "date": day.isoformat(), "checks": len(today),
                "uptime_pct": round(100 * (len(today) - failed) / len(today), 3) if today else None,
                "p95_ms": percentile(latencies, 95),
            })  # fmt: skip
    return rows


def _in_week(week: Week, kinds: Sequence[str]) -> list[Any]:
    return [r for r in week.runs if r.kind in kinds and week.since <= r.started_at < week.until]


def backups_section(week: Week) -> dict[str, Any]:
    """Backups made and failed per job, with sizes over time."""
    jobs: dict[str, dict[str, Any]] = {
        job_id: {"job_id": job_id, "made": 0, "failed": 0, "stored_bytes": 0, "sizes": [], "failures": []}
        for job_id in week.backup_jobs
    }
    for run in _in_week(week, ("backup", "atlas_backup")):
        entry = jobs.setdefault(run.job_id, {"job_id": run.job_id, "made": 0, "failed": 0, "stored_bytes": 0,
                                             "sizes": [], "failures": []})  # fmt: skip
        entry["kind"] = run.kind
        if run.status.value in _BAD:
            entry["failed"] += 1
            entry["failures"].append({"at": run.started_at.isoformat(), "status": run.status.value,
                                      "summary": run.summary})  # fmt: skip
        elif run.status.value in ("ok", "warn"):
            entry["made"] += 1
            size = run.details.get("stored_bytes")
            if isinstance(size, int):
                entry["stored_bytes"] += size
                entry["sizes"].append({"at": run.started_at.isoformat(), "stored_bytes": size,
                                       "documents": run.details.get("documents")})  # fmt: skip
    listed = sorted(jobs.values(), key=lambda j: j["job_id"])
    return {"made": sum(j["made"] for j in listed), "failed": sum(j["failed"] for j in listed), "jobs": listed}


def drills_section(week: Week) -> dict[str, Any]:
    """Restore drills of the week, and the newest one that passed (drills are monthly)."""
    runs = _in_week(week, ("restore_drill",))
    passed = [r for r in week.runs if r.kind == "restore_drill" and r.status.value in ("ok", "warn")]
    last = passed[-1] if passed else None
    return {
        "passed": sum(1 for r in runs if r.status.value in ("ok", "warn")),
        "failed": sum(1 for r in runs if r.status.value in _BAD),
        "runs": [{"job_id": r.job_id, "at": r.started_at.isoformat(), "status": r.status.value,
                  "key": r.details.get("key"), "recovery_s": r.details.get("recovery_s"), "summary": r.summary}
                 for r in runs],
        "last_passed": None if last is None else {"job_id": last.job_id, "at": last.started_at.isoformat(),
                                                  "recovery_s": last.details.get("recovery_s")},
    }  # fmt: skip


def job_runs_section(week: Week) -> dict[str, Any]:
    """Per job: the week's failed, errored, timed-out, missed and interrupted runs, the newest five with summaries."""
    jobs: dict[str, list[Any]] = {}
    for run in week.troubled:
        jobs.setdefault(run.job_id, []).append(run)
    rows = []
    for job_id, runs in sorted(jobs.items()):
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.status.value] = counts.get(run.status.value, 0) + 1
        rows.append({"job_id": job_id, "kind": runs[-1].kind, "counts": counts,
                     "latest": [{"at": r.started_at.isoformat(), "status": r.status.value, "summary": r.summary}
                                for r in runs[-5:][::-1]]})  # fmt: skip
    return {"jobs": rows}


def dependencies_section(week: Week) -> dict[str, Any]:
    """The newest dependency report of each project (from each dependencies job's newest run)."""
    newest: dict[str, Any] = {}
    for run in week.runs:
        if run.kind == "dependencies" and run.details.get("projects") is not None:
            newest[run.job_id] = run
    projects = []
    for job_id, run in sorted(newest.items()):
        for project in run.details["projects"]:
            severities: dict[str, int] = {}
            for advisory in project.get("advisories") or []:
                severities[advisory["severity"]] = severities.get(advisory["severity"], 0) + 1
            direct = project.get("direct") or []
            node = project.get("node") or {}
            projects.append({
                "job_id": job_id, "project": project["name"], "checked_at": run.started_at.isoformat(),
                "advisories": severities,
                "serious": [f"{a['severity']} {a['id']} in {a['package']}@{a['version']}: {a['title']}"
                            for a in project.get("advisories") or [] if a["severity"] in ("high", "critical")],
                "majors_behind": [d["name"] for d in direct if d.get("update") == "major"],
                "deprecated": [d["name"] for d in direct if d.get("deprecated")],
                "node": node.get("status"), "node_version": node.get("declared") or node.get("line"),
                "drift": project.get("drift") or [], "problems": project.get("problems") or [],
            })  # fmt: skip
    # What the newest runs could not check: a report with a gap is not a clean bill of health.
    gaps = [{"job_id": job_id, "checked_at": run.started_at.isoformat(), **gap}
            for job_id, run in sorted(newest.items()) for gap in run.details.get("gaps") or []]  # fmt: skip
    return {"projects": projects, "gaps": gaps}


def deploys_section(week: Week) -> dict[str, Any]:
    """Deploys that started in the week per service, and rollbacks."""
    services = []
    for name, history in sorted(week.deploys.items()):
        mine = [d for d in history.deploys
                if d.created_at and week.since <= datetime.fromisoformat(d.created_at) < week.until]  # fmt: skip
        good = next((d for d in history.deploys if d.good), None)
        services.append({
            "service": name, "deploys": len(mine), "failed": sum(1 for d in mine if d.status in FAILED_DEPLOYS),
            "list": [{"id": d.deploy_id, "commit": d.commit[:7], "status": d.status, "good": d.good,
                      "created_at": d.created_at, "message": d.message} for d in mine],
            "last_good": good and {"id": good.deploy_id, "commit": good.commit[:7], "good_at": good.good_at},
        })  # fmt: skip
    outcomes = {r.details.get("rollback"): r.details.get("outcome") for r in week.runs if r.kind == "rollback_outcome"}
    rollbacks = [{"at": r.started_at.isoformat(), "service": r.details.get("service"), "from": r.details.get("from"),
                  "to": r.details.get("to"), "automatic": bool(r.details.get("automatic")),
                  "reason": r.details.get("reason"),
                  "outcome": outcomes.get(r.run_id, "verifying" if r.details.get("automatic") else None)}
                 for r in _in_week(week, ("rollback",))]  # fmt: skip
    return {"services": services, "rollbacks": rollbacks}


def platform_section(week: Week) -> dict[str, Any] | None:
    """The platform's incidents and maintenances that overlapped the week, and maintenance still to come."""
    if week.platform is None:
        return None
    since, until = week.since.isoformat(), week.until.isoformat()

    def row(e: Mapping[str, Any]) -> dict[str, Any]:
        return {k: e.get(k) for k in ("id", "kind", "name", "status", "impact", "started_at", "ended_at",
                                      "scheduled_for", "scheduled_until", "link", "components")}  # fmt: skip

    week_items = [row(e) for e in week.platform
                  if (e.get("started_at") or e.get("first_seen") or "") < until
                  and (e.get("ended_at") or until) >= since and e.get("status") != "scheduled"]  # fmt: skip
    upcoming = [row(e) for e in week.platform if e.get("status") == "scheduled"
                and (e.get("scheduled_for") or "") >= until]  # fmt: skip
    return {"incidents": sorted(week_items, key=lambda e: e["started_at"] or ""),
            "upcoming": sorted(upcoming, key=lambda e: e["scheduled_for"] or "")}  # fmt: skip


def attention(report: Mapping[str, Any], thresholds: Thresholds) -> list[dict[str, str]]:
    """What in the report needs a human, each with its area. Pure."""
    found: list[dict[str, str]] = []

    def add(area: str, message: str) -> None:
        found.append({"area": area, "message": message})

    for row in report["uptime"]:
        name = f"{row['job_id']}/{row['endpoint']}"
        if row["uptime_pct"] < thresholds.min_uptime_pct:
            add("uptime", f"{name} was up {row['uptime_pct']}% (threshold {thresholds.min_uptime_pct}%)")
        for outage in row["outages"]:
            took = format_duration(timedelta(seconds=round(outage["duration_s"])))
            start = datetime.fromisoformat(outage["start"]).strftime("%Y-%m-%d %H:%M UTC")
            add("uptime", f"{name} was down {took} from {start}" + ("" if outage["end"] else " and still is"))
    for job in report["backups"]["jobs"]:
        if job["failed"]:
            add("backups", f"{job['job_id']}: {job['failed']} backup(s) failed; last: {job['failures'][-1]['summary']}")
        if not job["made"]:
            add("backups", f"{job['job_id']}: no successful backup this week")
    for run in report["drills"]["runs"]:
        if run["status"] in _BAD:
            add("drills", f"{run['job_id']}: restore drill failed: {run['summary']}")
    for project in report["dependencies"]["projects"]:
        for advisory in project["serious"]:
            add("dependencies", f"{project['project']}: {advisory}")
        if project["node"] == "eol":
            add("dependencies", f"{project['project']}: Node.js {project['node_version']} is end-of-life")
        if project.get("drift"):
            add("dependencies", f"{project['project']}: lockfile out of step with package.json: {project['drift'][0]}")
    for gap in report["dependencies"].get("gaps") or []:
        add("dependencies", f"{gap['job_id']}: not checked: {gap['source']} ({gap['effect']}): {gap['error']}")
    for service in report["deploys"]["services"]:
        for deploy in service["list"]:
            if deploy["status"] in FAILED_DEPLOYS:
                add("deploys", f"{service['service']}: deploy {deploy['id']} ({deploy['commit']}) {deploy['status']}")
    for rollback in report["deploys"]["rollbacks"]:
        how = "automatically " if rollback.get("automatic") else ""
        outcome = f" ({rollback['outcome']})" if rollback.get("outcome") else ""
        add("deploys", f"{rollback['service']} was rolled back {how}from {rollback['from']} to {rollback['to']}"
                       f"{outcome}")  # fmt: skip
    for incident in (report.get("platform") or {}).get("incidents", []):
        if incident["kind"] == "incident" and not incident["ended_at"]:
            add("platform", f"Render incident still open: {incident['name']} ({incident['status']})")
    sentry = report["sentry"]
    if sentry:
        if len(sentry["new_issues"]) >= thresholds.new_issues:
            add("sentry", f"{len(sentry['new_issues'])} new issue(s): "
                          + "; ".join(i["title"] for i in sentry["new_issues"][:3]))  # fmt: skip
        if len(sentry["regressions"]) >= thresholds.regressions:
            add("sentry", f"{len(sentry['regressions'])} regression(s): "
                          + "; ".join(i["title"] for i in sentry["regressions"][:3]))  # fmt: skip
        for txn in sentry["slow_transactions"]:
            if txn["p95_ms"] is not None and txn["p95_ms"] > thresholds.slow_p95_ms:
                add(
                    "sentry",
                    f"{txn['transaction']} p95 {txn['p95_ms']:.0f} ms (threshold {thresholds.slow_p95_ms:.0f})",
                )
    for service in report["render"] or []:
        if service.get("cpu_avg_pct") is not None and service["cpu_avg_pct"] > thresholds.cpu_pct:
            add("render", f"{service['service']}: average CPU {service['cpu_avg_pct']}% of {service['cpu_limit']} "
                          f"cores (threshold {thresholds.cpu_pct}%)")  # fmt: skip
        if service.get("memory_peak_pct") is not None and service["memory_peak_pct"] > thresholds.memory_pct:
            add("render", f"{service['service']}: peak memory {service['memory_peak_pct']}% of "
                          f"{service['memory_limit_mb']} MB (threshold {thresholds.memory_pct}%)")  # fmt: skip
    return found


# --- the outside sources ------------------------------------------------------------


def _issue(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": raw.get("id"), "short_id": raw.get("shortId"), "title": raw.get("title", ""),
            "culprit": raw.get("culprit"), "events": int(raw.get("count") or 0), "users": raw.get("userCount"),
            "first_seen": raw.get("firstSeen"), "last_seen": raw.get("lastSeen"),
            "link": raw.get("permalink")}  # fmt: skip


def sentry_section(source: SentrySource, since: datetime, until: datetime, timeout: timedelta) -> dict[str, Any]:
    """New issues, regressions, top issues by events and slow transactions (raises SourceError)."""
    token = source.token or os.environ.get("SENTRY_AUTH_TOKEN", "")
    if not token:
        raise SourceError("no token: set SENTRY_AUTH_TOKEN (or options.sentry.token)")
    days = max(1, round((until - since) / timedelta(days=1)))
    period = f"{days}d"
    api = SentryAPI(source.api_url, source.org, token, source.projects, timeout)
    try:
        new = api.issues(f"is:unresolved firstSeen:-{period}", period, sort="new")
        regressed = api.issues("is:regressed", period)
        top = api.issues("is:unresolved", period, sort="freq", limit=source.top, max_pages=1)
        slow = api.slow_transactions(period, source.top)
    except HttpError as exc:
        raise SourceError(str(exc)) from None
    finally:
        api.close()
    return {
        "new_issues": [_issue(i) for i in new],
        "regressions": [_issue(i) for i in regressed],
        "top_issues": [_issue(i) for i in top[: source.top]],
        "slow_transactions": [
            {"transaction": t.get("transaction"), "p95_ms": t.get("p95(span.duration)"), "count": t.get("count()")}
            for t in slow
        ],
    }


def render_section(
    source: RenderSource, services: list[RenderService], since: datetime, until: datetime, timeout: timedelta
) -> list[dict[str, Any]]:
    """Average and peak CPU and memory per service, against its instance's limits (raises SourceError)."""
    key = source.api_key or os.environ.get("RENDER_API_KEY", "")
    if not key:
        raise SourceError("no API key: set RENDER_API_KEY (or options.render.api_key)")
    # A review reads a week of figures: one retry is patience enough, a gap says the rest.
    api = RenderAPI(source.api_url, key, timeout=timeout, retry=RetryPolicy(attempts=2))
    rows = []
    try:
        for service in services:
            cpu_limit, memory_limit = service.limits()
            cpu = api.metric("cpu", service.service_id, since, until)
            memory = [v / 1e6 for v in api.metric("memory", service.service_id, since, until)]
            rows.append({
                "service": service.name, "service_id": service.service_id, "plan": service.plan,
                "cpu_limit": cpu_limit, "memory_limit_mb": memory_limit, "samples": len(cpu),
                **_usage("cpu", cpu, cpu_limit, 3), **_usage("memory", memory, memory_limit, 1, "_mb"),
            })  # fmt: skip
    except HttpError as exc:
        raise SourceError(str(exc)) from None
    finally:
        api.close()
    return rows


def _usage(name: str, values: list[float], limit: float, digits: int, unit: str = "") -> dict[str, Any]:
    if not values:
        return {f"{name}_avg{unit}": None, f"{name}_peak{unit}": None, f"{name}_avg_pct": None,
                f"{name}_peak_pct": None}  # fmt: skip
    avg, peak = sum(values) / len(values), max(values)
    return {f"{name}_avg{unit}": round(avg, digits), f"{name}_peak{unit}": round(peak, digits),
            f"{name}_avg_pct": round(100 * avg / limit, 1),
            f"{name}_peak_pct": round(100 * peak / limit, 1)}  # fmt: skip


def render_services(options: WeeklyReviewOptions, jobs: Mapping[str, Any]) -> list[RenderService]:
    """The configured services, or those of the schedule's deploys jobs (on the starter plan)."""
    if options.render is None:
        return []
    if options.render.services:
        return list(options.render.services)
    return [RenderService(name=s.name, service_id=s.service_id) for spec in jobs.values() if spec.kind == "deploys"
            for s in spec.options.services]  # fmt: skip


# --- the whole report ---------------------------------------------------------------

#: A source failed (SourceError), or answered in a shape we do not know (the rest).
_UNREADABLE = (SourceError, ValueError, KeyError, TypeError, AttributeError)


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SourceError) else f"unexpected answer ({type(exc).__name__}: {exc})"


def build(options: WeeklyReviewOptions, history: History, jobs: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The week's report up to `now`: the JSON document `opskeeper report weekly --json` prints."""
    since, until = now - options.period, now
    week = read_week(history, jobs, since, until)
    gaps: list[dict[str, str]] = []
    report: dict[str, Any] = {
        "period": {
            "start": since.isoformat(),
            "end": until.isoformat(),
            "days": [d.isoformat() for d in _days(since, until)],
        },
        "uptime": week.uptime,
        "backups": backups_section(week),
        "drills": drills_section(week),
        "dependencies": dependencies_section(week),
        "deploys": deploys_section(week),
        "platform": platform_section(week),
        "job_runs": job_runs_section(week),
        "status_page": options.status_page or os.environ.get("OPSKEEPER_STATUS_PAGE"),
        "sentry": None,
        "render": None,
    }
    if options.sentry is None:
        gaps.append({"source": "sentry", "reason": "not configured", "configured": "no"})
    else:
        try:
            report["sentry"] = sentry_section(options.sentry, since, until, options.api_timeout)
        except _UNREADABLE as exc:
            gaps.append({"source": "sentry", "reason": _reason(exc), "configured": "yes"})
    services = render_services(options, jobs)
    if options.render is None or not services:
        reason = "not configured" if options.render is None else "no services (name them, or add a deploys job)"
        gaps.append({"source": "render", "reason": reason, "configured": "no" if options.render is None else "yes"})
    else:
        try:
            report["render"] = render_section(options.render, services, since, until, options.api_timeout)
        except _UNREADABLE as exc:
            gaps.append({"source": "render", "reason": _reason(exc), "configured": "yes"})
    for job_id in sorted(i for i, spec in jobs.items() if spec.kind == "deploys"):
        release_gap = history.get_state(job_id, RELEASES_GAP)
        if release_gap:
            gaps.append({"source": "sentry releases", "reason": f"{job_id}: {release_gap}", "configured": "yes"})
    report["needs_attention"] = attention(report, options.thresholds)
    report["gaps"] = gaps
    return report


def headline(report: Mapping[str, Any]) -> str:
    """The one-line summary: the log's line and the run's summary."""
    parts = []
    for row in report["uptime"]:
        parts.append(f"{row['endpoint']} {row['uptime_pct']}% up" + (f", {len(row['outages'])} outage(s)"
                                                                      if row["outages"] else ""))  # fmt: skip
    backups = report["backups"]
    parts.append(f"{backups['made']} backup(s)" + (f", {backups['failed']} failed" if backups["failed"] else ""))
    drills = report["drills"]
    if drills["passed"] or drills["failed"]:
        parts.append(
            f"{drills['passed']} drill(s) passed" + (f", {drills['failed']} failed" if drills["failed"] else "")
        )
    deploys = sum(s["deploys"] for s in report["deploys"]["services"])
    if deploys or report["deploys"]["rollbacks"]:
        parts.append(f"{deploys} deploy(s), {len(report['deploys']['rollbacks'])} rollback(s)")
    if report["sentry"]:
        parts.append(f"Sentry: {len(report['sentry']['new_issues'])} new, "
                     f"{len(report['sentry']['regressions'])} regressed")  # fmt: skip
    failing = [g["source"] for g in report["gaps"] if g["configured"] == "yes"]
    need = len(report["needs_attention"])
    return (f"week to {report['period']['end'][:10]}: " + "; ".join(parts)
            + (f"; {need} need(s) attention" if need else "; nothing needs attention")
            + (f"; could not read {', '.join(failing)}" if failing else ""))  # fmt: skip


class WeeklyReviewJob:
    """Build the week's report, keep it, and tell a human when something needs one."""

    def __init__(self, options: WeeklyReviewOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        from jobs.review.markdown import to_markdown

        if ctx.history is None:
            return Outcome(Status.ERROR, "weekly_review needs the ledger, and this run was given none")
        now = datetime.now(UTC)
        report = build(self.options, ctx.history, ctx.jobs, now)
        markdown = to_markdown(report)
        summary = headline(report)
        name = f"weekly-{now.date().isoformat()}"
        saved = self._save(ctx, name, report, markdown)
        ctx.log("review.weekly", summary=summary, needs_attention=len(report["needs_attention"]),
                gaps=[f"{g['source']}: {g['reason']}" for g in report["gaps"]], saved=saved)  # fmt: skip
        failing = [g for g in report["gaps"] if g["configured"] == "yes"]
        if report["needs_attention"] or failing:
            items = [f"{n['area']}: {n['message']}" for n in report["needs_attention"]]
            items += [f"{g['source']}: could not read: {g['reason']}" for g in failing]
            ctx.notify(Notice("warning", f"weekly review: {len(items)} thing(s) need a human: " + "; ".join(items[:5])
                              + (f" (+{len(items) - 5} more)" if len(items) > 5 else ""),
                              ("weekly_review", f"{ctx.scheduled_at:%G-W%V}"),  # this week's own issue
                              {"needs_attention": items, "report": saved}))  # fmt: skip
            return Outcome(Status.WARN, summary[:500], {"report": report, "saved": saved}, alerted=True)
        return Outcome(Status.OK, summary[:500], {"report": report, "saved": saved})

    def _save(self, ctx: JobContext, name: str, report: dict[str, Any], markdown: str) -> list[str]:
        """Keep the report in the ledger (the newest `keep`) and, if asked, beside the backups."""
        index: list[str] = list(ctx.state.get("reports", []) or [])
        ctx.state.set(f"report:{name}", {"json": report, "markdown": markdown})
        index = [n for n in index if n != name] + [name]
        for old in index[: -self.options.keep]:
            ctx.state.set(f"report:{old}", None)
        ctx.state.set("reports", index[-self.options.keep :])
        saved = [f"ledger:{ctx.job_id}/report:{name}"]
        if self.options.backup_job:
            spec = ctx.jobs.get(self.options.backup_job)
            if spec is None or spec.kind != "backup":
                raise ValueError(f"backup_job {self.options.backup_job!r} is not a backup job of this schedule")
            storage = spec.options.open_storage()
            storage.put(f"reports/weekly/{name}.md", markdown.encode())
            storage.put(f"reports/weekly/{name}.json", json.dumps(report, indent=2).encode())
            saved.append(f"{storage.display.rstrip('/')}/reports/weekly/{name}.md")
        return saved
