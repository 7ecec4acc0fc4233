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
from worker.vendors.atlas import Listing

PUBLIC, PRIVATE = "abcdefgh", "0f1e2d3c-private-key-4b5a69788796"
REALM = "MMS Public API"
GROUP = "/api/atlas/v2/groups/5f1a2b3c4d5e6f7a8b9c0d1e/clusters/Cluster0/backup"


@dataclass
class Atlas:
    """The cluster, backup schedule and snapshots endpoints of one cluster, behind Digest auth, paged as the
    Admin API pages (pageNum from 1, itemsPerPage 100 by default and at most 500, totalCount); a sharded
    cluster's snapshots come from `…/snapshots/shardedClusters` only, and the replica-set list is empty for it."""

    api: VendorAPI
    schedule: dict[str, Any] = field(default_factory=dict)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    cluster_type: str = "REPLICASET"
    accepts: list[str] = field(default_factory=list)
    """The Accept header of each request that got past Digest auth."""
    pages: list[dict[str, list[str]]] = field(default_factory=list)
    """The query of each request for the replica-set snapshot list."""

    def answer(self, body: Callable[[Request], Reply]) -> Callable[[Request], Reply]:
        def route(request: Request) -> Reply:
            self.accepts.append(request.headers.get("accept", ""))
            if request.method != "GET":
                return Reply(405, {"error": 405, "errorCode": "METHOD_NOT_ALLOWED"})
            return body(request)

        return digest_auth(route, PUBLIC, PRIVATE, REALM)

    def paged(self, request: Request) -> Reply:
        self.pages.append(request.query)
        number = int(request.query.get("pageNum", ["1"])[0])
        size = int(request.query.get("itemsPerPage", ["100"])[0])
        if not 1 <= size <= 500 or number < 1:
            return Reply(400, {"error": 400, "errorCode": "INVALID_PARAMETER"})
        listed = [] if self.cluster_type != "REPLICASET" else self.snapshots
        return Reply(200, {"results": listed[(number - 1) * size : number * size], "totalCount": len(listed)})

    def sharded(self, request: Request) -> Reply:
        """In the sharded shape: a snapshot per cluster, its shards' snapshots as `members` and `snapshotIds`."""
        listed = [{**{k: v for k, v in s.items() if k not in ("cloudProvider", "replicaSetName")},
                   "members": [{"cloudProvider": "AWS", "id": f"{s['id']}-{n}", "replicaSetName": f"shard-{n}"}
                               for n in range(2)], "snapshotIds": [f"{s['id']}-{n}" for n in range(2)]}
                  for s in self.snapshots] if self.cluster_type != "REPLICASET" else []  # fmt: skip
        return Reply(200, {"results": listed, "totalCount": len(listed)})

    @property
    def url(self) -> str:
        return f"{self.api.url}/api/atlas/v2"


@pytest.fixture
def atlas(vendor: VendorAPI) -> Atlas:
    server = Atlas(vendor)
    cluster = GROUP.removesuffix("/backup")
    vendor.routes[cluster] = server.answer(lambda r: Reply(200, {"name": "Cluster0", "clusterType": server.cluster_type,
                                                                "backupEnabled": True}))  # fmt: skip
    vendor.routes[f"{GROUP}/schedule"] = server.answer(lambda r: Reply(200, server.schedule))
    vendor.routes[f"{GROUP}/snapshots"] = server.answer(server.paged)
    vendor.routes[f"{GROUP}/snapshots/shardedClusters"] = server.answer(server.sharded)
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
    atlas.snapshots = [snapshot(29), snapshot(5), snapshot(0.1, "inProgress")]
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=atlas_env)
    out = json.loads(result.stdout)
    assert (result.code, out["status"]) == (0, "ok"), out
    assert out["summary"].startswith("Cluster0: daily, hourly, weekly backups; newest snapshot 5h")
    assert atlas.accepts == ["application/vnd.atlas.2024-08-05+json", "application/vnd.atlas.2024-08-05+json",
                             "application/vnd.atlas.2023-01-01+json"]  # fmt: skip
    assert PRIVATE not in result.stdout + result.stderr


def test_stale_snapshot_and_weekly_only_policy_fail(tmp_path: Path, atlas: Atlas, atlas_env: dict[str, str]) -> None:
    """Only a weekly policy item and a 3-day-old newest snapshot: FAIL naming both problems."""
    atlas.schedule = policy("weekly")
    atlas.snapshots = [snapshot(72), snapshot(1, "failed")]
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
    outcome = judge("c", policy("daily"), Listing([], 0, complete=True), datetime.now(UTC), timedelta(hours=26))
    assert (outcome.status, outcome.summary) == (Status.FAIL, "c: no completed snapshot")


def test_a_sharded_clusters_snapshots_come_from_its_own_endpoint(tmp_path: Path, atlas: Atlas,
                                                                 atlas_env: dict[str, str]) -> None:  # fmt: skip
    """A SHARDED cluster (its clusterType says so) is judged by `…/snapshots/shardedClusters`, where its snapshots
    are: the replica-set endpoint lists none for it, which read "no completed snapshot"."""
    atlas.schedule, atlas.cluster_type = policy("daily"), "SHARDED"
    atlas.snapshots = [snapshot(3)]
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=atlas_env)
    out = json.loads(result.stdout)
    assert (result.code, out["details"]["cluster_type"]) == (0, "SHARDED"), out
    assert out["summary"].startswith("Cluster0: daily backups; newest snapshot 3h")
    assert atlas.pages == []


def test_every_page_of_snapshots_is_read(tmp_path: Path, atlas: Atlas, atlas_env: dict[str, str]) -> None:
    """1,203 snapshots, the newest on the last page (Atlas promises no order): all three pages of 500 are read,
    and the newest is found there."""
    atlas.schedule = policy("daily")
    atlas.snapshots = [snapshot(100 + n) for n in range(1202)] + [snapshot(2)]
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=atlas_env)
    out = json.loads(result.stdout)
    assert result.code == 0, out
    assert [q["pageNum"] for q in atlas.pages] == [["1"], ["2"], ["3"]]
    assert {q["itemsPerPage"][0] for q in atlas.pages} == {"500"}
    assert out["details"]["snapshots"] == 1203


def test_a_list_past_the_page_limit_is_not_judged_as_if_whole() -> None:
    """Past the page limit, stale or missing snapshots among those read are a WARN naming how many were read,
    never "no completed snapshot"."""
    partial = Listing([snapshot(100)], 20_000, complete=False)
    outcome = judge("c", policy("daily"), partial, datetime.now(UTC), timedelta(hours=26))
    assert outcome.status is Status.WARN
    assert "read 1 of 20000 snapshots" in outcome.summary
    assert outcome.details["snapshots_read"] == "1 of 20000"
