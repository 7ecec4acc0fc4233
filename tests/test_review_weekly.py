"""The weekly review: a known week in a real ledger, Sentry and Render answering over real HTTP."""

from __future__ import annotations

import json
import os
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from jobs.deploys.job import DeployRecord, ServiceHistory, state_key
from jobs.review.markdown import to_markdown
from jobs.review.weekly import WeeklyReviewOptions, build, headline
from tests.conftest import Reply, Request, SentryReceiver, VendorAPI, opskeeper, write
from worker import registry
from worker.job import CheckRecord, Status
from worker.ledger import RunRecord, SqliteLedger
from worker.schedule import load_config

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday morning
TOKEN = "sntrys_weekly-review-token-0123456789"
RENDER_KEY = "rnd_weekly-review-key-0123456789"


def schedule(tmp_path: Path, vendor: VendorAPI | None, extra: str = "") -> Path:
    """A schedule with the jobs a week's ledger comes from, and the weekly review reading `vendor`."""
    sources = (f"""
      sentry: {{org: acme, projects: ["42"], api_url: "{vendor.url}"}}
      render: {{api_url: "{vendor.url}/v1", services: [{{name: api, service_id: srv-api1, plan: starter}}]}}
      api_timeout: 500ms""" if vendor else "")  # fmt: skip
    return write(
        tmp_path / "jobs.yaml",
        f"""
timezone: UTC
jobs:
  - id: api-health
    kind: health
    schedule: every 1m
    options: {{endpoints: [{{name: backend, url: "http://127.0.0.1:9/api/health"}}]}}
  - id: nightly
    kind: backup
    schedule: "0 3 * * *"
    options: {{uri: "mongodb://127.0.0.1:9/", storage: "{tmp_path / "backups"}"}}
  - id: render-deploys
    kind: deploys
    schedule: every 5m
    options: {{services: [{{name: api, service_id: srv-api1, health: api-health}}]}}
  - id: weekly
    kind: weekly_review
    schedule: "0 9 * * mon"
    options:{sources}{extra}
""",
    )


def run(job_id: str, kind: str, at: datetime, status: Status, summary: str = "", **details: Any) -> RunRecord:
    return RunRecord(run_id=f"{job_id}-{at.isoformat()}", job_id=job_id, kind=kind, status=status, started_at=at,
                     finished_at=at + timedelta(minutes=1), summary=summary, details=details)  # fmt: skip


def fill_week(ledger: SqliteLedger, now: datetime) -> None:
    """A known week: hourly checks with one 2-hour outage, daily backups (one failed), two drills,
    a dependency report, three deploys (one failed) and a rollback; plus rows outside the week."""
    since = now - timedelta(days=7)
    checks = []
    for hour in range(-3, 168):  # three checks before the week, which must not count
        at = since + timedelta(hours=hour)
        outage = since + timedelta(days=2, hours=1) <= at < since + timedelta(days=2, hours=3)
        slow = (since + timedelta(days=4)).date() == at.date()
        checks.append(CheckRecord(
            "api-health", "backend", at, "fail" if outage else "ok",
            "DOWN" if at == since + timedelta(days=2, hours=2) else "UP",
            None if outage else 200, None if outage else (240.0 if slow else 100.0), "HTTP 500" if outage else "",
        ))  # fmt: skip
    ledger.record_checks(checks)
    ledger.record(run("nightly", "backup", since - timedelta(hours=6), Status.OK, stored_bytes=999))
    for day in range(7):
        at = since + timedelta(days=day, hours=18)
        if day == 3:
            ledger.record(run("nightly", "backup", at, Status.FAIL, "dump failed: connection refused"))
        else:
            ledger.record(run("nightly", "backup", at, Status.OK, "backed up", stored_bytes=1_000_000 + 10_000 * day,
                              documents=5000 + day))  # fmt: skip
    ledger.record(run("drill", "restore_drill", since - timedelta(days=20), Status.OK, recovery_s=40.0))
    ledger.record(run("drill", "restore_drill", since + timedelta(days=4), Status.OK, "restored", recovery_s=42.5,
                      key="nightly/x.archive.gz"))  # fmt: skip
    ledger.record(run("drill", "restore_drill", since + timedelta(days=5), Status.FAIL, "drill failed: count differs"))
    ledger.record(run("deps", "dependencies", since + timedelta(days=5), Status.WARN, projects=[{
        "name": "server", "advisories": [
            {"id": 1096366, "severity": "high", "package": "ws", "version": "8.0.0", "title": "ws DoS"},
            {"id": 1099999, "severity": "moderate", "package": "qs", "version": "6.5.2", "title": "qs pollution"},
        ],
        "direct": [{"name": "express", "update": "major", "deprecated": False},
                   {"name": "request", "update": "none", "deprecated": True}],
        "node": {"declared": "16.20.2 (.nvmrc)", "line": "16", "status": "eol", "eol_date": "2023-09-11",
                 "latest_lts": "24.11.1", "security_release": None},
    }]))  # fmt: skip
    history = ServiceHistory([
        DeployRecord("dep-3", "live", "c3" * 20, "fix orders", "new_commit", (since + timedelta(days=6)).isoformat(),
                     good=True, good_at=(since + timedelta(days=6, minutes=10)).isoformat()),
        DeployRecord("dep-2", "build_failed", "c2" * 20, "bump deps", "new_commit",
                     (since + timedelta(days=3)).isoformat()),
        DeployRecord("dep-1", "deactivated", "c1" * 20, "old", "new_commit", (since - timedelta(days=3)).isoformat(),
                     good=True),
    ])  # fmt: skip
    ledger.set_state("render-deploys", state_key("api"), history.dump())
    ledger.record(run("render-deploys", "rollback", since + timedelta(days=6, hours=2), Status.OK,
                      service="api", **{"from": "dep-3", "to": "dep-1"}))  # fmt: skip


