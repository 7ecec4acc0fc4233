"""platform_notices against a local status page: Statuspage JSON, RSS and Atom written from the published formats."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs.platform.feeds import parse
from jobs.platform.job import PlatformNoticesOptions, observe
from tests.conftest import Reply, opskeeper, write

PAGES = Path(__file__).parent / "fixtures" / "statuspage"
NOW = datetime(2026, 11, 30, 15, 30, tzinfo=UTC)


def page(name: str) -> bytes:
    return (PAGES / name).read_bytes()


def config_for(tmp_path: Path, url: str, scope: str = "regions: [Oregon]") -> Path:
    return write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: render-status
    kind: platform_notices
    schedule: every 1h
    options: {{url: "{url}", {scope}}}
  - id: weekly
    kind: weekly_review
    schedule: "@weekly"
""")  # fmt: skip


def run(config: Path, env: dict[str, str]) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    result = opskeeper("run-now", "render-status", "--config", str(config), "--json", env=env)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    notices = [e for e in lines if e.get("event") == "job.notice"]
    return result.code, json.loads(result.stdout), notices


@pytest.mark.slow
def test_one_notice_per_incident_none_repeated_and_one_when_it_ends(
    tmp_path: Path, env: dict[str, str], vendor: Any
) -> None:
    """summary.json: the Oregon incident is announced once (not Singapore's), never again while it lasts, and once
    more when the page stops listing it; the run warns while it is active."""
    vendor.routes["/api/v2/summary.json"] = lambda r: Reply(200, page("summary_active.json"))
    config = config_for(tmp_path, f"{vendor.url}/api/v2/summary.json")
    code, out, notices = run(config, env)
    assert (code, out["status"]) == (1, "warn"), out
    assert [n["notice"] for n in notices] == [
        "Render incident: Delayed deploys for services in Oregon (minor, identified) [Deploys] "
        "https://stspg.io/p5yc1d9m8k3f"
    ]
    assert out["summary"].startswith("1 active incident(s) touching Oregon: Delayed deploys for services in Oregon")
    assert run(config, env)[2] == []
    vendor.routes["/api/v2/summary.json"] = lambda r: Reply(200, page("summary_resolved.json"))
    code, out, notices = run(config, env)
    assert (code, out["status"]) == (0, "ok")
    assert [n["notice"] for n in notices] == [
        "Render incident over: Delayed deploys for services in Oregon (no longer listed as active)"
    ]
    assert run(config, env)[2] == []


def test_the_weekly_review_has_a_platform_section(tmp_path: Path, env: dict[str, str], vendor: Any) -> None:
    """The week's incidents the job saw and the maintenance still to come appear in the report and its Markdown."""
    document = json.loads(page("summary_active.json"))
    soon = datetime.now(UTC) + timedelta(days=3)
    document["scheduled_maintenances"][0]["scheduled_for"] = soon.isoformat()
    document["scheduled_maintenances"][0]["scheduled_until"] = (soon + timedelta(hours=2)).isoformat()
    vendor.routes["/api/v2/summary.json"] = lambda r: Reply(200, document)
    config = config_for(tmp_path, f"{vendor.url}/api/v2/summary.json")
    _code, out, _ = run(config, env)
    assert "1 maintenance(s) scheduled, next: Database maintenance for managed services in Oregon" in out["summary"]
    report = json.loads(opskeeper("report", "weekly", "--config", str(config), "--json", env=env).stdout)
    assert [i["name"] for i in report["platform"]["incidents"]] == ["Delayed deploys for services in Oregon"]
    assert [m["name"] for m in report["platform"]["upcoming"]] == [
        "Database maintenance for managed services in Oregon"
    ]
    assert {"area": "platform", "level": "attention",
            "message": "Render incident still open: Delayed deploys for services in Oregon (identified)"} in \
        report["needs_attention"]  # fmt: skip
    markdown = opskeeper("report", "weekly", "--config", str(config), env=env).stdout
    assert "## Platform" in markdown
    assert (
        "| incident | [Delayed deploys for services in Oregon](https://stspg.io/p5yc1d9m8k3f) | identified |"
        in markdown
    )


