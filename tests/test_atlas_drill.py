"""`restore_drill` of Atlas's own backups: against an Atlas stand-in built from its published description (the
restore job's request and answers are checked against tests/fixtures/contracts/atlas.json), which restores a
snapshot into a second real MongoDB-compatible server standing in for the scratch cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Reply, Request, VendorAPI, digest_auth, opskeeper, write

PUBLIC, PRIVATE = "abcdefgh", "0f1e2d3c-private-key-4b5a69788796"
CLUSTERS = "/api/atlas/v2/groups/5f1a2b3c4d5e6f7a8b9c0d1e/clusters"


@dataclass
class Cluster:
    """A MongoDB-compatible server (SecantusDB) standing in for one Atlas cluster."""

    uri: str

    def client(self) -> Any:
        from pymongo import MongoClient

        return MongoClient(self.uri)

    def contents(self) -> dict[str, dict[str, Any]]:
        """db -> collection -> (documents, index specs), as a snapshot would hold them."""
        with self.client() as client:
            return {db: {name: {"documents": list(client[db][name].find({}, sort=[("_id", 1)])),
                                "indexes": [i for i in client[db][name].list_indexes() if i["name"] != "_id_"]}
                         for name in client[db].list_collection_names()}
                    for db in client.list_database_names() if db not in ("admin", "config", "local")}  # fmt: skip

    def replace_with(self, contents: dict[str, dict[str, Any]]) -> None:
        """What an automated restore does to its target: everything replaced by the snapshot's data."""
        with self.client() as client:
            for db in client.list_database_names():
                if db not in ("admin", "config", "local"):
                    client.drop_database(db)
            for db, collections in contents.items():
                for name, held in collections.items():
                    if held["documents"]:
                        client[db][name].insert_many([dict(d) for d in held["documents"]])
                    for index in held["indexes"]:
                        client[db][name].create_index(list(index["key"].items()), name=index["name"])