def issue(n: int, title: str, count: int, first_seen: datetime) -> dict[str, Any]:
    """An issue as Sentry's organization issues endpoint returns it."""
    return {"id": str(4504731000 + n), "shortId": f"SHOP-API-{n:X}", "title": title, "culprit": "GET /api/orders",
            "permalink": f"https://acme.sentry.io/issues/{4504731000 + n}/", "level": "error", "status": "unresolved",
            "count": str(count), "userCount": count // 4, "firstSeen": first_seen.isoformat(),
            "lastSeen": NOW.isoformat(), "project": {"id": "42", "slug": "shop-api"}}  # fmt: skip


def serve_sentry(vendor: VendorAPI) -> None:
    """Issues (new ones over two pages, joined by the Link cursor), regressions and slow spans."""
    new = [issue(i, f"TypeError #{i}", 10 + i, NOW - timedelta(days=2)) for i in range(3)]

    def issues(request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return Reply(401, {"detail": "Invalid token"})
        query = request.query["query"][0]
        if query.startswith("is:unresolved firstSeen:"):
            cursor = request.query.get("cursor", ["0:0:0"])[0]
            if cursor == "0:0:0":
                link = (f'<{vendor.url}/api/0/organizations/acme/issues/?cursor=0:0:1>; rel="previous"; '
                        f'results="false"; cursor="0:0:1", <{vendor.url}/api/0/organizations/acme/issues/'
                        f'?query=is%3Aunresolved+firstSeen%3A-7d&cursor=0:2:0>; rel="next"; results="true"; '
                        f'cursor="0:2:0"')  # fmt: skip
                return Reply(200, new[:2], {"Link": link})  # type: ignore[arg-type]
            return Reply(200, new[2:], {"Link": f'<{vendor.url}/x>; rel="next"; results="false"; cursor="0:4:0"'})  # type: ignore[arg-type]
        if query == "is:regressed":
            return Reply(200, [issue(9, "MongoServerError: E11000 duplicate key", 77, NOW - timedelta(days=60))])  # type: ignore[arg-type]
        return Reply(200, [issue(7, "Timeout in /api/checkout", 900, NOW - timedelta(days=40)), *new])  # type: ignore[arg-type]

    def events(request: Request) -> Reply:
        assert request.query["dataset"] == ["spans"]
        return Reply(200, {"data": [
            {"transaction": "POST /api/checkout", "p95(span.duration)": 2850.0, "count()": 1200},
            {"transaction": "GET /api/orders", "p95(span.duration)": 410.5, "count()": 8800},
        ], "meta": {"fields": {"p95(span.duration)": "duration"}}})  # fmt: skip

    vendor.routes["/api/0/organizations/acme/issues/"] = issues
    vendor.routes["/api/0/organizations/acme/events/"] = events


def serve_render(vendor: VendorAPI) -> None:
    """CPU in cores and memory in bytes, two instances, as Render's metrics endpoints return them."""

    def metric(values: list[float], unit: str) -> Any:
        def answer(request: Request) -> Reply:
            if request.headers.get("authorization") != f"Bearer {RENDER_KEY}":
                return Reply(401, {"message": "unauthorized"})
            assert request.query["resource"] == ["srv-api1"]
            half = len(values) // 2
            return Reply(200, [  # type: ignore[arg-type]
                {"labels": [{"field": "instance", "value": f"srv-api1-{i}"}],
                 "values": [{"timestamp": (NOW - timedelta(hours=h)).isoformat(), "value": v}
                            for h, v in enumerate(part)], "unit": unit}
                for i, part in enumerate((values[:half], values[half:]))
            ])  # fmt: skip

        return answer

    vendor.routes["/v1/metrics/cpu"] = metric([0.1, 0.2, 0.3, 0.2, 0.45, 0.25], "cpu")
    vendor.routes["/v1/metrics/memory"] = metric([200e6, 250e6, 300e6, 480e6], "bytes")


@pytest.fixture
def week(tmp_path: Path, vendor: VendorAPI, monkeypatch: pytest.MonkeyPatch) -> tuple[SqliteLedger, Any]:
    """A ledger holding the known week, the schedule's jobs, and both vendors serving."""
    monkeypatch.setenv("SENTRY_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("RENDER_API_KEY", RENDER_KEY)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    fill_week(ledger, NOW)
    serve_sentry(vendor)
    serve_render(vendor)
    config = load_config(schedule(tmp_path, vendor), registry.OPTIONS)
    return ledger, config


def test_a_token_without_org_read_is_a_gap_naming_the_scope(week: tuple[SqliteLedger, Any],
                                                            vendor: VendorAPI) -> None:  # fmt: skip
    """Sentry as it answers a token with event:read only (the scope the README once gave): the slow transactions
    (the events endpoint) are refused, and the gap names the scope the token lacks."""
    ledger, config = week
    vendor.token_scopes = {TOKEN: {"event:read"}}
    report = build(options(config), ledger, {j.id: j for j in config.jobs}, NOW)
    [gap] = [g for g in report["gaps"] if g["source"] == "sentry"]
    assert gap["reason"].endswith("SENTRY_AUTH_TOKEN lacks the org:read scope this call needs (HTTP 403)")
    assert "/api/0/organizations/acme/events/" in gap["reason"]


def test_a_list_cut_at_its_page_limit_says_so(week: tuple[SqliteLedger, Any], vendor: VendorAPI) -> None:
    """New issues that run past the pages read (Sentry always offering a next page) are reported as partial,
    never as all there are."""
    ledger, config = week
    served = vendor.routes["/api/0/organizations/acme/issues/"]

    def endless(request: Request) -> Reply:
        if (
            not request.query.get("query", [""])[0].startswith("is:unresolved firstSeen:")
            and "cursor" not in request.query
        ):
            return served(request)
        page = int(request.query.get("cursor", ["0:0:0"])[0].split(":")[1])
        link = (f'<{vendor.url}/api/0/organizations/acme/issues/?query=is%3Aunresolved+firstSeen%3A-7d&'
                f'cursor=0:{page + 1}:0>; rel="next"; results="true"; cursor="0:{page + 1}:0"')  # fmt: skip
        return Reply(
            200,
            [issue(100 + page, f"Error #{page}", 1, NOW - timedelta(days=1))],  # type: ignore[arg-type]
            {"Link": link},
        )

    vendor.routes["/api/0/organizations/acme/issues/"] = endless
    report = build(options(config), ledger, {j.id: j for j in config.jobs}, NOW)
    assert len(report["sentry"]["new_issues"]) == 5
    assert report["sentry"]["partial"] == ["new issues: the first 5 read (the page limit); more were there"]
    from jobs.review.markdown import to_markdown

    assert "- partial: new issues: the first 5 read (the page limit); more were there" in to_markdown(report)


def options(config: Any) -> WeeklyReviewOptions:
    return next(j.options for j in config.jobs if j.kind == "weekly_review")


def test_known_week_gives_the_right_numbers(week: tuple[SqliteLedger, Any]) -> None:
    """Uptime, outages, backups, drills, dependencies and deploys are counted from the week's rows only."""
    ledger, config = week
    report = build(options(config), ledger, {j.id: j for j in config.jobs}, NOW)
    (uptime,) = report["uptime"]
    assert (uptime["checks"], uptime["failures"], uptime["uptime_pct"]) == (168, 2, round(100 * 166 / 168, 3))
    assert uptime["outages"] == [{"start": "2026-11-18T10:00:00+00:00", "end": "2026-11-18T12:00:00+00:00",
                                  "duration_s": 7200.0}]  # fmt: skip
    days = {d["date"]: d for d in uptime["days"]}
    assert len(days) == 8
    assert days["2026-11-16"]["checks"] == 15
    assert days["2026-11-23"]["checks"] == 9
    assert days["2026-11-18"]["uptime_pct"] == round(100 * 22 / 24, 3)
    assert days["2026-11-20"]["p95_ms"] == 240.0
    assert days["2026-11-19"]["p95_ms"] == 100.0

    backups = report["backups"]
    assert (backups["made"], backups["failed"]) == (6, 1)
    (nightly,) = backups["jobs"]
    assert nightly["stored_bytes"] == sum(1_000_000 + 10_000 * d for d in (0, 1, 2, 4, 5, 6))
    assert [s["stored_bytes"] for s in nightly["sizes"]][-1] == 1_060_000
    assert nightly["failures"][0]["summary"] == "dump failed: connection refused"

    drills = report["drills"]
    assert (drills["passed"], drills["failed"]) == (1, 1)
    assert drills["last_passed"]["recovery_s"] == 42.5

    (server,) = report["dependencies"]["projects"]
    assert server["advisories"] == {"high": 1, "moderate": 1}
    assert server["serious"] == ["high 1096366 in ws@8.0.0: ws DoS"]
    assert (server["majors_behind"], server["deprecated"], server["node"]) == (["express"], ["request"], "eol")

    (api,) = report["deploys"]["services"]
    assert (api["deploys"], api["failed"]) == (2, 1)
    assert api["last_good"]["id"] == "dep-3"
    assert report["deploys"]["rollbacks"] == [{"at": "2026-11-22T11:00:00+00:00", "service": "api",
                                               "from": "dep-3", "to": "dep-1", "automatic": False, "reason": None,
                                               "outcome": None}]  # fmt: skip


def test_sentry_and_render_sections(week: tuple[SqliteLedger, Any], vendor: VendorAPI) -> None:
    """New issues follow the Link cursor; CPU and memory are measured against the plan's limits."""
    ledger, config = week
    report = build(options(config), ledger, {j.id: j for j in config.jobs}, NOW)
    sentry = report["sentry"]
    assert [i["short_id"] for i in sentry["new_issues"]] == ["SHOP-API-0", "SHOP-API-1", "SHOP-API-2"]
    assert [i["title"] for i in sentry["regressions"]] == ["MongoServerError: E11000 duplicate key"]
    assert sentry["top_issues"][0] == {**sentry["top_issues"][0], "title": "Timeout in /api/checkout", "events": 900}
    assert sentry["slow_transactions"][0] == {"transaction": "POST /api/checkout", "p95_ms": 2850.0, "count": 1200}
    asked = [r for r in vendor.requests if r.path.endswith("/issues/")]
    assert all(r.query.get("statsPeriod", ["7d"]) == ["7d"] for r in asked)
    assert asked[0].query["project"] == ["42"]
    (api,) = report["render"]
    assert (api["cpu_limit"], api["memory_limit_mb"]) == (0.5, 512)
    assert (api["cpu_avg"], api["cpu_peak"], api["cpu_peak_pct"]) == (0.25, 0.45, 90.0)
    assert (api["memory_peak_mb"], api["memory_peak_pct"]) == (480.0, 93.8)
    assert report["gaps"] == []


def test_needs_attention_names_each_problem(week: tuple[SqliteLedger, Any]) -> None:
    """Each problem of the week is one item, in its area, against the configured thresholds."""
    ledger, config = week
    report = build(options(config), ledger, {j.id: j for j in config.jobs}, NOW)
    areas = [n["area"] for n in report["needs_attention"]]
    assert areas.count("uptime") == 2  # under 99.9 %, and the outage
    assert areas.count("backups") == 1
    assert areas.count("drills") == 1
    assert areas.count("dependencies") == 2  # the high advisory and the EOL Node.js
    assert areas.count("deploys") == 2  # the failed build and the rollback
    assert areas.count("sentry") == 3  # new issues, a regression, /api/checkout's p95 over 2000 ms
    assert areas.count("render") == 1  # peak memory 93.8 % > 90 %; average CPU 50 % is under 80 %
    messages = " | ".join(n["message"] for n in report["needs_attention"])
    assert "was down 2h from 2026-11-18 10:00 UTC" in messages
    assert "POST /api/checkout p95 2850 ms" in messages
    relaxed = options(config).model_copy(update={"thresholds": options(config).thresholds.model_copy(
        update={"memory_pct": 95.0, "slow_p95_ms": 3000.0})})  # fmt: skip
    again = build(relaxed, ledger, {j.id: j for j in config.jobs}, NOW)
    assert [n["area"] for n in again["needs_attention"]].count("render") == 0
    assert [n["area"] for n in again["needs_attention"]].count("sentry") == 2


@pytest.mark.parametrize("source", ["sentry", "render"])
@pytest.mark.parametrize("failure", ["401", "500", "timeout"])
def test_a_failing_api_is_a_named_gap(week: tuple[SqliteLedger, Any], vendor: VendorAPI, source: str,
                                      failure: str) -> None:  # fmt: skip
    """A refused token, a server error or a hang leaves that source out with a gap; the rest stands."""
    ledger, config = week
    reply = {"401": Reply(401, {"detail": "Invalid token"}), "500": Reply(500, {"detail": "oops"})}.get(failure)
    paths = [p for p in vendor.routes if (p.startswith("/api/0/") if source == "sentry" else p.startswith("/v1/"))]
    for path in paths:
        vendor.routes[path] = (lambda r, reply=reply: reply) if reply else (lambda r: vendor.hang())
    report = build(options(config), ledger, {j.id: j for j in config.jobs}, NOW)
    request = {"sentry": f"Sentry API: GET {vendor.url}/api/0/organizations/acme/issues/",
               "render": f"Render API: GET {vendor.url}/v1/metrics/cpu"}[source]  # fmt: skip
    cause = {
        ("sentry", "401"): "SENTRY_AUTH_TOKEN rejected (HTTP 401)",
        ("render", "401"): "RENDER_API_KEY rejected (HTTP 401)",
        ("sentry", "500"): "HTTP 500",  # a 500 is a server's bug, not worth a retry
        ("render", "500"): "HTTP 500",
        ("sentry", "timeout"): "timed out after 500ms",
        ("render", "timeout"): "timed out after 500ms",
    }[source, failure]
    (gap,) = report["gaps"]
    assert gap["source"] == source
    assert gap["reason"] == f"{request}: {cause}"
    assert report[source] is None
    other = "render" if source == "sentry" else "sentry"
    assert report[other] is not None
    assert report["backups"]["made"] == 6


def test_markdown_has_every_section_and_three_charts(week: tuple[SqliteLedger, Any]) -> None:
    """The Markdown report leads with what needs attention and embeds uptime, latency and size charts."""
    ledger, config = week
    markdown = to_markdown(build(options(config), ledger, {j.id: j for j in config.jobs}, NOW))
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings == ["## Needs attention (12)", "## Uptime", "## Backups", "## Restore drills", "## Job runs",
                        "## Dependencies", "## Deploys", "## Sentry", "## Render"]  # fmt: skip
    charts = [line for line in markdown.splitlines() if line.startswith("<svg")]
    assert len(charts) == 3
    # Our own output, parsed to prove each chart is well-formed SVG.
    titles = [ET.fromstring(svg).find(".//{http://www.w3.org/2000/svg}text").text for svg in charts]  # type: ignore[union-attr]  # noqa: S314
    assert titles == ["Uptime % per day", "p95 latency per day (ms)", "Backup size (MB)"]
    assert "| api-health/backend | 98.81% | 168 | 2 |" in markdown


def test_job_keeps_the_report_and_alerts_once(tmp_path: Path, vendor: VendorAPI, sentry: SentryReceiver,
                                              env: dict[str, str]) -> None:  # fmt: skip
    """run-now: WARN, one Sentry message listing what needs a human, the report in the ledger and beside the backups."""
    serve_sentry(vendor)
    serve_render(vendor)
    ledger = SqliteLedger(Path(env["OPSKEEPER_LEDGER"]))
    fill_week(ledger, datetime.now(UTC))
    config = schedule(tmp_path, vendor, "\n      backup_job: nightly")
    result = opskeeper("run-now", "weekly", "--config", str(config), "--json",
                       env={**env, "SENTRY_AUTH_TOKEN": TOKEN, "RENDER_API_KEY": RENDER_KEY,
                            "SENTRY_DSN": sentry.dsn})  # fmt: skip
    assert result.code == 1, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "warn"
    assert "12 need(s) attention" in record["summary"]
    (event,) = [e for e in sentry.wait_items("event", 1) if "weekly review" in json.dumps(e)]
    assert "weekly review: 12 thing(s) need a human: uptime:" in json.dumps(event)
    assert TOKEN not in json.dumps(sentry.items("event"))
    assert RENDER_KEY not in result.stdout + result.stderr
    saved = sorted((tmp_path / "backups" / "reports" / "weekly").iterdir())
    assert [p.suffix for p in saved] == [".json", ".md"]
    assert json.loads(saved[0].read_text())["backups"]["made"] == 6
    reports = ledger.get_state("weekly", "reports")
    kept = ledger.get_state("weekly", f"report:{reports[-1]}")
    assert kept["json"]["drills"]["failed"] == 1
    assert kept["markdown"].startswith("# Weekly review")
    ledger.close()


@pytest.mark.slow
def test_report_command_prints_json_and_writes_files(tmp_path: Path, env: dict[str, str]) -> None:
    """`opskeeper report weekly --json` has the documented keys; --out writes the file and says where."""
    ledger = SqliteLedger(Path(env["OPSKEEPER_LEDGER"]))
    fill_week(ledger, NOW)
    ledger.close()
    config = schedule(tmp_path, None, " {}")
    result = opskeeper("report", "weekly", "--config", str(config), "--json", "--now", NOW.isoformat(), env=env)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report) == ["period", "uptime", "backups", "drills", "dependencies", "deploys", "platform", "job_runs",
                            "status_page", "sentry", "render", "scheduler", "needs_attention", "gaps",
                            "overall"]  # fmt: skip
    assert [(g["source"], g["reason"]) for g in report["gaps"]] == [("sentry", "not configured"),
                                                                    ("render", "not configured")]  # fmt: skip
    out = tmp_path / "out" / "week.md"
    written = opskeeper("report", "weekly", "--config", str(config), "--now", NOW.isoformat(), "--out", str(out),
                        env=env)  # fmt: skip
    assert written.code == 0
    assert f"weekly report written to {out}" in written.stdout
    assert out.read_text().startswith("# Weekly review: 2026-11-16 09:00 to 2026-11-23 09:00 UTC")
    bad = opskeeper("report", "weekly", "--config", str(config), "--now", "yesterday", env=env)
    assert bad.code == 64
    assert "--now 'yesterday': not an ISO 8601 time" in bad.stderr


def test_the_job_under_frozen_time_reports_the_same_week(tmp_path: Path) -> None:
    """Run at a frozen Monday 09:00, the job's report is the week before it, kept in the ledger."""
    from jobs.review.weekly import WeeklyReviewJob
    from worker.job import JobContext
    from worker.ledger import JobState

    ledger = SqliteLedger(tmp_path / "ledger.db")
    fill_week(ledger, NOW)
    config = load_config(schedule(tmp_path, None, " {}"), registry.OPTIONS)
    jobs = {j.id: j for j in config.jobs}
    notices: list[Any] = []
    with freeze_time(NOW):
        ctx = JobContext(job_id="weekly", run_id="r", scheduled_at=NOW, deadline=float("inf"),
                         state=JobState(ledger, "weekly"), cancel=threading.Event(), log=lambda e, **f: None,
                         notify=notices.append, jobs=jobs, history=ledger)  # fmt: skip
        outcome = WeeklyReviewJob(options(config)).run(ctx)
    assert outcome.status is Status.WARN
    assert [n.fingerprint for n in notices] == [("weekly_review", f"{NOW:%G-W%V}")]  # this week's own issue
    assert outcome.details["report"] == build(options(config), ledger, jobs, NOW)
    assert ledger.get_state("weekly", "reports") == ["weekly-2026-11-23"]
    ledger.close()


@freeze_time(NOW)
def test_a_quiet_week_needs_nothing(tmp_path: Path) -> None:
    """A week with every check up, every backup made and no sources configured needs no human."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.record_checks([CheckRecord("api-health", "backend", NOW - timedelta(hours=h), "ok", "UP", 200, 50.0)
                          for h in range(1, 100)])  # fmt: skip
    for day in range(7):
        ledger.record(run("nightly", "backup", NOW - timedelta(days=day, hours=2), Status.OK, stored_bytes=10))
    config = load_config(schedule(tmp_path, None, " {}"), registry.OPTIONS)
    report = build(options(config), ledger, {j.id: j for j in config.jobs}, datetime.now(UTC))
    assert report["needs_attention"] == []
    assert report["uptime"][0]["uptime_pct"] == 100.0
    assert report["backups"]["made"] == 7
    assert report["deploys"]["services"] == [{"service": "api", "deploys": 0, "failed": 0, "list": [],
                                              "last_good": None}]  # fmt: skip
    assert headline(report).endswith("; nothing needs attention")
    ledger.close()


def test_report_on_a_terminal_leaves_the_charts_out(tmp_path: Path, env: dict[str, str]) -> None:
    """Printed to a terminal the Markdown has no SVG lines and says how to get them; piped, it has them."""
    import pty
    import subprocess
    import sys

    from tests.conftest import ROOT

    ledger = SqliteLedger(Path(env["OPSKEEPER_LEDGER"]))
    fill_week(ledger, NOW)
    ledger.close()
    config = schedule(tmp_path, None, " {}")
    argv = [sys.executable, "-m", "worker", "report", "weekly", "--config", str(config), "--now", NOW.isoformat()]
    leader, follower = pty.openpty()
    with subprocess.Popen(argv, cwd=ROOT, env=env, stdout=follower, stderr=subprocess.PIPE) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0
    os.close(leader)
    shown = b"".join(chunks).decode()
    assert "## Uptime" in shown
    assert "<svg" not in shown
    assert "use --out FILE for the report with its charts" in shown
    piped = opskeeper("report", "weekly", "--config", str(config), "--now", NOW.isoformat(), env=env)
    assert piped.stdout.count("\n<svg") == 3


def test_an_automatic_rollback_is_listed_with_its_outcome(week: tuple[SqliteLedger, Any]) -> None:
    """A rollback the deploy guard made appears as automatic, paired with its `rollback_outcome` entry."""
    ledger, config = week
    at = NOW - timedelta(hours=3)
    rollback = run("render-deploys", "rollback", at, Status.OK, service="api", automatic=True, reason="backend DOWN",
                   **{"from": "dep-3", "to": "dep-1"})  # fmt: skip
    ledger.record(rollback)
    ledger.record(run("render-deploys", "rollback_outcome", at + timedelta(minutes=4), Status.OK, service="api",
                      rollback=rollback.run_id, outcome="self-healed"))  # fmt: skip
    report = build(options(config), ledger, {j.id: j for j in config.jobs}, NOW)
    newest = report["deploys"]["rollbacks"][-1]
    assert (newest["automatic"], newest["outcome"], newest["reason"]) == (True, "self-healed", "backend DOWN")
    assert {"area": "deploys", "message": "api was rolled back automatically from dep-3 to dep-1 (self-healed)",
            "level": "attention"} in \
        report["needs_attention"]  # fmt: skip
    assert "- automatic rollback " in to_markdown(report)


def test_dependency_gaps_and_drift_are_in_the_review(tmp_path: Path) -> None:
    """A dependencies run that could not ask a source: the review lists the gap and the drift, and flags both."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    gap = {
        "source": "advisories (registry)",
        "effect": "advisories not checked by this source",
        "error": "npm registry: POST https://registry.example/-/npm/v1/security/advisories/bulk: HTTP 405",
    }
    ledger.record(run("deps", "dependencies", NOW - timedelta(days=1), Status.WARN, gaps=[gap], projects=[{
        "name": "server", "advisories": [], "direct": [], "node": None,
        "drift": ["helmet (^7.1.0) is in package.json but not in package-lock.json"],
    }]))  # fmt: skip
    report = build(WeeklyReviewOptions(), ledger, {}, NOW)
    assert report["dependencies"]["gaps"] == [{"job_id": "deps", "checked_at": (NOW - timedelta(days=1)).isoformat(),
                                               **gap}]  # fmt: skip
    messages = [n["message"] for n in report["needs_attention"] if n["area"] == "dependencies"]
    assert messages == [
        "server: lockfile out of step with package.json: helmet (^7.1.0) is in package.json but not in "
        "package-lock.json",
        f"deps: not checked: advisories (registry) (advisories not checked by this source): {gap['error']}",
    ]
    markdown = to_markdown(report)
    assert "| deps | advisories (registry) | advisories not checked by this source |" in markdown
    assert "  - out of step: helmet (^7.1.0)" in markdown
    ledger.close()


