"""`restore_drill` with `atlas:`: prove Atlas's own backups restore, into a scratch cluster named in the config.

The newest completed snapshot of the source cluster is restored by Atlas (`POST …/backup/restoreJobs`,
`deliveryType: automated`, `targetClusterName`, `targetGroupId`), the job is followed (`GET
…/restoreJobs/{id}`) until it finishes, fails or the drill's deadline comes, and then the scratch cluster is
read: every collection of every database, whole (its documents counted and digested as they are read, so a
collection that cannot be read back fails the drill), with its indexes. With `source_uri`, each of the
source's collections and indexes must be there too (read from its metadata: no full read of production);
counts are compared with its estimated counts and reported, not judged, as the source has moved on since the
snapshot (Atlas's API gives no way to read the source as of that time). The
time from the request to a readable restore is the drill's recovery time.

The scratch cluster is never created or deleted here, never the source cluster, and a scratch cluster that
holds data is refused unless `overwrite: true` (Atlas's automated restore replaces all of it).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from worker.job import JobContext, Outcome, Status, counted
from worker.mongodb import MongoUri, connect
from worker.schedule import Duration
from worker.timespec import format_duration
from worker.vendors.atlas import ATLAS_API, AtlasAPI, AtlasAuth

_SYSTEM = frozenset({"admin", "config", "local"})
#: Restore job fields that say it ended without a restore (getBackupRestoreJob's answer).
_ENDED_BADLY = ("failed", "cancelled", "expired")
#: What a cluster holds, read back: `db.coll` -> {documents, digest, indexes}.
Read = dict[str, dict[str, Any]]


class AtlasDrillOptions(BaseModel):
    """The source cluster whose snapshots are drilled, and the scratch cluster they are restored into."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_id: str
    cluster: str
    target_cluster: str
    """A cluster kept for drills: Atlas replaces everything in it."""
    target_uri: MongoUri
    """How to read the scratch cluster once restored (a user that can read every database)."""
    target_group_id: str | None = None
    """Default: group_id."""
    source_uri: MongoUri | None = None
    """When given, the source's collections and indexes are checked for in the restore."""
    overwrite: bool = False
    """True: restore into a scratch cluster that holds data (it is replaced)."""
    api_url: str = ATLAS_API
    auth: AtlasAuth = "digest"
    api_timeout: Duration = timedelta(seconds=30)
    poll_every: Duration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _not_the_source(self) -> AtlasDrillOptions:
        if self.target_cluster == self.cluster and (self.target_group_id or self.group_id) == self.group_id:
            raise ValueError(f"target_cluster {self.target_cluster!r} is the source cluster: a drill restores into "
                             "a scratch cluster, never over the data it proves")  # fmt: skip
        return self


