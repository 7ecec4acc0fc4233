"""`atlas_backup` against a local server that really does HTTP Digest and answers in Atlas's shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs.backup.atlas import judge
from tests.conftest import Reply, Request, VendorAPI, digest_auth, opskeeper, write
from worker.job import Status

PUBLIC, PRIVATE = "abcdefgh", "0f1e2d3c-private-key-4b5a69788796"
REALM = "MMS Public API"
GROUP = "/api/atlas/v2/groups/5f1a2b3c4d5e6f7a8b9c0d1e/clusters/Cluster0/backup"


@dataclass
class Atlas:
    """The backup schedule and snapshots endpoints of one cluster, behind Digest auth."""

    api: VendorAPI
    schedule: dict[str, Any] = field(default_factory=dict)
    snapshots: dict[str, Any] = field(default_factory=lambda: {"results": []})
    accepts: list[str] = field(default_factory=list)
    """The Accept header of each request that got past Digest auth."""

    def answer(self, body: Callable[[], dict[str, Any]]) -> Callable[[Request], Reply]:
        def route(request: Request) -> Reply:
            self.accepts.append(request.headers.get("accept", ""))
            return Reply(200, body())

        return digest_auth(route, PUBLIC, PRIVATE, REALM)

    @property
    def url(self) -> str:
        return f"{self.api.url}/api/atlas/v2"


@pytest.fixture
def atlas(vendor: VendorAPI) -> Atlas:
    server = Atlas(vendor)
    vendor.routes[f"{GROUP}/schedule"] = server.answer(lambda: server.schedule)
    vendor.routes[f"{GROUP}/snapshots"] = server.answer(lambda: server.snapshots)
    return server


def policy(*frequencies: str) -> dict[str, Any]:
    """A backup schedule answer in the Admin API's shape."""
    return {"clusterName": "Cluster0", "referenceHourOfDay": 3, "policies": [{"id": "p1", "policyItems": [
        {"id": f"i{n}", "frequencyInterval": 1, "frequencyType": f, "retentionUnit": "days", "retentionValue": 7}
        for n, f in enumerate(frequencies)]}]}  # fmt: skip


def snapshot(hours_ago: float, status: str = "completed") -> dict[str, Any]:
    created = (datetime.now(UTC) - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"id": f"snap-{hours_ago}", "createdAt": created, "status": status, "snapshotType": "scheduled",
            "cloudProvider": "AWS", "replicaSetName": "Cluster0-shard-0"}  # fmt: skip


def config(tmp_path: Path, atlas: Atlas) -> Path:
    return write(
        tmp_path / "jobs.yaml",
        f"""\
jobs:
  - id: atlas-backups
    kind: atlas_backup
    schedule: "@daily"
    options: {{group_id: 5f1a2b3c4d5e6f7a8b9c0d1e, cluster: Cluster0, api_url: "{atlas.url}"}}
""",
    )


@pytest.fixture
def atlas_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "ATLAS_PUBLIC_KEY": PUBLIC, "ATLAS_PRIVATE_KEY": PRIVATE}


def test_daily_policy_and_recent_snapshot_is_ok(tmp_path: Path, atlas: Atlas, atlas_env: dict[str, str]) -> None:
    """Through real Digest auth: a daily policy and a 5-hour-old snapshot is OK, with versioned Accept headers."""
    atlas.schedule = policy("hourly", "daily", "weekly")
    atlas.snapshots = {"results": [snapshot(29), snapshot(5), snapshot(0.1, "inProgress")], "totalCount": 3}
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=atlas_env)
    out = json.loads(result.stdout)
    assert (result.code, out["status"]) == (0, "ok"), out
    assert out["summary"].startswith("Cluster0: daily, hourly, weekly backups; newest snapshot 5h")
    assert atlas.accepts == ["application/vnd.atlas.2024-08-05+json", "application/vnd.atlas.2023-01-01+json"]
    assert PRIVATE not in result.stdout + result.stderr


def test_stale_snapshot_and_weekly_only_policy_fail(tmp_path: Path, atlas: Atlas, atlas_env: dict[str, str]) -> None:
    """Only a weekly policy item and a 3-day-old newest snapshot: FAIL naming both problems."""
    atlas.schedule = policy("weekly")
    atlas.snapshots = {"results": [snapshot(72), snapshot(1, "failed")]}
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=atlas_env)
    out = json.loads(result.stdout)
    assert result.code == 2
    assert out["summary"] == ("Cluster0: no daily backup in the policy (has: weekly); "
                              "newest completed snapshot is 3d old (max 1d2h)")  # fmt: skip


def test_wrong_key_is_a_clear_error(tmp_path: Path, atlas: Atlas, env: dict[str, str]) -> None:
    """A private key the server does not accept: error naming the Atlas API, no key in the output."""
    bad = {**env, "ATLAS_PUBLIC_KEY": PUBLIC, "ATLAS_PRIVATE_KEY": "not-the-right-private-key"}
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=bad)
    assert result.code == 3
    assert json.loads(result.stdout)["summary"] == (
        f"RejectedError: Atlas API: GET {atlas.api.url}{GROUP}/schedule: "
        "ATLAS_PUBLIC_KEY / ATLAS_PRIVATE_KEY rejected (HTTP 401)"
    )
    assert "not-the-right-private-key" not in result.stdout + result.stderr


def test_judge_without_snapshots() -> None:
    """No snapshot at all is a failure even with a daily policy."""
    outcome = judge("c", policy("daily"), {"results": []}, datetime.now(UTC), timedelta(hours=26))
    assert (outcome.status, outcome.summary) == (Status.FAIL, "c: no completed snapshot")
