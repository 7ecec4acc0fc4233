"""The weekly report as Markdown, with its charts as inline SVG (jobs/review/charts.py).

Inline `<svg>` shows in the Markdown viewers operators use (VS Code, Obsidian, pandoc's
HTML) and in the saved file opened in a browser; the same data is in the JSON report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from jobs.review.charts import Style, colours, time_chart
from jobs.review.page import TREND_MIN
from jobs.review.verdict import state
from worker.job import format_size
from worker.timespec import format_duration


def _day_points(row: Mapping[str, Any], key: str) -> list[tuple[datetime, float]]:
    """A day's value at noon of that day, so a single day sits in the middle of its column."""
    return [(datetime.combine(date.fromisoformat(d["date"]), datetime.min.time()) + timedelta(hours=12), d[key])
            for d in row["days"] if d[key] is not None]  # fmt: skip


def too_few(title: str, series: Mapping[str, Sequence[tuple[datetime, float]]], unit: str, what: str) -> str | None:
    """The chart said in words when no series has enough points to be a trend ("1 day of data"); else None."""
    most = max((len(points) for points in series.values()), default=0)
    if most >= TREND_MIN:
        return None
    values = "; ".join(f"{name} {v:,.4g}{unit}" for name, points in series.items() for _, v in points)
    return f"*{title}: {most} {what}{'' if most == 1 else 's'} of data, too few for a trend ({values}).*"