def newest_completed(snapshots: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest completed snapshot (Atlas promises no order). Pure."""
    done = [s for s in snapshots if s.get("status") == "completed" and s.get("createdAt")]
    return max(done, key=lambda s: datetime.fromisoformat(str(s["createdAt"]).replace("Z", "+00:00")), default=None)


def user_databases(client: Any) -> list[str]:
    return sorted(name for name in client.list_database_names() if name not in _SYSTEM)


def read_back(client: Any) -> Read:
    """Every collection of the cluster read whole: `db.coll` -> {documents, digest, indexes}, the digest the
    order-independent one backups record (catalog.digest_batch), so no sort is asked of the server."""
    from jobs.backup.catalog import digest_batch

    found: Read = {}
    for db_name in user_databases(client):
        db = client[db_name]
        for name in sorted(db.list_collection_names()):
            if name.startswith("system."):
                continue
            digest, documents = 0, 0
            for raw in db.get_collection(name).find_raw_batches():
                digest, count = digest_batch(digest, raw)
                documents += count
            indexes = sorted(str(i["name"]) for i in db[name].list_indexes())
            found[f"{db_name}.{name}"] = {"documents": documents, "digest": f"{digest:032x}", "indexes": indexes}
    return found


def outline(client: Any) -> Read:
    """The source cluster's collections with their indexes and estimated counts: what the restore is checked
    against, read from metadata only, so a drill puts no full read on the production cluster (its documents'
    digests could not be compared anyway: the source has moved on since the snapshot)."""
    found: Read = {}
    for db_name in user_databases(client):
        db = client[db_name]
        for name in sorted(db.list_collection_names()):
            if not name.startswith("system."):
                indexes = sorted(str(i["name"]) for i in db[name].list_indexes())
                found[f"{db_name}.{name}"] = {"documents": db[name].estimated_document_count(), "indexes": indexes}
    return found


def compare(restored: Read, source: Read | None) -> tuple[list[str], list[str]]:
    """(problems, notes): a source collection or index missing from the restore is a problem; a count that
    differs is a note, as the source has changed since the snapshot. Pure."""
    if source is None:
        return [], []
    problems, notes = [], []
    for ns, want in sorted(source.items()):
        got = restored.get(ns)
        if got is None:
            problems.append(f"{ns}: in the source, not in the restore")
            continue
        missing = sorted(set(want["indexes"]) - set(got["indexes"]))
        if missing:
            problems.append(f"{ns}: index {', '.join(missing)} missing from the restore")
        if got["documents"] != want["documents"]:
            notes.append(f"{ns}: {got['documents']} restored, {want['documents']} in the source now")
    return problems, notes


def run_atlas_drill(ctx: JobContext, opts: AtlasDrillOptions, max_age: timedelta) -> Outcome:
    """The drill, end to end; never raises for what Atlas or the clusters answered (a FAIL says it)."""
    target = connect(opts.target_uri, "opskeeper-drill")
    try:
        held = user_databases(target)
        if held and not opts.overwrite:
            why = "a drill replaces all of it; set atlas.overwrite: true if it is a scratch cluster"
            return Outcome(Status.FAIL, f"{opts.target_cluster} holds data ({', '.join(held[:5])}): {why}",
                           {"databases": held})  # fmt: skip
        with AtlasAPI(opts.api_url, opts.auth, opts.api_timeout) as api:
            _, listing = api.snapshots(opts.group_id, opts.cluster)
            snapshot = newest_completed(listing.results)
            if snapshot is None:
                return Outcome(Status.FAIL, f"{opts.cluster}: no completed snapshot to drill",
                               {"snapshots": len(listing.results)})  # fmt: skip
            base = f"/groups/{opts.group_id}/clusters/{opts.cluster}/backup/restoreJobs"
            started = time.monotonic()
            job = api.post(base, "2023-01-01", {
                "snapshotId": snapshot["id"], "deliveryType": "automated", "targetClusterName": opts.target_cluster,
                "targetGroupId": opts.target_group_id or opts.group_id})  # fmt: skip
            ctx.log("drill.atlas_restore_started", restore_job=job.get("id"), snapshot=snapshot["id"])
            # Stop a second before the deadline: past it the runner ends the run as timed out, saying less.
            margin = opts.poll_every.total_seconds() + 1.0
            while not job.get("finishedAt") and not any(job.get(k) for k in _ENDED_BADLY):
                if time.monotonic() + margin >= ctx.deadline or ctx.cancel.is_set():
                    waited = format_duration(timedelta(seconds=round(time.monotonic() - started)))
                    return Outcome(Status.FAIL, f"Atlas restore job {job.get('id')} did not finish within the "
                                   f"drill's time ({waited} so far)", {"restore_job": job.get("id")})  # fmt: skip
                ctx.cancel.wait(opts.poll_every.total_seconds())
                job = api.get(f"{base}/{job['id']}", "2023-01-01")
        ended = next((k for k in _ENDED_BADLY if job.get(k)), None)
        if ended:
            return Outcome(Status.FAIL, f"Atlas restore job {job.get('id')} of snapshot {snapshot['id']} {ended}",
                           {"restore_job": job.get("id"), "snapshot": snapshot["id"]})  # fmt: skip
        restored = read_back(target)
        recovery_s = time.monotonic() - started
    finally:
        target.close()
    source = None
    if opts.source_uri:
        live = connect(opts.source_uri, "opskeeper-drill")
        try:
            source = outline(live)
        finally:
            live.close()
    problems, notes = compare(restored, source)
    created = datetime.fromisoformat(str(snapshot["createdAt"]).replace("Z", "+00:00"))
    documents = sum(c["documents"] for c in restored.values())
    details = {"snapshot": snapshot["id"], "snapshot_created_at": created.isoformat(), "restore_job": job.get("id"),
               "target_cluster": opts.target_cluster, "recovery_s": round(recovery_s, 3),
               "collections": restored, "problems": problems, "notes": notes}  # fmt: skip
    if problems:
        return Outcome(Status.FAIL, f"drill of {opts.cluster}'s snapshot {snapshot['id']} failed: {problems[0]}"
                       + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""), details)  # fmt: skip
    if not restored:
        return Outcome(Status.FAIL, f"{opts.target_cluster} holds no collection after the restore", details)
    summary = (f"{opts.cluster}'s snapshot of {created:%Y-%m-%d %H:%M} restored into {opts.target_cluster} and read "
               f"back: {counted(len(restored), 'collection')}, {counted(documents, 'document')} in "
               f"{format_duration(timedelta(seconds=round(recovery_s)))}")  # fmt: skip
    age = datetime.now(UTC) - created
    if age > max_age:
        return Outcome(Status.WARN, f"{summary}; but the snapshot is {format_duration(age)} old", details)
    return Outcome(Status.OK, summary, details)
