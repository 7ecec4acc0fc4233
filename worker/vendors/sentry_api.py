"""Sentry's web API (reference §3): the organization-level issues and spans endpoints.

Each call names the token scope Sentry's published description (getsentry/sentry-api-schema
`openapi-derefed.json`) requires of it, and a 403 says which scope the token lacks: the events
endpoint (slow transactions, a release's errors) needs `org:read`, not `event:read`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from worker.http import Api, RejectedError

SENTRY_API = "https://sentry.io"
#: Sentry pages with a Link header: `<url>; rel="next"; results="true"; cursor="…"`.
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next";\s*results="true"')


class SentryAPI:
    """Issues, releases and slow transactions of one organization."""

    def __init__(self, api_url: str, org: str, token: str, projects: Sequence[str], timeout: timedelta) -> None:
        self.org, self.projects = org, projects
        self.complete = True
        """Whether the last list read was read to its end (False: its page limit came first)."""
        self.api = Api("Sentry API", api_url, credential="SENTRY_AUTH_TOKEN", timeout=timeout,
                       headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})  # fmt: skip

    def close(self) -> None:
        """Release the connection pool."""
        self.api.close()

    def __enter__(self) -> SentryAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    @contextlib.contextmanager
    def _needs(scope: str) -> Iterator[None]:
        """A 403 inside says the token lacks `scope` (a 401 stays a rejected token)."""
        try:
            yield
        except RejectedError as exc:
            if exc.status != 403:
                raise
            cause = f"SENTRY_AUTH_TOKEN lacks the {scope} scope this call needs (HTTP 403)"
            raise RejectedError(exc.vendor, exc.method, exc.url, cause, 403) from None

    def _pages(self, path: str, params: dict[str, Any], max_pages: int, *, scoped: bool = True) -> Iterator[Any]:
        """Each page of a list, following the Link cursor; `scoped` lists take the projects as `project`."""
        url: str | None = path
        query: dict[str, Any] | None = (
            {**params, "project": list(self.projects)} if self.projects and scoped else params
        )
        self.complete = True
        for _ in range(max_pages):
            if url is None:
                return
            response = self.api.get(url, params=query)
            yield self.api.parse(response)
            found = _NEXT.search(response.headers.get("Link", ""))
            url, query = (found.group(1), None) if found else (None, None)
        self.complete = url is None  # more pages than asked for: the caller says the list is partial

    def issues(
        self, query: str, stats_period: str, *, sort: str = "date", limit: int = 100, max_pages: int = 5
    ) -> list[Any]:
        """Issues matching a search, following the Link cursor up to `max_pages` pages."""
        params = {"statsPeriod": stats_period, "query": query, "sort": sort, "limit": limit}
        found: list[Any] = []
        with self._needs("event:read"):
            for page in self._pages(f"/api/0/organizations/{self.org}/issues/", params, max_pages):
                found.extend(page)
        return found

    def teams(self, max_pages: int = 10) -> list[Any]:
        """The organization's teams (`id`, `slug`, …), every page (scope org:read)."""
        found: list[Any] = []
        with self._needs("org:read"):
            # The teams list takes no `project` (Sentry's description has none for it).
            for page in self._pages(f"/api/0/organizations/{self.org}/teams/", {}, max_pages, scoped=False):
                found.extend(page)
        return found

    def resolve_issue(self, issue_id: str) -> None:
        """Mark one issue resolved (scope event:write)."""
        with self._needs("event:write"):
            self.api.request("PUT", f"/api/0/organizations/{self.org}/issues/{issue_id}/", json={"status": "resolved"})

    def create_release(self, version: str, projects: Sequence[str], refs: Sequence[dict[str, str]] = ()) -> None:
        """Create the release, or update it if it exists (scope project:releases)."""
        body: dict[str, Any] = {"version": version, "projects": list(projects)}
        if refs:
            body["refs"] = list(refs)
        with self._needs("project:releases"):
            self.api.request("POST", f"/api/0/organizations/{self.org}/releases/", json=body)

    def create_deploy(self, version: str, environment: str, *, name: str, started: str | None,
                      finished: str | None) -> None:  # fmt: skip
        """Record a deploy of a release in an environment (scope project:releases)."""
        body = {"environment": environment, "name": name, "dateStarted": started, "dateFinished": finished}
        with self._needs("project:releases"):
            self.api.request("POST", f"/api/0/organizations/{self.org}/releases/{version}/deploys/",
                             json={k: v for k, v in body.items() if v is not None})  # fmt: skip

    def slow_transactions(self, stats_period: str, limit: int) -> list[Any]:
        """Transactions by p95 duration, slowest first, from the spans dataset (scope org:read)."""
        params = {
            "dataset": "spans", "query": "is_transaction:true",
            "field": ["transaction", "p95(span.duration)", "count()"], "sort": "-p95(span.duration)",
            "statsPeriod": stats_period, "per_page": limit,
        }  # fmt: skip
        with self._needs("org:read"):
            page = next(self._pages(f"/api/0/organizations/{self.org}/events/", params, 1))
        return list(page.get("data", [])) if isinstance(page, dict) else []

    def error_count(self, release: str, project: str, start: datetime, end: datetime) -> int:
        """Error events of one release in one project between two times (scope org:read)."""
        params = {
            "dataset": "errors", "field": ["count()"], "query": f'release:"{release}" project:{project}',
            "start": start.isoformat(), "end": end.isoformat(), "per_page": 1,
        }  # fmt: skip
        # The project goes in the query by slug: the `project` parameter takes numeric ids only.
        with self._needs("org:read"):
            page = self.api.get_json(f"/api/0/organizations/{self.org}/events/", params=params)
        rows = page.get("data", []) if isinstance(page, dict) else []
        return int(rows[0].get("count()") or 0) if rows else 0