@dataclass
class AtlasRestores:
    """The cluster, snapshot and restore job endpoints of one source cluster (Digest auth, as Atlas does)."""

    api: VendorAPI
    source: Cluster
    scratch: Cluster
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What each snapshot holds, by id."""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcome: str = "finished"
    """finished (after `polls` reads), failed, or never."""
    polls: int = 2
    asked: list[dict[str, Any]] = field(default_factory=list)

    def take_snapshot(self, hours_ago: float = 3) -> str:
        snap = f"snap{len(self.snapshots):021d}"  # 24 characters, as Atlas's ids
        created = (datetime.now(UTC) - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.snapshots.append({"id": snap, "createdAt": created, "status": "completed", "snapshotType": "scheduled"})
        self.held[snap] = self.source.contents()
        return snap

    def route(self, request: Request) -> Reply:
        path = request.path.removeprefix(CLUSTERS)
        if path == "/Cluster0":
            return Reply(200, {"name": "Cluster0", "clusterType": "REPLICASET", "backupEnabled": True})
        if path == "/Cluster0/backup/snapshots":
            return Reply(200, {"results": self.snapshots, "totalCount": len(self.snapshots)})
        if path == "/Cluster0/backup/restoreJobs" and request.method == "POST":
            body = json.loads(request.body)
            self.asked.append(body)
            if body.get("deliveryType") != "automated" or body.get("snapshotId") not in self.held:
                return Reply(400, {"error": 400, "errorCode": "INVALID_PARAMETER"})
            if body.get("targetClusterName") != "drill-scratch":
                return Reply(404, {"error": 404, "errorCode": "CLUSTER_NOT_FOUND"})
            job = {"id": f"job{len(self.jobs):021d}", "snapshotId": body["snapshotId"], "deliveryType": "automated",
                   "targetClusterName": body["targetClusterName"], "targetGroupId": body["targetGroupId"],
                   "cancelled": False, "expired": False, "failed": False, "polls": 0}  # fmt: skip
            self.jobs[job["id"]] = job
            self.api.routes[f"{CLUSTERS}/Cluster0/backup/restoreJobs/{job['id']}"] = digest_auth(
                self.route, PUBLIC, PRIVATE, "MMS Public API"
            )  # each job has a path of its own
            return Reply(200, self._public(job))
        if path.startswith("/Cluster0/backup/restoreJobs/") and request.method == "GET":
            job = self.jobs[path.rsplit("/", 1)[1]]
            job["polls"] += 1
            if self.outcome == "failed":
                job["failed"] = True
            elif self.outcome == "finished" and job["polls"] >= self.polls and "finishedAt" not in job:
                self.scratch.replace_with(self.held[job["snapshotId"]])
                job["finishedAt"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return Reply(200, self._public(job))
        return Reply(404, {"error": 404, "errorCode": "RESOURCE_NOT_FOUND"})

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if k != "polls"}


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[tuple[Cluster, Cluster]]:
    from secantus import SecantusDBServer

    with SecantusDBServer(storage_path=str(tmp_path / "source")) as source, \
            SecantusDBServer(storage_path=str(tmp_path / "scratch")) as scratch:  # fmt: skip
        yield Cluster(source.uri), Cluster(scratch.uri)


@pytest.fixture
def atlas(vendor: VendorAPI, clusters: tuple[Cluster, Cluster]) -> AtlasRestores:
    source, scratch = clusters
    stand_in = AtlasRestores(vendor, source, scratch)
    for path in ("/Cluster0", "/Cluster0/backup/snapshots", "/Cluster0/backup/restoreJobs"):
        vendor.routes[CLUSTERS + path] = digest_auth(stand_in.route, PUBLIC, PRIVATE, "MMS Public API")
    with source.client() as client:
        client.shop.users.insert_many([{"_id": n, "email": f"u{n}@shop.test"} for n in range(120)])
        client.shop.users.create_index("email", name="email_1", unique=True)
        client.shop.orders.insert_many([{"_id": n, "user": n % 120, "total": n * 3} for n in range(80)])
    return stand_in


def config(tmp_path: Path, atlas: AtlasRestores, *, timeout: str = "1m", **extra: Any) -> Path:
    options = {"group_id": "5f1a2b3c4d5e6f7a8b9c0d1e", "cluster": "Cluster0", "target_cluster": "drill-scratch",
               "target_uri": atlas.scratch.uri, "source_uri": atlas.source.uri,
               "api_url": f"{atlas.api.url}/api/atlas/v2", "poll_every": "20ms", **extra}  # fmt: skip
    return write(tmp_path / "jobs.yaml", json.dumps({"jobs": [{
        "id": "atlas-drill", "kind": "restore_drill", "schedule": "@weekly", "timeout": timeout,
        "options": {"atlas": options}}]}))  # fmt: skip


def drill(tmp_path: Path, atlas: AtlasRestores, env: dict[str, str], **extra: Any) -> tuple[int, dict[str, Any]]:
    keys = {**env, "ATLAS_PUBLIC_KEY": PUBLIC, "ATLAS_PRIVATE_KEY": PRIVATE}
    result = opskeeper("run-now", "atlas-drill", "--config", str(config(tmp_path, atlas, **extra)), "--json", env=keys)
    assert PRIVATE not in result.stdout + result.stderr
    return result.code, json.loads(result.stdout)


def test_the_newest_snapshot_is_restored_into_the_scratch_cluster_and_read_back(
    tmp_path: Path, atlas: AtlasRestores, env: dict[str, str]
) -> None:
    """The newest completed snapshot is asked for (automated, into drill-scratch, never the source), the job is
    followed to its end, and every collection is read back with its indexes; the recovery time is recorded."""
    atlas.take_snapshot(hours_ago=30)
    with atlas.source.client() as client:
        client.shop.orders.insert_one({"_id": 999, "user": 1, "total": 1})
    newest = atlas.take_snapshot(hours_ago=2)
    with atlas.source.client() as client:
        client.shop.orders.insert_one({"_id": 1000, "user": 2, "total": 2})  # after the snapshot: a note, not a fault
    code, out = drill(tmp_path, atlas, env)
    assert (code, out["status"]) == (0, "ok"), out
    assert atlas.asked == [{"snapshotId": newest, "deliveryType": "automated", "targetClusterName": "drill-scratch",
                            "targetGroupId": "5f1a2b3c4d5e6f7a8b9c0d1e"}]  # fmt: skip
    details = out["details"]
    assert details["collections"]["shop.users"]["documents"] == 120
    assert details["collections"]["shop.users"]["indexes"] == ["_id_", "email_1"]
    assert details["collections"]["shop.orders"]["documents"] == 81
    assert details["notes"] == ["shop.orders: 81 restored, 82 in the source now"]
    assert details["recovery_s"] > 0
    assert "restored into drill-scratch and read back: 2 collections, 201 documents" in out["summary"]


def test_a_failed_restore_job_fails_the_drill(tmp_path: Path, atlas: AtlasRestores, env: dict[str, str]) -> None:
    """Atlas reporting the restore job failed is the drill's FAIL, naming the job and the snapshot."""
    snap = atlas.take_snapshot()
    atlas.outcome = "failed"
    code, out = drill(tmp_path, atlas, env)
    assert (code, out["status"]) == (2, "fail"), out
    assert out["summary"] == f"Atlas restore job job{0:021d} of snapshot {snap} failed"