def uptime_chart(rows: Sequence[Mapping[str, Any]], days: Sequence[date], styles: Mapping[str, Style]) -> str | None:
    """Uptime % per day, one line per endpoint (days without checks are left out)."""
    series = {r["endpoint"]: points for r in rows if (points := _day_points(r, "uptime_pct"))}
    if not series:
        return None
    if words := too_few("Uptime per day", series, " %", "day"):
        return words
    low = min(v for points in series.values() for _, v in points)
    return time_chart("Uptime % per day", series, styles, days, low=min(99.0, float(low) // 1), high=100.0, unit=" %")


def latency_chart(rows: Sequence[Mapping[str, Any]], days: Sequence[date], styles: Mapping[str, Style]) -> str | None:
    """p95 latency per day in ms, one line per endpoint."""
    series = {r["endpoint"]: points for r in rows if (points := _day_points(r, "p95_ms"))}
    if not series:
        return None
    if words := too_few("p95 latency per day", series, " ms", "day"):
        return words
    high = max(v for points in series.values() for _, v in points)
    return time_chart("p95 latency per day (ms)", series, styles, days, low=0.0, high=high * 1.1 or 1.0, unit=" ms")


def size_chart(jobs: Sequence[Mapping[str, Any]], days: Sequence[date]) -> str | None:
    """Stored size of each backup over the week: a dot per backup, a colour per backup job, in the unit that suits
    the largest (kB for a 14 kB backup, not 0.014 MB)."""
    largest = max((s["stored_bytes"] for j in jobs for s in j["sizes"]), default=0)
    unit, scale = next(((u, f) for u, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if largest >= f), ("B", 1.0))
    series = {j["job_id"]: [(_naive(s["at"]), s["stored_bytes"] / scale) for s in j["sizes"]] for j in jobs
              if j["sizes"]}  # fmt: skip
    if not series:
        return None
    if words := too_few("Backup size", series, f" {unit}", "backup"):
        return words
    high = max(v for points in series.values() for _, v in points)
    return time_chart(f"Backup size ({unit})", series, colours(series), days, low=0.0, high=high * 1.1 or 1.0,
                      unit=f" {unit}", lines=False)  # fmt: skip


def _naive(moment: str) -> datetime:
    """Charts place points on naive UTC datetimes: the offset dropped after converting."""
    return datetime.fromisoformat(moment).astimezone(UTC).replace(tzinfo=None)


def _mb(size: float) -> str:
    return format_size(size)


def _dur(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(timedelta(seconds=seconds if seconds < 1 else round(seconds)))


def _t(moment: str | None) -> str:
    """An ISO time as `2026-11-26 19:21` UTC, short enough for a table."""
    if not moment:
        return "-"
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def to_markdown(report: Mapping[str, Any]) -> str:
    """The whole report: what needs a human first, then each area, charts inline."""
    sections = (_head, _uptime, _backups, _drills, _job_runs, _dependencies, _deploys, _platform, _sentry, _render)
    return "\n".join(line for section in sections for line in section(report)) + "\n"


def _head(report: Mapping[str, Any]) -> list[str]:
    period = report["period"]
    out: list[str] = [f"# Weekly review: {_t(period['start'])} to {_t(period['end'])} UTC", ""]
    if report.get("status_page"):
        out += [f"Status page: {report['status_page']}", ""]
    verdict = report.get("overall") or {"state": "OK", "failing": 0, "attention": 0}
    shown = state(verdict["state"])
    out += [f"**Verdict: {shown.symbol} {verdict['state']}** ({verdict['failing']} failing, {verdict['attention']} to "
            "look at; the worst of everything below)", ""]  # fmt: skip
    need = report["needs_attention"]
    if need:
        marks = {"failing": state("FAILING").symbol, "attention": state("ATTENTION").symbol}
        out += [f"## Needs attention ({len(need)})", ""]
        out += [f"- {marks.get(n.get('level', 'attention'), '▲')} **{n['area']}**: {n['message']}" for n in need]
    else:
        out += ["## Needs attention", "", "Nothing this week."]
    failing = [g for g in report["gaps"] if g["configured"] == "yes"]
    missing = [g for g in report["gaps"] if g["configured"] != "yes"]
    if failing or missing:
        out += ["", "## Gaps", "", "This report could not include:"]
        out += [f"- **{g['source']}**: {g['reason']}" for g in failing + missing]
    return out


def _uptime(report: Mapping[str, Any]) -> list[str]:
    days = [date.fromisoformat(d) for d in report["period"]["days"]]
    out = ["", "## Uptime", ""]
    if report["uptime"]:
        out += [
            "| endpoint | uptime | checks | failed | p50 | p95 | p99 | outages |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in report["uptime"]:
            lat = row["latency_ms"]
            out.append(f"| {row['job_id']}/{row['endpoint']} | {row['uptime_pct']}% | {row['checks']} | "
                       f"{row['failures']} | {lat['p50']} ms | {lat['p95']} ms | {lat['p99']} ms | "
                       f"{len(row['outages'])} |")  # fmt: skip
        for row in report["uptime"]:
            for outage in row["outages"]:
                end = outage["end"] or "ongoing"
                out.append(
                    f"\n- {row['endpoint']} down {_t(outage['start'])} to {_t(end) if outage['end'] else end} "
                    f"({_dur(outage['duration_s'])})"
                )
        styles = colours(r["endpoint"] for r in report["uptime"])  # one endpoint, one colour, in both charts
        for chart in (uptime_chart(report["uptime"], days, styles), latency_chart(report["uptime"], days, styles)):
            if chart:
                out += ["", chart]
    else:
        out.append("No health checks were recorded this week.")
    return out


def _backups(report: Mapping[str, Any]) -> list[str]:
    backups = report["backups"]
    out = ["", "## Backups", "", f"{backups['made']} made, {backups['failed']} failed.", ""]
    if backups["jobs"]:
        out += ["| job | made | failed | newest size | stored this week |", "|---|---|---|---|---|"]
        for job in backups["jobs"]:
            newest = _mb(job["sizes"][-1]["stored_bytes"]) if job["sizes"] else "-"
            out.append(f"| {job['job_id']} | {job['made']} | {job['failed']} | {newest} | {_mb(job['stored_bytes'])} |")
        for job in backups["jobs"]:
            out += [f"- {job['job_id']} {_t(f['at'])}: {f['status']}: {f['summary']}" for f in job["failures"]]
        chart = size_chart(backups["jobs"], [date.fromisoformat(d) for d in report["period"]["days"]])
        if chart:
            out += ["", chart]
    return out


def _drills(report: Mapping[str, Any]) -> list[str]:
    drills = report["drills"]
    out = ["", "## Restore drills", "", f"{drills['passed']} passed, {drills['failed']} failed this week."]
    out += [f"- {_t(r['at'])} {r['job_id']}: {r['status']}, recovery {_dur(r['recovery_s'])}: {r['summary']}"
            for r in drills["runs"]]  # fmt: skip
    last = drills["last_passed"]
    out.append(f"\nLast passing drill: {_t(last['at'])} ({last['job_id']}, recovery {_dur(last['recovery_s'])})."
               if last else "\nNo restore drill has passed in the last 92 days.")  # fmt: skip
    return out


def _job_runs(report: Mapping[str, Any]) -> list[str]:
    out = ["", "## Job runs", ""]
    jobs = report["job_runs"]["jobs"]
    if not jobs:
        return [*out, "Every run of every job this week ended ok or warn."]
    out += ["| job | kind | failed | errors | timed out | missed | interrupted | newest |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for job in jobs:
        c, newest = job["counts"], job["latest"][0]
        out.append(f"| {job['job_id']} | {job['kind']} | {c.get('fail', 0)} | {c.get('error', 0)} | "
                   f"{c.get('timeout', 0)} | {c.get('missed', 0)} | {c.get('interrupted', 0)} | "
                   f"{_t(newest['at'])} {newest['status']}: {newest['summary'].replace('|', '/')[:120]} |")  # fmt: skip
    return out


def _dependencies(report: Mapping[str, Any]) -> list[str]:
    out = ["", "## Dependencies", ""]
    if not report["dependencies"]["projects"]:
        out.append("No dependency report in the last 92 days.")
    for project in report["dependencies"]["projects"]:
        if project["advisories"] is None:
            counts = "advisories not checked (no advisory source answered: see below)"
        else:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(project["advisories"].items())) or "no advisories"
        out.append(f"- **{project['project']}** (checked {project['checked_at'][:10]}): {counts}; "
                   f"{len(project['majors_behind'])} major update(s) behind; "
                   f"{len(project['deprecated'])} deprecated; Node.js {project['node'] or 'unknown'}")  # fmt: skip
        out += [f"  - {a}" for a in project["serious"]]
        out += [f"  - out of step: {d}" for d in project.get("drift") or []]
    gaps = report["dependencies"].get("gaps") or []
    if gaps:
        out += ["", "Not checked in the newest run:", "", "| Job | Source | Effect | Error |",
                "| --- | --- | --- | --- |"]  # fmt: skip
        out += [f"| {g['job_id']} | {g['source']} | {g['effect']} | {g['error'].replace('|', '/')} |" for g in gaps]
    return out


def _deploys(report: Mapping[str, Any]) -> list[str]:
    deploys = report["deploys"]
    out = ["", "## Deploys", ""]
    if not deploys["services"]:
        out.append("No deploys job in this schedule.")
    for service in deploys["services"]:
        good = service["last_good"]
        out.append(f"- **{service['service']}**: {service['deploys']} deploy(s), {service['failed']} failed; "
                   f"last good: {good['commit'] + ' (' + good['id'] + ')' if good else 'none'}")  # fmt: skip
        out += [f"  - {_t(d['created_at'])} {d['commit']} {d['status']}{' (good)' if d['good'] else ''}: "
                f"{d['message']}" for d in service["list"]]  # fmt: skip
    out += [
        f"- {'automatic ' if r.get('automatic') else ''}rollback {_t(r['at'])}: {r['service']} from {r['from']} "
        f"to {r['to']}" + (f" ({r['outcome']})" if r.get("outcome") else "")
        for r in deploys["rollbacks"]
    ]
    return out


def _platform(report: Mapping[str, Any]) -> list[str]:
    platform = report.get("platform")
    if platform is None:
        return []
    out = ["", "## Platform", ""]
    if not platform["incidents"]:
        out.append("No Render incident or maintenance touched the app this week.")
    else:
        out += ["| kind | what | status | impact | from | to |", "|---|---|---|---|---|---|"]
        for i in platform["incidents"]:
            name = f"[{i['name']}]({i['link']})" if i["link"] else i["name"]
            out.append(f"| {i['kind']} | {name} | {i['status'].replace('_', ' ')} | {i['impact'] or '-'} | "
                       f"{_t(i['started_at'])} | {_t(i['ended_at']) if i['ended_at'] else 'ongoing'} |")  # fmt: skip
    if platform["upcoming"]:
        out += ["", "**Upcoming maintenance**", ""]
        out += [f"- {_t(m['scheduled_for'])} to {_t(m['scheduled_until'])}: {m['name']}" for m in platform["upcoming"]]
    return out


def _sentry(report: Mapping[str, Any]) -> list[str]:
    sentry = report["sentry"]
    out: list[str] = []
    if sentry is not None:
        out += ["", "## Sentry", ""]
        out += [f"- partial: {note}" for note in sentry.get("partial", [])] + ([""] if sentry.get("partial") else [])
        for title, key in (("New issues", "new_issues"), ("Regressions", "regressions"), ("Top issues by events",
                                                                                            "top_issues")):  # fmt: skip
            out += [f"**{title}** ({len(sentry[key])})", ""]
            out += [
                f"- [{i['short_id'] or i['id']}]({i['link']}) {i['title']}: {i['events']} events" for i in sentry[key]
            ]
            out.append("")
        out += ["**Slowest transactions (p95)**", "", "| transaction | p95 | count |", "|---|---|---|"]
        out += [f"| {t['transaction']} | {t['p95_ms']:.0f} ms | {t['count']} |" for t in sentry["slow_transactions"]
                if t["p95_ms"] is not None]  # fmt: skip
    return out


def _render(report: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if report["render"] is not None:
        out += ["", "## Render", "", "| service | plan | CPU avg | CPU peak | memory avg | memory peak |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for s in report["render"]:
            out.append(f"| {s['service']} | {s['plan']} ({s['cpu_limit']} CPU, {s['memory_limit_mb']} MB) | "
                       f"{s['cpu_avg_pct']}% | {s['cpu_peak_pct']}% | {s['memory_avg_mb']} MB | "
                       f"{s['memory_peak_mb']} MB ({s['memory_peak_pct']}%) |")  # fmt: skip
    return out
