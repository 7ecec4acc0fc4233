"""`weekly_review`: one report of the week, from the ledger, Sentry and Render.

The report says what happened (uptime and outages, backups, restore drills, dependency
findings, deploys and rollbacks, Sentry issues and slow transactions, Render CPU and memory)
and what needs a human. A source that cannot be read becomes a named gap; it never fails
the review. WARN means something needs attention or a configured source could not be read.

Everything but the two HTTP sources is a pure function of the ledger's rows and `now`. The
gathering is apart: the ledger's sections in `week.py`, Sentry's and Render's in `vendors.py`;
this module joins them into the report and judges it, and `markdown.py` renders it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field

from jobs.deploys.job import FAILED as FAILED_DEPLOYS
from jobs.deploys.marks import RELEASES_GAP
from jobs.review.sources import SourceError
from jobs.review.status import scheduler
from jobs.review.vendors import RenderSource, SentrySource, render_section, render_services, sentry_section
from jobs.review.verdict import overall
from jobs.review.week import (
    BAD,
    backups_section,
    days,
    dependencies_section,
    deploys_section,
    drills_section,
    job_runs_section,
    platform_section,
    read_week,
)
from worker.job import History, JobContext, JobOptions, Notice, Outcome, Status
from worker.schedule import Duration
from worker.timespec import format_duration


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


#: Kinds whose troubled runs the report already names in their own areas (backups, drills).
_OWN_AREA = frozenset({"backup", "atlas_backup", "restore_drill"})


def attention(report: Mapping[str, Any], thresholds: Thresholds) -> list[dict[str, str]]:
    """What in the report needs a human, each with its area and level ("failing": something is broken now;
    "attention": something to look at). Pure."""
    found: list[dict[str, str]] = []

    def add(area: str, message: str, level: str = "attention") -> None:
        found.append({"area": area, "message": message, "level": level})

    for row in report["uptime"]:
        name = f"{row['job_id']}/{row['endpoint']}"
        if row["uptime_pct"] < thresholds.min_uptime_pct:
            add("uptime", f"{name} was up {row['uptime_pct']}% (threshold {thresholds.min_uptime_pct}%)")
        for outage in row["outages"]:
            took = format_duration(timedelta(seconds=round(outage["duration_s"])))
            start = datetime.fromisoformat(outage["start"]).strftime("%Y-%m-%d %H:%M UTC")
            add("uptime", f"{name} was down {took} from {start}" + ("" if outage["end"] else " and still is"),
                "attention" if outage["end"] else "failing")  # fmt: skip
    for job in report["backups"]["jobs"]:
        if job["failed"]:
            add("backups", f"{job['job_id']}: {job['failed']} backup(s) failed; last: {job['failures'][-1]['summary']}")
        if not job["made"]:
            add("backups", f"{job['job_id']}: no successful backup this week", "failing")
    for run in report["drills"]["runs"]:
        if run["status"] in BAD:
            add("drills", f"{run['job_id']}: restore drill failed: {run['summary']}", "failing")
    for job in report["job_runs"]["jobs"]:
        if job["kind"] in _OWN_AREA:
            continue
        newest = job["latest"][0]
        counts = ", ".join(f"{n} {status}" for status, n in sorted(job["counts"].items()))
        add("jobs", f"{job['job_id']}: {counts} this week; newest {newest['status']} at "
                    f"{datetime.fromisoformat(newest['at']).strftime('%Y-%m-%d %H:%M UTC')}: {newest['summary']}",
            "failing" if newest["status"] in BAD else "attention")  # fmt: skip
    for line in (report.get("scheduler") or {}).get("attention", []):
        add("scheduler", line)
    for project in report["dependencies"]["projects"]:
        for advisory in project["serious"]:
            add("dependencies", f"{project['project']}: {advisory}", "failing")
        if project["node"] == "eol":
            add("dependencies", f"{project['project']}: Node.js {project['node_version']} is end-of-life", "failing")
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
            "days": [d.isoformat() for d in days(since, until)],
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
        "scheduler": scheduler(history, until),
    }
    if options.sentry is None:
        gaps.append({"source": "sentry", "reason": "not configured", "configured": "no"})
    else:
        try:
            report["sentry"] = sentry_section(options.sentry, since, until, options.api_timeout)
        except _UNREADABLE as exc:
            gaps.append({"source": "sentry", "reason": _reason(exc), "configured": "yes"})
    services = render_services(options.render, jobs)
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
    report["overall"] = overall(report["needs_attention"])
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
            level: Literal["warning", "error"] = "error" if report["overall"]["level"] == "failing" else "warning"
            ctx.notify(Notice(level, f"weekly review: {len(items)} thing(s) need a human: " + "; ".join(items[:5])
                              + (f" (+{len(items) - 5} more)" if len(items) > 5 else ""),
                              ("weekly_review", f"{ctx.scheduled_at:%G-W%V}"),  # this week's own issue
                              {"needs_attention": items, "report": saved}))  # fmt: skip
            return Outcome(Status.WARN, summary, {"report": report, "saved": saved}, alerted=True)
        return Outcome(Status.OK, summary, {"report": report, "saved": saved})

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