def test_a_restore_longer_than_the_drill_fails_it_in_time(tmp_path: Path, atlas: AtlasRestores,
                                                          env: dict[str, str]) -> None:  # fmt: skip
    """A restore job still running when the drill's deadline comes ends the drill as a FAIL saying so."""
    atlas.take_snapshot()
    atlas.outcome = "never"
    code, out = drill_with_timeout(tmp_path, atlas, env, "6s")
    assert (code, out["status"]) == (2, "fail"), out
    assert out["summary"].startswith(f"Atlas restore job job{0:021d} did not finish within the drill's time")


def drill_with_timeout(tmp_path: Path, atlas: AtlasRestores, env: dict[str, str],
                       timeout: str) -> tuple[int, dict[str, Any]]:  # fmt: skip
    keys = {**env, "ATLAS_PUBLIC_KEY": PUBLIC, "ATLAS_PRIVATE_KEY": PRIVATE}
    path = config(tmp_path, atlas, timeout=timeout)
    result = opskeeper("run-now", "atlas-drill", "--config", str(path), "--json", env=keys)
    return result.code, json.loads(result.stdout)


def test_a_scratch_cluster_holding_data_is_refused(tmp_path: Path, atlas: AtlasRestores, env: dict[str, str]) -> None:
    """Data in the scratch cluster is never replaced unless the config says so: no restore job is asked for."""
    atlas.take_snapshot()
    with atlas.scratch.client() as client:
        client.billing.invoices.insert_one({"_id": 1})
    code, out = drill(tmp_path, atlas, env)
    assert (code, out["status"]) == (2, "fail"), out
    assert out["summary"].startswith("drill-scratch holds data (billing): a drill replaces all of it")
    assert atlas.asked == []
    code, out = drill(tmp_path, atlas, env, overwrite=True)
    assert code == 0, out


def test_a_collection_missing_from_the_restore_fails(tmp_path: Path, atlas: AtlasRestores,
                                                     env: dict[str, str]) -> None:  # fmt: skip
    """A source collection the restore does not hold (created after the snapshot, or lost) is named."""
    atlas.take_snapshot()
    with atlas.source.client() as client:
        client.shop.refunds.insert_one({"_id": 1})
        client.shop.users.create_index("email_lower", name="email_lower_1")
    code, out = drill(tmp_path, atlas, env)
    assert (code, out["status"]) == (2, "fail"), out
    assert out["details"]["problems"] == ["shop.refunds: in the source, not in the restore",
                                          "shop.users: index email_lower_1 missing from the restore"]  # fmt: skip


def test_the_source_cluster_is_never_a_target(tmp_path: Path, atlas: AtlasRestores, env: dict[str, str]) -> None:
    """`target_cluster` equal to the source is refused when the schedule is read, naming the rule."""
    path = config(tmp_path, atlas, target_cluster="Cluster0")
    result = opskeeper("validate", "--config", str(path), env=env)
    assert result.code == 78
    assert "target_cluster 'Cluster0' is the source cluster" in result.stdout + result.stderr
