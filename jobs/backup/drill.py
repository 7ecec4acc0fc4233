"""`restore_drill`: prove the newest backup restores — every collection, whole.

Restores the newest complete backup of `backup_job` into scratch databases
(`opskeeper_drill_<db>_<stamp>`), compares every collection with the manifest (count,
content digest, indexes; views present), records the recovery time, marks the backup
verified, and always drops the scratch databases. FAIL names the collection and what
differed; WARN means the drill passed but the newest backup is older than `max_age`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from jobs.backup.catalog import VERIFIED, base_of, list_backups
from jobs.backup.job import BackupOptions
from jobs.backup.restore import RestoreError, check, restore
from worker.job import JobContext, JobOptions, Outcome, Status
from worker.schedule import Duration
from worker.timespec import format_duration

SCRATCH_PREFIX = "opskeeper_drill_"
_MAX_DB_NAME = 63


class DrillOptions(JobOptions):
    """Whose backups to test, and where to restore them."""

    backup_job: str | None = None
    """Default: the schedule's only backup job."""
    target_uri: str | None = None
    """Default: RESTORE_DRILL_URI, else the backup's own source server."""
    max_age: Duration = timedelta(hours=26)


def scratch_name(db: str, stamp: str) -> str:
    """The scratch database for `db` in the drill stamped `stamp`, within MongoDB's name limit."""
    room = _MAX_DB_NAME - len(SCRATCH_PREFIX) - len(stamp) - 1
    return f"{SCRATCH_PREFIX}{db[:room]}_{stamp}"


def drop_scratch(client: Any) -> list[str]:
    """Drop every scratch database (this drill's, or one a crash left behind)."""
    dropped = [name for name in client.list_database_names() if name.startswith(SCRATCH_PREFIX)]
    for name in dropped:
        client.drop_database(name)
    return dropped


class DrillJob:
    """Restore the newest backup somewhere harmless and check it; clean up whatever happens."""

    def __init__(self, options: DrillOptions) -> None:
        self.options = options

    def _backup_job(self, ctx: JobContext) -> tuple[str, BackupOptions]:
        backups = {i: j for i, j in ctx.jobs.items() if j.kind == "backup"}
        wanted = self.options.backup_job
        if wanted is None:
            if len(backups) != 1:
                raise ValueError(f"name options.backup_job: the schedule has {len(backups)} backup jobs")
            wanted = next(iter(backups))
        if wanted not in backups:
            raise ValueError(f"backup_job {wanted!r} is not a backup job in this schedule")
        return wanted, backups[wanted].options

    def run(self, ctx: JobContext) -> Outcome:
        job_id, backup = self._backup_job(ctx)
        storage = backup.open_storage()
        entries = list_backups(storage, job_id)
        if not entries:
            return Outcome(Status.FAIL, f"no complete backup of {job_id} to drill")
        newest = entries[0]
        uri = self.options.target_uri or os.environ.get("RESTORE_DRILL_URI") or backup.mongo_uri()
        client: Any = MongoClient(uri, appname="opskeeper-drill", serverSelectionTimeoutMS=10_000)
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        try:
            left = drop_scratch(client)
            if left:
                ctx.log("drill.leftovers_dropped", databases=left)
            started = time.monotonic()
            with storage.open(newest.key) as stream:
                report = restore(stream, client, lambda db, coll: (scratch_name(db, stamp), coll))
            recovery_s = time.monotonic() - started
            check_started = time.monotonic()
            problems = check(client, report.namespaces, newest.manifest)
            if report.sha256 != newest.manifest.get("sha256"):
                problems.insert(0, f"{newest.key}: sha256 differs from the manifest (the stored object changed)")
            verify_s = time.monotonic() - check_started
        except RestoreError as exc:
            return Outcome(Status.FAIL, f"restore of {newest.key} failed: {exc}", {"key": newest.key},
                           fingerprint=f"restore failed: {exc}")  # fmt: skip
        finally:
            # If the target is gone, the next drill drops what this one could not.
            with contextlib.suppress(PyMongoError):
                drop_scratch(client)
            client.close()
        details = {
            "key": newest.key, "backup_created_at": newest.created_at.isoformat(),
            "collections": sum(1 for n in report.namespaces if not n.skipped and n.type != "view"),
            "documents": report.documents, "bytes": report.bytes, "stored_bytes": report.stored_bytes,
            "recovery_s": round(recovery_s, 3), "read_and_insert_s": round(report.read_insert_s, 3),
            "index_build_s": round(report.index_s, 3), "verification_s": round(verify_s, 3),
            "throughput_mb_s": round(report.bytes / max(report.read_insert_s, 1e-6) / 1e6, 2),
            "skipped": {n.source: n.skipped for n in report.namespaces if n.skipped},
            "problems": problems,
        }  # fmt: skip
        if problems:
            return Outcome(Status.FAIL, f"drill of {newest.key} failed: {problems[0]}"
                           + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""), details,
                           fingerprint=problems[0].split(":")[0])  # fmt: skip
        storage.put(base_of(newest.key) + VERIFIED, json.dumps({
            "verified_at": datetime.now(UTC).isoformat(), "run_id": ctx.run_id, **details,
        }, indent=2).encode())  # fmt: skip
        summary = (
            f"{newest.key} restored and verified: {details['collections']} collections, "
            f"{report.documents} documents in {format_duration(timedelta(seconds=recovery_s))}"
        )
        age = datetime.now(UTC) - newest.created_at
        if age > self.options.max_age:
            return Outcome(Status.WARN, f"{summary}; but the newest backup is {format_duration(age)} old", details)
        return Outcome(Status.OK, summary, details)
