"""The weekly review's ledger side: the week's runs, checks and deploy histories, gathered into report sections.

`read_week` is the one place the ledger is read; every section is a pure function of what it
read. The outside sources are in `vendors.py`, the report that joins them in `weekly.py`, and
its Markdown in `markdown.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from jobs.dependencies.advisories import advisories_checked
from jobs.deploys.job import FAILED as FAILED_DEPLOYS
from jobs.deploys.job import ServiceHistory, state_key
from jobs.health.job import percentile, uptime_report
from jobs.platform.job import SEEN as PLATFORM_SEEN
from worker.job import CheckRecord, History
from worker.timespec import format_duration

#: The outcomes that count as a failed run.
BAD = frozenset({"fail", "error", "timeout"})
_TROUBLED = BAD | {"missed", "interrupted"}
#: The kinds of run the weekly review reads (rollbacks are recorded by `opskeeper rollback` and the deploy guard).
_REVIEWED_KINDS = ("backup", "atlas_backup", "restore_drill", "dependencies", "rollback", "rollback_outcome")
#: How far back the review looks for the newest drill and dependency report, which run monthly.
_LOOKBACK = timedelta(days=92)


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


def days(since: datetime, until: datetime) -> list[date]:
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
        for day in days(since, until):
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
        if run.status.value in BAD:
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
        "failed": sum(1 for r in runs if r.status.value in BAD),
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
            checked = advisories_checked(project, run.details.get("gaps") or [])
            severities: dict[str, int] = {}
            for advisory in project.get("advisories") or []:
                severities[advisory["severity"]] = severities.get(advisory["severity"], 0) + 1
            direct = project.get("direct") or []
            node = project.get("node") or {}
            projects.append({
                "job_id": job_id, "project": project["name"], "checked_at": run.started_at.isoformat(),
                "advisories": severities if checked else None, "advisories_checked": checked,
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