def test_an_rss_feed_is_read_with_statuses_kinds_and_components() -> None:
    """Statuspage's history.rss: each entry's newest status, maintenance told by its scheduled event, components."""
    feed = parse(page("history.rss"), "application/rss+xml", "https://status.render.com/history.rss")
    assert not feed.lists_every_active
    assert [(i.name, i.kind, i.status, i.components) for i in feed.items] == [
        ("Delayed deploys for services in Oregon", "incident", "resolved", ("Deploys",)),
        ("Elevated latency for web services in Singapore", "incident", "investigating", ("Web Services",)),
        ("Database maintenance for managed services in Oregon", "maintenance", "scheduled", ()),
    ]
    assert feed.items[0].id == "https://status.render.com/incidents/p5yc1d9m8k3f"
    assert feed.items[0].ended_at == "2026-11-30T14:02:31+00:00"


def test_an_atom_feed_and_its_resolution_in_a_later_fetch() -> None:
    """history.atom: the identified Oregon incident is announced for `components: [Deploys]`; the resolved one seen
    only once it was over gets no notice; the RSS fetch that shows Oregon resolved sends one `over` notice."""
    options = PlatformNoticesOptions(components=("Deploys",))
    atom = parse(page("history.atom"), "application/atom+xml", "https://status.render.com/history.atom")
    memory, notices = observe({}, atom, options, NOW)
    assert [(n.level, n.message) for n in notices] == [
        ("warning", "Render incident: Delayed deploys for services in Oregon (identified) [Deploys] "
                    "https://status.render.com/incidents/p5yc1d9m8k3f")]  # fmt: skip
    rss = parse(page("history.rss"), "application/rss+xml", "https://status.render.com/history.rss")
    # The same incident under the RSS feed's id (its link): a feed keeps its ids, so use one format per job.
    memory = {rss.items[0].id if k.startswith("tag:") and "27718233" in k else k: v for k, v in memory.items()}
    memory, notices = observe(memory, rss, options, NOW + timedelta(hours=1))
    assert [(n.level, n.resolves) for n in notices] == [("info", ("platform", rss.items[0].id))]
    assert observe(memory, rss, options, NOW + timedelta(hours=2))[1] == []


def test_incidents_are_forgotten_after_keep(tmp_path: Path) -> None:
    """An incident that ended longer ago than `keep` leaves the job's memory; a newer one stays."""
    feed = parse(page("history.atom"), "application/atom+xml", "https://status.render.com/history.atom")
    memory, _ = observe({}, feed, PlatformNoticesOptions(keep=timedelta(days=2)), NOW + timedelta(days=2, hours=12))
    assert sorted(e["name"] for e in memory.values()) == ["Delayed deploys for services in Oregon"]


def test_a_page_that_is_no_feed_and_a_page_too_large_are_clear_errors(
    tmp_path: Path, env: dict[str, str], vendor: Any
) -> None:
    """HTML instead of a feed: an error naming the URL; a gzip bomb past max_bytes: refused, memory bounded."""
    vendor.routes["/status"] = lambda r: Reply(200, b"<html><body>We are fine</body></html>",
                                               {"Content-Type": "text/html"})  # fmt: skip
    config = config_for(tmp_path, f"{vendor.url}/status")
    code, out, _ = run(config, env)
    assert (code, out["status"]) == (3, "error")
    assert out["summary"].startswith(f"{vendor.url}/status: neither Statuspage JSON nor an RSS/Atom feed")
    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")
    vendor.routes["/big.json"] = lambda r: Reply(200, bomb, {"Content-Encoding": "gzip"})
    config = config_for(tmp_path, f"{vendor.url}/big.json")
    code, out, _ = run(config, env)
    assert code == 3
    assert out["summary"].endswith("the answer is larger than 4,194,304 bytes")


def test_a_gzipped_rss_feed_over_http_is_read_and_announced(tmp_path: Path, env: dict[str, str], vendor: Any) -> None:
    """history.rss served as Statuspage serves it (application/rss+xml, gzip): the active Singapore incident is
    announced for `components: [Web Services]`; the resolved and the scheduled entries send nothing."""
    body = gzip.compress(page("history.rss"))
    vendor.routes["/history.rss"] = lambda r: Reply(200, body, {"Content-Type": "application/rss+xml; charset=utf-8",
                                                                "Content-Encoding": "gzip"})  # fmt: skip
    config = config_for(tmp_path, f"{vendor.url}/history.rss", "components: [Web Services]")
    code, out, notices = run(config, env)
    assert (code, out["status"]) == (1, "warn"), out
    assert [n["notice"] for n in notices] == [
        "Render incident: Elevated latency for web services in Singapore (investigating) [Web Services] "
        "https://status.render.com/incidents/w3n7h2j5v9q6"
    ]
    assert vendor.requests[0].headers["accept-encoding"] == "gzip, deflate"
    assert run(config, env)[2] == []
