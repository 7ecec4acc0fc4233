"""Everything at a glance: each job's last and next run, each endpoint's state and uptime, the newest
backups, the last good deploys and the dependency posture, read from the ledger and the schedule.

`build_status` reads; everything it returns is plain JSON, the shape `opskeeper status --json`
prints and the status page draws. Uptime over days comes from the ledger's per-day aggregates
(`Ledger.check_days`), so 90 days of one-minute checks are never loaded one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs.dependencies.advisories import advisories_checked, leaves_gap
from jobs.deploys.history import ServiceHistory, state_key
from jobs.review.verdict import needs_attention, overall, state
from worker.job import CheckRecord, History
from worker.ledger import CLOCK_MARGIN, DayOfChecks, Ledger, RunRecord
from worker.schedule import JobSpec, ScheduleConfig
from worker.timespec import missed_slots, upcoming

BACKUP_KINDS = ("backup", "atlas_backup")
PAGE_DAYS = 90
#: Instances heard from within this are listed under the scheduler.
INSTANCES_SEEN = timedelta(minutes=2)
#: A slot this long past with no run recorded for it makes the job stale (the daemon is down or not leading).
STALE_AFTER = timedelta(minutes=15)
#: How far back a failing streak is traced for its "since".
STREAK = 50


def _at(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def uptime(days: list[DayOfChecks]) -> float | None:
    """Percent of checks that did not fail, over these days; None without checks."""
    checks = sum(d.checks for d in days)
    return None if not checks else round(100 * (checks - sum(d.failures for d in days)) / checks, 3)


def build_status(config: ScheduleConfig, ledger: Ledger, now: datetime,
                 ledger_warnings: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """The status of every job, endpoint, backup, deploy and dependency report at `now`, what of it needs a person
    (`needs_attention`) and the worst of it (`overall`). `ledger_warnings`: what is wrong with where the ledger is
    kept (`worker.ledger.lost_on_deploy`), a standing condition until it is fixed."""
    days = ledger.check_days(now - timedelta(days=PAGE_DAYS))
    status: dict[str, Any] = {
        "generated_at": _at(now),
        "timezone": config.timezone.key,
        "jobs": _jobs(config, ledger, now),
        "endpoints": _endpoints(ledger, days, now),
        "backups": _backups(config, ledger, now),
        "deploys": _deploys(config, ledger),
        "dependencies": _dependencies(config, ledger),
        "scheduler": scheduler(ledger, now),
        "ledger_warnings": list(ledger_warnings),
    }
    status["needs_attention"] = needs_attention(status)
    return {"overall": overall(status["needs_attention"]), **status}


def scheduler(ledger: History, now: datetime) -> dict[str, Any]:
    """Who holds the lease (by the ledger's clock), the instances heard from lately with their clocks' offset
    from the ledger's, and what of it needs a person."""
    held = ledger.lease_holder(now)
    lease = held and {"holder": held.owner, "token": held.token, "expires_at": _at(held.expires_at)}
    rows, attention = [], []
    for instance in ledger.instances(INSTANCES_SEEN):
        offset = instance.clock_offset_s
        rows.append({"instance": instance.name, "seen_at": _at(instance.seen_at), "clock_offset_s": offset,
                     "leading": held is not None and held.owner == instance.name})  # fmt: skip
        if offset is not None and abs(offset) > CLOCK_MARGIN.total_seconds():
            attention.append(
                f"instance {instance.name}: its clock is {abs(offset):.1f} s {'ahead of' if offset > 0 else 'behind'}"
                " the ledger's; the lease does not depend on it, but the times it schedules and records are off by"
                " as much: fix its time sync (NTP)"
            )
    return {"lease": lease, "instances": rows, "attention": attention}


def _jobs(config: ScheduleConfig, ledger: Ledger, now: datetime) -> list[dict[str, Any]]:
    rows = []
    for job in config.jobs:
        newest = ledger.recent(job.id, limit=STREAK)  # the newest run, and the streak it ends
        last = newest[0] if newest else None
        success = ledger.last_success(job.id)
        following = upcoming(job.schedule, config.timezone, now, 1) if job.enabled else []
        rows.append({
            "id": job.id, "kind": job.kind, "enabled": job.enabled,
            "last_status": last.status.value if last else None, "last_run_at": _at(last.started_at) if last else None,
            "summary": last.summary if last else "", "last_success_at": _at(success.started_at) if success else None,
            "next_run": _at(following[0]) if following else None, "monitor_slug": job.id,
            "failing_since": _streak_start(newest) if last and state(last.status.value).level != "ok" else None,
            "stale_since": _stale_since(job, config, last, now) if last and job.enabled else None,
        })  # fmt: skip
    return rows


def _streak_start(newest: list[RunRecord]) -> str | None:
    """When the newest streak of troubled runs began: the oldest of them since the last good one (of `newest`,
    newest first)."""
    start = None
    for run in newest:
        if state(run.status.value).level == "ok":
            break
        start = run.started_at
    return _at(start)


def _stale_since(job: JobSpec, config: ScheduleConfig, last: RunRecord, now: datetime) -> str | None:
    """The first slot after the newest run that is more than `STALE_AFTER` past with no run recorded for it."""
    slots = missed_slots(job.schedule, config.timezone, last.scheduled_at or last.started_at, now - STALE_AFTER, 1)
    return _at(slots[0]) if slots and last.status.value != "running" else None


def _endpoints(ledger: Ledger, days: list[DayOfChecks], now: datetime) -> list[dict[str, Any]]:
    recent: dict[tuple[str, str], list[CheckRecord]] = {}
    for check in ledger.checks(now - timedelta(hours=24)):  # oldest first
        recent.setdefault((check.job_id, check.endpoint), []).append(check)
    by_endpoint: dict[tuple[str, str], list[DayOfChecks]] = {}
    for day in days:
        by_endpoint.setdefault((day.job_id, day.endpoint), []).append(day)
    month = (now - timedelta(days=30)).date().isoformat()
    rows = []
    for key in sorted(set(by_endpoint) | set(recent)):
        mine = recent.get(key, [])
        last = mine[-1] if mine else None
        day_rows = by_endpoint.get(key, [])
        failed = sum(1 for c in mine if c.verdict == "fail")
        since = None
        for check in reversed(mine):  # back through the last 24 hours while the state is the newest one
            if check.state != mine[-1].state:
                break
            since = check.at
        rows.append({
            "job_id": key[0], "endpoint": key[1], "state": last.state if last else "UNKNOWN",
            "last_check_at": _at(last.at) if last else None, "last_reason": last.reason if last else "",
            "since": _at(since),
            "uptime_24h": round(100 * (len(mine) - failed) / len(mine), 3) if mine else None,
            "uptime_30d": uptime([d for d in day_rows if d.day > month]),
            "days": [{"day": d.day, "checks": d.checks, "failures": d.failures, "degraded": d.degraded,
                      "latency_avg_ms": None if d.latency_avg_ms is None else round(d.latency_avg_ms, 1)}
                     for d in day_rows],
        })  # fmt: skip
    return rows


def _backups(config: ScheduleConfig, ledger: Ledger, now: datetime) -> list[dict[str, Any]]:
    drills = [j.id for j in config.jobs if j.kind == "restore_drill"]
    window = ledger.runs(now - timedelta(days=PAGE_DAYS), now, kinds=(*BACKUP_KINDS, "restore_drill"))
    recoveries = [{"at": _at(r.started_at), "recovery_s": r.details["recovery_s"]} for r in window
                  if r.kind == "restore_drill" and r.details.get("recovery_s") is not None]  # fmt: skip
    verified = [run for job_id in drills if (run := ledger.last_success(job_id)) is not None]
    newest_verified = max(verified, key=lambda r: r.started_at, default=None)
    rows = []
    for job in config.jobs:
        if job.kind not in BACKUP_KINDS:
            continue
        made = ledger.last_success(job.id)
        rows.append({
            "job_id": job.id, "kind": job.kind,
            "newest": made and {"at": _at(made.started_at), "key": made.details.get("key"),
                                "stored_bytes": made.details.get("stored_bytes"),
                                "documents": made.details.get("documents")},
            "newest_verified": newest_verified and {"at": _at(newest_verified.started_at),
                                                    "key": newest_verified.details.get("key"),
                                                    "recovery_s": newest_verified.details.get("recovery_s"),
                                                    "drill": newest_verified.job_id},
            "sizes": [{"at": _at(r.started_at), "stored_bytes": r.details["stored_bytes"]} for r in window
                      if r.job_id == job.id and r.details.get("stored_bytes") is not None],
            "recoveries": recoveries,
            "point_in_time": [_point_in_time(ledger, c.id, made) for c in config.jobs
                              if c.kind == "change_capture" and getattr(c.options, "backup", None) == job.id],
        })  # fmt: skip
    return rows


def _point_in_time(ledger: Ledger, capture_id: str, backup: RunRecord | None) -> dict[str, Any]:
    """How far a capture job's chain reaches, and whether it is broken: a gap newer than the newest backup (the
    backup after a gap starts the next chain)."""
    runs = ledger.recent(capture_id, limit=200)
    good = next((r for r in runs if r.status.is_success and r.details.get("through")), None)
    gap = next((r for r in runs if r.status.value == "fail" and "capture stopped" in r.summary), None)
    restarted = next((r for r in runs if r.status.is_success and r.details.get("new_chain")), None)
    healed = (gap is not None and restarted is not None and restarted.started_at > gap.started_at
              and backup is not None and backup.started_at > restarted.started_at)  # fmt: skip
    broken = gap is not None and not healed
    through = good.details["through"] if good else None
    return {
        "job_id": capture_id,
        "through": None if through is None else _at(datetime.fromtimestamp(int(through["t"]), UTC)),
        "broken_since": _at(datetime.fromtimestamp(int(gap.details["through"]["t"]), UTC))
        if broken and gap is not None and gap.details.get("through")
        else None,
        "reason": gap.summary if broken and gap is not None else None,
    }


def _deploys(config: ScheduleConfig, ledger: Ledger) -> list[dict[str, Any]]:
    rows = []
    for job in config.jobs:
        if job.kind != "deploys":
            continue
        for service in getattr(job.options, "services", ()):
            history = ServiceHistory.load(ledger.get_state(job.id, state_key(service.name)))
            good = next((d for d in history.deploys if d.good), None)
            live = history.deploys[0] if history.deploys else None
            rows.append({
                "job_id": job.id, "service": service.name,
                "newest": live and {"id": live.deploy_id, "commit": live.commit[:7], "status": live.status},
                "last_good": good and {"id": good.deploy_id, "commit": good.commit[:7], "good_at": good.good_at},
            })  # fmt: skip
    return rows


def _dependencies(config: ScheduleConfig, ledger: Ledger) -> list[dict[str, Any]]:
    rows = []
    for job in config.jobs:
        if job.kind != "dependencies":
            continue
        reports = [r for r in ledger.recent(job.id, limit=5) if r.details.get("projects") is not None]
        if not reports:
            continue
        run = reports[0]
        gaps = run.details.get("gaps") or []
        for project in run.details["projects"]:
            checked = advisories_checked(project, gaps)
            severities: dict[str, int] = {}
            for advisory in project.get("advisories") or []:
                severities[advisory["severity"]] = severities.get(advisory["severity"], 0) + 1
            node = project.get("node") or {}
            rows.append({
                "job_id": job.id, "project": project["name"], "checked_at": _at(run.started_at),
                "status": run.status.value, "advisories": severities if checked else None,
                "advisories_checked": checked,
                "majors": [d["name"] for d in project.get("direct") or [] if d.get("update") == "major"],
                "node": node.get("status"), "node_line": node.get("line"),
                "gaps": [g.get("source", "?") for g in gaps],
                "not_checked": [_gap_text(g) for g in gaps if leaves_gap(g)],
            })  # fmt: skip
    return rows


def _gap_text(gap: Mapping[str, Any]) -> str:
    """`source: why (what it leaves unchecked)` of a dependency report's gap."""
    return f"{gap.get('source', '?')}: {gap.get('error') or 'no reason recorded'} ({gap.get('effect', '')})"
