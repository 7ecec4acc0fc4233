"""`platform_notices`: Render's status page, read for the incidents and maintenances that touch the app.

One notice per incident (or maintenance in progress) while it is active, and one when it
ends; never one twice across runs. What was seen stays in the job's state for the weekly
review's Platform section. WARN while an incident that touches the configured components or
regions is active; OK otherwise.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field

from jobs.platform.feeds import Feed, FeedError, Incident, parse
from worker.http import Api
from worker.job import JobContext, JobOptions, Notice, Outcome, Status, cut
from worker.schedule import Duration

RENDER_STATUS = "https://status.render.com/api/v2/summary.json"
#: The state key of what the job has seen, by incident id.
SEEN = "incidents"


class PlatformNoticesOptions(JobOptions):
    """Which status page to read, and what of it concerns this app."""

    url: str = RENDER_STATUS
    """Statuspage JSON (`…/api/v2/summary.json`, `incidents.json`) or an RSS/Atom feed (`…/history.rss`)."""
    components: tuple[str, ...] = ()
    """Component names (e.g. `Web Services`, `Deploys`); empty with no `regions`: every incident."""
    regions: tuple[str, ...] = ()
    """Regions (e.g. `Oregon`, `Frankfurt`), matched as words in an incident's name, components and updates."""
    timeout: Duration = timedelta(seconds=20)
    max_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    keep: Duration = timedelta(days=35)
    """How long an incident stays in the job's memory after it ended (the weekly review reads a week)."""


def _label(incident: Incident) -> str:
    impact = f"{incident.impact}, " if incident.impact and incident.impact != "none" else ""
    where = f" [{', '.join(incident.components)}]" if incident.components else ""
    link = f" {incident.link}" if incident.link else ""
    return f"{incident.name} ({impact}{incident.status.replace('_', ' ')}){where}{link}"


def observe(
    seen: dict[str, dict[str, Any]], feed: Feed, options: PlatformNoticesOptions, now: datetime
) -> tuple[dict[str, dict[str, Any]], list[Notice]]:
    """The job's memory after one fetch, and the notices it calls for. Pure."""
    stamp = now.isoformat()
    memory = {key: dict(value) for key, value in seen.items()}
    notices: list[Notice] = []
    listed = set()
    for incident in feed.items:
        if not incident.affects(options.components, options.regions):
            continue
        listed.add(incident.id)
        before = memory.get(incident.id, {})
        entry = {**asdict(incident), "components": list(incident.components), "first_seen": before.get("first_seen",
                 stamp), "last_seen": stamp, "notified": before.get("notified", "")}  # fmt: skip
        if incident.ended and not entry["ended_at"]:
            entry["ended_at"] = before.get("ended_at") or stamp
        what = "maintenance" if incident.kind == "maintenance" else "incident"
        if incident.active and entry["notified"] == "":
            entry["notified"] = "active"
            level: Literal["info", "warning"] = "warning" if incident.kind == "incident" else "info"
            notices.append(Notice(level, f"Render {what}: {_label(incident)}", ("platform", incident.id),
                                  {"incident": entry}))  # fmt: skip
        elif incident.ended and entry["notified"] == "active":
            entry["notified"] = "ended"
            notices.append(Notice("info", f"Render {what} over: {_label(incident)}", ("platform", incident.id, "ended"),
                                  {"incident": entry}, resolves=("platform", incident.id)))  # fmt: skip
        elif incident.ended and entry["notified"] == "":
            entry["notified"] = "ended"  # over before any run saw it going on: the review lists it, no notice now
        memory[incident.id] = entry
    if feed.lists_every_active:
        for key, entry in memory.items():
            if key not in listed and entry.get("notified") == "active":
                entry.update(notified="ended", status="resolved", ended_at=stamp)
                what = "maintenance" if entry.get("kind") == "maintenance" else "incident"
                notices.append(Notice("info", f"Render {what} over: {entry['name']} (no longer listed as active)",
                                      ("platform", key, "ended"), {"incident": entry},
                                      resolves=("platform", key)))  # fmt: skip
    horizon = now - options.keep
    kept = {key: entry for key, entry in memory.items()
            if datetime.fromisoformat(entry.get("ended_at") or entry["last_seen"]) >= horizon}  # fmt: skip
    return kept, notices


class PlatformNoticesJob:
    """Fetch the status page, tell a human about what touches the app, remember it for the review."""

    def __init__(self, options: PlatformNoticesOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        api = Api("status page", self.options.url, timeout=self.options.timeout)
        try:
            response = api.get_bounded(self.options.url, self.options.max_bytes,
                                       headers={"Accept": "application/json, application/atom+xml, "
                                                          "application/rss+xml;q=0.9, */*;q=0.5"})  # fmt: skip
        finally:
            api.close()
        try:
            feed = parse(response.content, response.headers.get("content-type", ""), self.options.url)
        except FeedError as exc:
            return Outcome(Status.ERROR, cut(str(exc), 300), fingerprint="feed-unreadable")
        now = datetime.now(UTC)
        memory, notices = observe(dict(ctx.state.get(SEEN) or {}), feed, self.options, now)
        for notice in notices:
            ctx.notify(notice)
        ctx.state.set(SEEN, memory)
        active = [e for e in memory.values() if e["notified"] == "active"]
        upcoming = sorted((e for e in memory.values() if e["kind"] == "maintenance" and e["status"] == "scheduled"
                           and (e.get("scheduled_for") or "") >= now.isoformat()),
                          key=lambda e: e.get("scheduled_for") or "")  # fmt: skip
        incidents = [e for e in active if e["kind"] == "incident"]
        scope = ", ".join((*self.options.components, *self.options.regions)) or "any component"
        parts = [f"{len(incidents)} active incident(s) touching {scope}: " + "; ".join(e["name"] for e in incidents)
                 if incidents else f"no active incident touching {scope}"]  # fmt: skip
        maintenance = [e for e in active if e["kind"] == "maintenance"]
        if maintenance:
            parts.append("maintenance in progress: " + "; ".join(e["name"] for e in maintenance))
        if upcoming:
            parts.append(f"{len(upcoming)} maintenance(s) scheduled, next: {upcoming[0]['name']} at "
                         f"{upcoming[0]['scheduled_for']}")  # fmt: skip
        details = {"active": [e["id"] for e in active], "upcoming": [e["id"] for e in upcoming],
                   "listed": len(feed.items), "url": self.options.url}  # fmt: skip
        return Outcome(Status.WARN if incidents else Status.OK, "; ".join(parts), details, alerted=True)
