"""`atlas_backup`: check that MongoDB Atlas backs the cluster up daily, and did so recently.

FAIL means the cluster's cloud backup policy has no daily (or more frequent) item, or the
newest completed snapshot is older than `max_age` (or there is none).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx

from worker.job import JobContext, JobOptions, Outcome, Status, TransientError
from worker.schedule import Duration
from worker.timespec import format_duration

ATLAS_API = "https://cloud.mongodb.com/api/atlas/v2"
_FREQUENT = ("hourly", "daily")


class AtlasBackupOptions(JobOptions):
    """Which cluster to check, and how old its newest snapshot may be."""

    group_id: str
    cluster: str
    max_age: Duration = timedelta(hours=26)
    api_url: str = ATLAS_API
    auth: Literal["digest", "service_account"] = "digest"
    """digest: ATLAS_PUBLIC_KEY / ATLAS_PRIVATE_KEY; service_account: ATLAS_CLIENT_ID / ATLAS_CLIENT_SECRET."""
    api_timeout: Duration = timedelta(seconds=30)


class AtlasError(Exception):
    """Atlas refused the request; the message says which credentials or call."""


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise AtlasError(f"{name} is not set")
    return value


class AtlasBackupJob:
    """Read the backup schedule and snapshots of one cluster through the Atlas Admin API v2."""

    def __init__(self, options: AtlasBackupOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        opts = self.options
        with self.client() as client:
            base = f"/groups/{opts.group_id}/clusters/{opts.cluster}/backup"
            schedule = self.get(client, f"{base}/schedule", "2024-08-05")
            snapshots = self.get(client, f"{base}/snapshots", "2023-01-01")
        return judge(opts.cluster, schedule, snapshots, datetime.now(UTC), opts.max_age)

    def client(self) -> httpx.Client:
        opts = self.options
        auth: httpx.Auth
        if opts.auth == "digest":
            auth = httpx.DigestAuth(_env("ATLAS_PUBLIC_KEY"), _env("ATLAS_PRIVATE_KEY"))
        else:
            token = self._token()
            auth = _Bearer(token)
        return httpx.Client(base_url=opts.api_url.rstrip("/"), auth=auth, timeout=opts.api_timeout.total_seconds(),
                            trust_env=False)  # fmt: skip

    def _token(self) -> str:
        root = httpx.URL(self.options.api_url).copy_with(path="/api/oauth/token")
        response = httpx.post(root, auth=(_env("ATLAS_CLIENT_ID"), _env("ATLAS_CLIENT_SECRET")),
                              data={"grant_type": "client_credentials"}, timeout=30, trust_env=False)  # fmt: skip
        if response.status_code in (400, 401, 403):
            raise AtlasError(f"Atlas service account rejected (HTTP {response.status_code})")
        response.raise_for_status()
        return str(response.json()["access_token"])

    def get(self, client: httpx.Client, path: str, version: str) -> Any:
        try:
            response = client.get(path, headers={"Accept": f"application/vnd.atlas.{version}+json"})
        except httpx.TimeoutException:
            raise TransientError(
                f"Atlas API {path}: timed out after {format_duration(self.options.api_timeout)}"
            ) from None
        except httpx.TransportError as exc:
            raise TransientError(f"Atlas API {self.options.api_url} unreachable: {exc}") from None
        if response.status_code in (401, 403):
            raise AtlasError(f"Atlas API key rejected by {self.options.api_url} (HTTP {response.status_code})")
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"Atlas API {path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise AtlasError(f"Atlas API {path}: HTTP {response.status_code}: {response.text[:200]}")
        return response.json()


class _Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def judge(cluster: str, schedule: Any, snapshots: Any, now: datetime, max_age: timedelta) -> Outcome:
    """The verdict from the schedule and snapshot answers. Pure."""
    items = [item for policy in schedule.get("policies", []) for item in policy.get("policyItems", [])]
    frequencies = sorted({item.get("frequencyType", "?") for item in items})
    completed = [s for s in snapshots.get("results", []) if s.get("status") == "completed"]
    newest = max((datetime.fromisoformat(s["createdAt"].replace("Z", "+00:00")) for s in completed), default=None)
    details = {"frequencies": frequencies, "snapshots": len(snapshots.get("results", [])),
               "completed": len(completed), "newest_completed": newest and newest.isoformat()}  # fmt: skip
    problems = []
    if not any(f in _FREQUENT for f in frequencies):
        problems.append(f"no daily backup in the policy (has: {', '.join(frequencies) or 'nothing'})")
    if newest is None:
        problems.append("no completed snapshot")
    elif now - newest > max_age:
        problems.append(f"newest completed snapshot is {_age(now - newest)} old "
                        f"(max {format_duration(max_age)})")  # fmt: skip
    if problems:
        return Outcome(Status.FAIL, f"{cluster}: " + "; ".join(problems), details)
    age = _age(now - newest) if newest else "?"
    return Outcome(Status.OK, f"{cluster}: {', '.join(frequencies)} backups; newest snapshot {age} old", details)


def _age(delta: timedelta) -> str:
    """An age to the minute: seconds would only make messages differ from run to run."""
    return format_duration(timedelta(minutes=round(delta.total_seconds() / 60)))