def _markers(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    return [
        e
        for e in root.iter()
        if e.tag.split("}")[-1] in ("circle", "rect", "polygon") and e.find("{*}title") is not None
    ]


def test_charts_draw_a_single_day_and_keep_each_endpoints_colour() -> None:
    """A one-day series is a visible mark; one endpoint, one colour in both charts; all 7 series drawn."""
    from datetime import date as day_type

    from jobs.review.charts import colours
    from jobs.review.markdown import latency_chart, uptime_chart

    days = [day_type(2026, 11, 16) + timedelta(days=i) for i in range(7)]
    first = [{"date": days[3].isoformat(), "uptime_pct": 99.5, "p95_ms": 100.0}]
    later = [{"date": days[d].isoformat(), "uptime_pct": 100.0, "p95_ms": 90.0} for d in (4, 5)]
    rows = [{"endpoint": f"ep{i}", "days": first + (later if i else [])} for i in range(7)]
    styles = colours(r["endpoint"] for r in rows)
    up, latency = uptime_chart(rows, days, styles), latency_chart(rows, days, styles)
    assert up is not None
    assert latency is not None
    for svg in (up, latency):
        marks = _markers(svg)
        names = {m.find("{*}title").text.split(":")[0] for m in marks}  # type: ignore[union-attr]
        assert names == {f"ep{i}" for i in range(7)}
        single = [m for m in marks if m.find("{*}title").text.startswith("ep0: ")]  # type: ignore[union-attr]
        assert single  # ep0 has one day only, and it is drawn
    colour_of = [
        {
            m.find("{*}title").text.split(":")[0]: m.get("fill")  # type: ignore[union-attr]
            for m in _markers(svg)
        }
        for svg in (up, latency)
    ]
    assert colour_of[0] == colour_of[1]
    assert len(set(colour_of[0].values())) == 7


def test_job_runs_section_lists_failed_timed_out_and_missed_runs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Failed, timed-out and missed runs of any job are counted per job, newest summaries first; ok runs are not."""
    monkeypatch.setenv("OPSKEEPER_STATUS_PAGE", "https://status.example.com/")
    ledger = SqliteLedger(tmp_path / "ledger.db")
    for i, status in enumerate([Status.OK, Status.FAIL, Status.TIMEOUT, Status.MISSED, Status.FAIL]):
        ledger.record(run("export", "command", NOW - timedelta(days=3, hours=-i), status, f"run {i}"))
    ledger.record(run("beat", "command", NOW - timedelta(days=1), Status.OK, "fine"))
    ledger.record(run("export", "command", NOW - timedelta(days=9), Status.FAIL, "last week"))
    report = build(WeeklyReviewOptions(), ledger, {}, NOW)
    assert report["job_runs"] == {"jobs": [{
        "job_id": "export", "kind": "command", "counts": {"fail": 2, "timeout": 1, "missed": 1},
        "latest": [{"at": (NOW - timedelta(days=3, hours=-i)).isoformat(), "status": s, "summary": f"run {i}"}
                   for i, s in ((4, "fail"), (3, "missed"), (2, "timeout"), (1, "fail"))],
    }]}  # fmt: skip
    markdown = to_markdown(report)
    assert "| export | command | 2 | 0 | 1 | 1 | 0 |" in markdown
    assert "Status page: https://status.example.com/" in markdown
    ledger.close()


def test_a_failing_and_a_timed_out_job_need_attention_and_set_the_verdict(tmp_path: Path) -> None:
    """A failing script and a timed-out report are needs-attention items of level failing, named with their newest
    run; the report's verdict is FAILING and the Markdown opens with it."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.record(run("flaky-script", "command", NOW - timedelta(days=2), Status.FAIL, "exited 2: no route to host"))
    ledger.record(run("slow-report", "command", NOW - timedelta(days=1), Status.TIMEOUT, "timed out after 5m"))
    ledger.record(run("beat", "command", NOW - timedelta(days=1), Status.MISSED, "not started"))
    report = build(WeeklyReviewOptions(), ledger, {}, NOW)
    jobs = [n for n in report["needs_attention"] if n["area"] == "jobs"]
    assert jobs == [
        {"area": "jobs", "level": "attention",
         "message": "beat: 1 missed this week; newest missed at 2026-11-22 09:00 UTC: not started"},
        {"area": "jobs", "level": "failing",
         "message": "flaky-script: 1 fail this week; newest fail at 2026-11-21 09:00 UTC: exited 2: no route to host"},
        {"area": "jobs", "level": "failing",
         "message": "slow-report: 1 timeout this week; newest timeout at 2026-11-22 09:00 UTC: timed out after 5m"},
    ]  # fmt: skip
    assert report["overall"] == {"state": "FAILING", "level": "failing", "exit_code": 2, "failing": 2,
                                 "attention": 1}  # fmt: skip
    lines = to_markdown(report).splitlines()
    assert lines[2] == "**Verdict: ✕ FAILING** (2 failing, 1 to look at; the worst of everything below)"
    assert "- ✕ **jobs**: slow-report: 1 timeout this week" in "\n".join(lines)
    ledger.close()


@pytest.mark.parametrize(("low", "high", "ticks"), [
    (0.0, 76.9725, [0, 20, 40, 60, 80]),
    (0.0, 0.00379912, [0, 0.001, 0.002, 0.003, 0.004]),
    (99.0, 100.0, [99, 99.2, 99.4, 99.6, 99.8, 100]),
    (0.0, 14.3, [0, 5, 10, 15]),
    (5.0, 5.0, [5, 5.2, 5.4, 5.6, 5.8, 6]),
])  # fmt: skip
def test_axis_ticks_are_round_numbers(low: float, high: float, ticks: list[float]) -> None:
    """Ticks are 1, 2 or 5 times a power of ten, cover the values, and read without float noise."""
    from jobs.review.charts import nice_ticks, tick_text

    assert nice_ticks(low, high) == ticks
    assert [tick_text(t) for t in nice_ticks(0.0, 0.00379912)] == ["0", "0.001", "0.002", "0.003", "0.004"]


def test_small_backups_chart_in_kb_and_one_day_of_latency_is_said_in_words() -> None:
    """14 kB backups are charted in kB with round ticks (never "0.00379912 MB"); a single day of latency is a
    sentence, not one dot in an empty frame."""
    from datetime import date as day_type

    from jobs.review.charts import colours
    from jobs.review.markdown import latency_chart, size_chart

    days = [day_type(2026, 11, 16) + timedelta(days=i) for i in range(7)]
    sizes = [{"at": f"2026-11-{16 + i}T03:00:00+00:00", "stored_bytes": 14_000 + 100 * i} for i in range(3)]
    svg = size_chart([{"job_id": "nightly", "sizes": sizes}], days)
    assert svg is not None
    labels = [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]  # noqa: S314
    assert labels[0] == "Backup size (kB)"
    assert labels[1:6] == ["0 kB", "5 kB", "10 kB", "15 kB", "20 kB"]
    rows = [{"endpoint": "backend", "days": [{"date": days[6].isoformat(), "uptime_pct": 100.0, "p95_ms": 25.6575}]}]
    said = latency_chart(rows, days, colours(["backend"]))
    assert said == "*p95 latency per day: 1 day of data, too few for a trend (backend 25.66 ms).*"
