"""The weekly review's outside sources: Sentry's issues and slow transactions, Render's CPU and memory.

Each section raises SourceError when its vendor cannot be read; the report (`weekly.py`) names
that as a gap and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field

from jobs.review.sources import SourceError
from worker.http import HttpError, RetryPolicy
from worker.job import JobOptions
from worker.vendors.render import RENDER_API, RenderAPI
from worker.vendors.sentry_api import SENTRY_API, SentryAPI

#: Render instance types: (CPU cores, memory MB), as Render's pricing page lists them.
RENDER_PLANS: Mapping[str, tuple[float, int]] = {
    "free": (0.1, 512), "starter": (0.5, 512), "standard": (1, 2048), "pro": (2, 4096),
    "pro_plus": (4, 8192), "pro_max": (4, 16384), "pro_ultra": (8, 32768),
}  # fmt: skip


class SentrySource(JobOptions):
    """Which Sentry organization (and projects) to read; the token needs `event:read` (issues) and `org:read`
    (the slowest transactions, from the events endpoint)."""

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
        new_cut = not api.complete
        regressed = api.issues("is:regressed", period)
        regressed_cut = not api.complete
        top = api.issues("is:unresolved", period, sort="freq", limit=source.top, max_pages=1)  # the top N only
        slow = api.slow_transactions(period, source.top)
    except HttpError as exc:
        raise SourceError(str(exc)) from None
    finally:
        api.close()
    # A list cut at its page limit says so: "5 new issues" must not read as all of them.
    partial = [f"{what}: the first {count} read (the page limit); more were there"
               for what, count, cut in (("new issues", len(new), new_cut), ("regressions", len(regressed),
                                                                               regressed_cut)) if cut]  # fmt: skip
    return {
        "new_issues": [_issue(i) for i in new],
        "regressions": [_issue(i) for i in regressed],
        **({"partial": partial} if partial else {}),
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


def render_services(render: RenderSource | None, jobs: Mapping[str, Any]) -> list[RenderService]:
    """The configured services, or those of the schedule's deploys jobs (on the starter plan)."""
    if render is None:
        return []
    if render.services:
        return list(render.services)
    return [RenderService(name=s.name, service_id=s.service_id) for spec in jobs.values() if spec.kind == "deploys"
            for s in spec.options.services]  # fmt: skip
