"""Reading vendors' web APIs for the reviews: Sentry's, and GitHub's for the docs review.

Each call either returns data or raises `SourceError` with a reason an operator can act on
("token rejected (HTTP 401)", "HTTP 500", "timed out after 20s"). The review turns that into
a named gap in the report; it never fails the review.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import httpx

from worker.timespec import format_duration

#: Sentry's web API pages with a Link header: `<url>; rel="next"; results="true"; cursor="…"`.
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next";\s*results="true"')


class SourceError(Exception):
    """A source could not be read; the message is the reason, without the URL's credentials."""


def fetch(
    client: httpx.Client, url: str, params: Mapping[str, Any] | None, timeout: timedelta,
    headers: Mapping[str, str] | None = None, *, allow: tuple[int, ...] = (),
) -> httpx.Response:  # fmt: skip
    """GET: a named reason for refused tokens, server errors and timeouts; `allow` lists statuses to return."""
    try:
        response = client.get(url, params=params, headers=headers)
    except httpx.TimeoutException:
        raise SourceError(f"timed out after {format_duration(timeout)}") from None
    except httpx.TransportError as exc:
        raise SourceError(f"unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code in allow:
        return response
    if response.status_code in (401, 403):
        raise SourceError(f"token rejected (HTTP {response.status_code})")
    if response.status_code >= 400:
        raise SourceError(f"HTTP {response.status_code} from {httpx.URL(url).path}")
    return response


def get_json(client: httpx.Client, url: str, params: Mapping[str, Any] | None, timeout: timedelta) -> httpx.Response:
    """GET and check as `fetch` does, and that the answer is JSON."""
    response = fetch(client, url, params, timeout)
    try:
        response.json()
    except ValueError:
        raise SourceError(f"answer from {httpx.URL(url).path} is not JSON") from None
    return response


def _client(base_url: str, token: str, timeout: timedelta) -> httpx.Client:
    return httpx.Client(
        base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=timeout.total_seconds(), trust_env=False,
    )  # fmt: skip


class SentryAPI:
    """Issues and slow transactions of one organization (reference §3: the org-level endpoints)."""

    def __init__(self, api_url: str, org: str, token: str, projects: Sequence[str], timeout: timedelta) -> None:
        self.org, self.projects, self.timeout = org, projects, timeout
        self._client = _client(api_url, token, timeout)

    def close(self) -> None:
        self._client.close()

    def _pages(self, path: str, params: dict[str, Any], max_pages: int) -> Iterator[Any]:
        url: str | None = path
        query: dict[str, Any] | None = {**params, "project": list(self.projects)} if self.projects else params
        for _ in range(max_pages):
            if url is None:
                return
            response = get_json(self._client, url, query, self.timeout)
            yield response.json()
            found = _NEXT.search(response.headers.get("Link", ""))
            url, query = (found.group(1), None) if found else (None, None)

    def issues(
        self, query: str, stats_period: str, *, sort: str = "date", limit: int = 100, max_pages: int = 5
    ) -> list[Any]:
        """Issues matching a search, following the Link cursor up to `max_pages` pages."""
        params = {"statsPeriod": stats_period, "query": query, "sort": sort, "limit": limit}
        found: list[Any] = []
        for page in self._pages(f"/api/0/organizations/{self.org}/issues/", params, max_pages):
            found.extend(page)
        return found

    def slow_transactions(self, stats_period: str, limit: int) -> list[Any]:
        """Transactions by p95 duration, slowest first, from the spans dataset."""
        params = {
            "dataset": "spans", "query": "is_transaction:true",
            "field": ["transaction", "p95(span.duration)", "count()"], "sort": "-p95(span.duration)",
            "statsPeriod": stats_period, "per_page": limit,
        }  # fmt: skip
        page = next(self._pages(f"/api/0/organizations/{self.org}/events/", params, 1))
        return list(page.get("data", [])) if isinstance(page, dict) else []
