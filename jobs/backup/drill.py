"""`restore_drill`: prove the newest backup restores — every collection, whole.

Restores the newest complete backup of `backup_job` into scratch databases
(`opskeeper_drill_<stamp>_<run>_<db>`), compares every collection with the manifest (count,
content digest, indexes; views present), records the recovery time, marks the backup
verified, and always drops its scratch databases. Another drill's scratch databases (a second
schedule on the same server, a drill still running elsewhere) are left alone unless they are
older than this job's timeout: their run cannot still be going. FAIL names the collection and what
differed; WARN means the drill passed but the newest backup is older than `max_age`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from jobs.backup.atlas_drill import AtlasDrillOptions
from jobs.backup.catalog import VERIFIED, base_of, scan
from jobs.backup.retention import is_future
from jobs.backup.source import SCRATCH_DATABASE_PREFIX, BackupOptions
from worker.job import JobContext, JobOptions, Outcome, Status, counted
from worker.mongodb import MongoUri, check_uri, connect
from worker.reporting.progress import archive_ticks
from worker.schedule import Duration
from worker.timespec import format_duration

SCRATCH_PREFIX = SCRATCH_DATABASE_PREFIX
_MAX_DB_NAME = 63


class DrillOptions(JobOptions):
    """Whose backups to test, and where to restore them."""

    backup_job: str | None = None
    """Default: the schedule's only backup job."""
    target_uri: MongoUri | None = None
    """Default: RESTORE_DRILL_URI, else the backup's own source server."""
    max_age: Duration = timedelta(hours=26)
    point_in_time: Literal["off", "random", "latest"] = "off"
    """Drill point-in-time recovery instead: a random captured second (or the newest point) restored from the
    archive and the change_capture job's slices, and compared with the live database (pitr_drill.py)."""
    atlas: AtlasDrillOptions | None = None
    """Drill Atlas's own backups instead: its newest snapshot restored into a scratch cluster (atlas_drill.py)."""


_SCRATCH = re.compile(rf"^{SCRATCH_PREFIX}(?:(\d{{14}})_([0-9a-f]{{8}})_.*|.*_(\d{{14}}))$")
"""This version's names (stamp, run, db), and older versions' (db, stamp)."""


def scratch_name(db: str, stamp: str, run_id: str = "00000000") -> str:
    """The scratch database for `db` in the drill `run_id` started at `stamp`, within MongoDB's name limit."""
    head = f"{SCRATCH_PREFIX}{stamp}_{run_id[:8]}_"
    room = _MAX_DB_NAME - len(head)
    if len(db) > room:  # keep two long names apart: a short hash of the whole name
        db = db[: room - 7] + "_" + hashlib.blake2b(db.encode(), digest_size=3).hexdigest()
    return head + db


def drop_scratch(client: Any, run_id: str | None = None, older_than: datetime | None = None) -> list[str]:
    """Drop scratch databases: this run's (`run_id`), and any whose stamp is before `older_than`."""
    dropped = []
    for name in client.list_database_names():
        match = _SCRATCH.match(name)
        if not name.startswith(SCRATCH_PREFIX):
            continue
        stamp, run = (match.group(1) or match.group(3), match.group(2)) if match else (None, None)
        mine = run_id is not None and run == run_id[:8]
        made = _parse_stamp(stamp)
        if mine or (older_than is not None and made is not None and made < older_than):
            client.drop_database(name)
            dropped.append(name)
    return dropped


def _parse_stamp(stamp: str | None) -> datetime | None:
    try:
        return datetime.strptime(stamp or "", "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


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
        # The restore machinery (and pymongo) loads when a drill runs, not when a schedule is validated.
        from pymongo.errors import PyMongoError

        from jobs.backup.restore import RestoreError, check, restore

        if self.options.atlas is not None:
            from jobs.backup.atlas_drill import run_atlas_drill

            return run_atlas_drill(ctx, self.options.atlas, self.options.max_age)
        job_id, backup = self._backup_job(ctx)
        storage = backup.open_storage()
        listing = scan(storage, job_id)
        now = datetime.now(UTC)
        future = [e for e in listing.entries if is_future(e.created_at, now)]
        entries = [e for e in listing.entries if e not in future]
        if not entries:
            return Outcome(Status.FAIL, f"no complete backup of {job_id} to drill"
                           + (f" ({len(future)} dated in the future, not trusted)" if future else ""))  # fmt: skip
        newest = entries[0]
        # A future-dated backup (skewed clock, copied folder) would pin every drill to itself.
        warnings = [f"{e.key} is dated in the future ({e.created_at.isoformat()}); not drilled" for e in future]
        warnings += listing.problems
        uri = self.options.target_uri or os.environ.get("RESTORE_DRILL_URI") or backup.mongo_uri()
        check_uri(uri, "RESTORE_DRILL_URI" if not self.options.target_uri and os.environ.get("RESTORE_DRILL_URI")
                  else "the drill's target URI")  # fmt: skip
        client: Any = connect(uri, "opskeeper-drill")
        stamp = now.strftime("%Y%m%d%H%M%S")
        spec = ctx.jobs.get(ctx.job_id)
        # A drill lasts at most its timeout: scratch stamped longer ago than that is a crash's leftover.
        timeout = spec.timeout if spec is not None else timedelta(hours=1)
        try:
            left = drop_scratch(client, older_than=now - timeout - timedelta(minutes=5))
            if left:
                ctx.log("drill.leftovers_dropped", databases=left)
            if self.options.point_in_time != "off":
                from jobs.backup.pitr_drill import run_point_in_time_drill

                return run_point_in_time_drill(ctx, job_id, backup, client,
                                               scratch=lambda db: scratch_name(db, stamp, ctx.run_id),
                                               mode=self.options.point_in_time)  # fmt: skip
            started = time.monotonic()
            with storage.open(newest.key) as stream:
                # Scratch databases are the drill's own: no staging needed, all dropped at the end.
                ticks = archive_ticks(ctx.progress, newest.manifest, "drill") if ctx.progress is not None else None
                report = restore(stream, client, lambda db, coll: (scratch_name(db, stamp, ctx.run_id), coll),
                                 ticks, manifest=newest.manifest, staging=False)  # fmt: skip
            recovery_s = time.monotonic() - started
            check_started = time.monotonic()
            problems = check(client, report.namespaces, newest.manifest)
            verify_s = time.monotonic() - check_started
        except RestoreError as exc:
            return Outcome(Status.FAIL, f"restore of {newest.key} failed: {exc}", {"key": newest.key},
                           fingerprint=f"restore failed: {exc}")  # fmt: skip
        finally:
            # If the target is gone, the next drill drops what this one could not.
            with contextlib.suppress(PyMongoError):
                drop_scratch(client, run_id=ctx.run_id)
            client.close()
        details = {
            "key": newest.key, "backup_created_at": newest.created_at.isoformat(),
            "collections": (collections := sum(1 for n in report.namespaces if not n.skipped and n.type != "view")),
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
            f"{newest.key} restored and verified: {counted(collections, 'collection')}, "
            f"{counted(report.documents, 'document')} in {format_duration(timedelta(seconds=recovery_s))}"
        )
        age = datetime.now(UTC) - newest.created_at
        if age > self.options.max_age:
            warnings.insert(0, f"the newest backup is {format_duration(age)} old")
        if warnings:
            details["warnings"] = warnings
            return Outcome(Status.WARN, f"{summary}; but {warnings[0]}"
                           + (f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else ""), details)  # fmt: skip
        return Outcome(Status.OK, summary, details)
