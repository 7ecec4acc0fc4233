"""`change_capture`: follow a backup job's databases with a change stream, one stored slice per run.

Each run resumes where the last stored slice ended (the resume token and its cluster time, in the
ledger), reads every change up to a point where the stream is caught up, stores the events as one
slice in the backup job's storage (under this job's own prefix), then its manifest, and only then
moves its position in the ledger. A kill at any point therefore loses nothing: the next run reads
again from the last position, and a slice stored twice is an overlap the chain and replay absorb.

What a run covers ends at `through`, a cluster time such that every change at or before it has been
read: either a majority-committed time taken before a read of the stream that came back empty, or
the majority time taken when the run began, once an event after it arrives (so a busy database does
not keep a run going). A slice is cut only between cluster times, never inside one.

When the stream cannot go on (the history it needs is gone from the oplog, the token is refused, a
captured collection was dropped or renamed), the events before that point are stored, a gap is
recorded from the last covered time with the reason, the position is cleared so the next run starts
a new chain at the server's present time, and the run fails saying so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field

from jobs.backup.catalog import ORPHAN_AGE, scan, stamp
from jobs.backup.changes import (
    END_OF_SECOND,
    GAP_SUFFIX,
    SLICE_FORMAT,
    SLICE_MANIFEST,
    SLICE_SUFFIX,
    SliceWriter,
    Time,
    as_time,
    before,
    key_times,
    scan_changes,
    slice_base,
    time_json,
    time_text,
)
from jobs.backup.source import (
    BackupOptions,
    clock_database,
    collection_selected,
    database_selected,
    majority_time,
)
from worker.failpoints import failpoint
from worker.job import JobContext, JobOptions, Outcome, Status, counted
from worker.mongodb import connect
from worker.storage import Storage

#: Errors that mean the stream cannot resume from our position: a gap, not a retry.
#: 286 ChangeStreamHistoryLost, 280 ChangeStreamFatalError, 260 InvalidResumeToken, 136 CappedPositionLost,
#: 9 FailedToParse (a token the server cannot read).
_CANNOT_RESUME = {286, 280, 260, 136, 9}
_BREAKS_CHAIN = frozenset({"drop", "rename", "dropDatabase", "invalidate"})


class CaptureOptions(JobOptions):
    """Which backup job's databases to follow (its URI, selection and storage are used)."""

    backup: str
    post_images: bool = True
    """Turn on changeStreamPreAndPostImages for captured collections (collMod; MongoDB 6.0+), so an update
    is replayed as its whole document. Where the server or the user's role refuses, updates are replayed
    from their update descriptions instead, which is exact too but for field names that contain dots."""
    max_events: Annotated[int, Field(ge=1)] = 200_000
    """At most this many events per slice (a backlog is read over several runs)."""


@dataclass
class _Read:
    through: Time
    token: Any
    gap: str = ""


@dataclass
class _Run:
    """One run's connections and bounds."""

    ctx: JobContext
    client: Any
    backup: BackupOptions
    storage: Storage
    clock_db: str
    after: Time
    """Everything at or before this is in earlier slices (or before the chain began)."""
    stop: Time
    """The majority time when the run began: an event after it ends the run."""

    def now(self) -> Time:
        return as_time(majority_time(self.client, self.clock_db))


class ChangeCaptureJob:
    """One slice of changes per run, after the last one stored."""

    def __init__(self, options: CaptureOptions) -> None:
        self.options = options

    def _backup(self, ctx: JobContext) -> BackupOptions:
        spec = ctx.jobs.get(self.options.backup)
        if spec is None or spec.kind != "backup":
            raise ValueError(f"options.backup {self.options.backup!r} is not a backup job in this schedule")
        options: BackupOptions = spec.options
        return options

    def run(self, ctx: JobContext) -> Outcome:
        from bson.raw_bson import RawBSONDocument

        backup = self._backup(ctx)
        # Raw documents: events are stored as the server sent them, byte for byte, never decoded and re-encoded.
        client: Any = connect(backup.mongo_uri(), "opskeeper-capture", readPreference=backup.read_preference,
                              document_class=RawBSONDocument)  # fmt: skip
        storage = backup.open_storage()
        try:
            images = self._post_images(client, backup) if self.options.post_images else {}
            position = ctx.state.get("position")
            stop = majority_time(client, clock_database(backup))
            if stop is None:
                raise ValueError("the server keeps no cluster time (a standalone mongod): change streams need a "
                                 "replica set or a sharded cluster")  # fmt: skip
            fresh = position is None
            after = before(as_time(stop)) if fresh else as_time(position["through"])
            for abandoned in storage.abort_abandoned(f"{ctx.job_id}/"):
                ctx.log("capture.abandoned_upload_removed", key=abandoned)
            started = time.monotonic()
            run = _Run(ctx, client, backup, storage, clock_database(backup), after, as_time(stop))
            writer, read, key = self._capture(run, None if fresh else position.get("token"))
        finally:
            client.close()
        details: dict[str, Any] = {
            "after": time_json(after), "through": time_json(read.through), "events": writer.events,
            "raw_bytes": writer.raw_bytes, "stored_bytes": writer.stored_bytes, "key": key,
            "seconds": round(time.monotonic() - started, 3), "new_chain": fresh,
            "updates_replayed_from": images,
        }  # fmt: skip
        if read.gap:
            self._gap(ctx, storage, read.through, read.gap)
            return Outcome(Status.FAIL, f"capture stopped: {read.gap}; the chain is broken after "
                           f"{time_text(read.through)}; the next run starts a new one, which the next backup joins",
                           details, fingerprint=read.gap.split(":")[0])  # fmt: skip
        self._prune(ctx, storage)
        text = (f"captured {counted(writer.events, 'change')} ({writer.stored_bytes / 1e6:.2f} MB) through "
                f"{time_text(read.through)}" + ("; a new chain starts here" if fresh else ""))  # fmt: skip
        return Outcome(Status.OK, text, details)

    def _capture(self, run: _Run, token: Any) -> tuple[SliceWriter, _Read, str]:
        from bson.timestamp import Timestamp
        from pymongo.errors import OperationFailure

        upload: Any = None
        writer = SliceWriter(_Null())
        read = _Read(run.after, token)
        opened: dict[str, Any] = {"full_document": "whenAvailable", "show_expanded_events": True,
                                  "max_await_time_ms": 200, "batch_size": 1000}  # fmt: skip
        if token is not None:
            opened["resume_after"] = token
        else:  # a new chain, or one whose last run saw no event: from just after what is covered
            seconds, increment = run.after
            opened["start_at_operation_time"] = (Timestamp(seconds, increment + 1) if increment < END_OF_SECOND
                                                 else Timestamp(seconds + 1, 0))  # fmt: skip
        try:
            with watch(run.client, run.backup, opened) as stream:
                first = stream.try_next()
                upload = run.storage.upload(_data_key(run.ctx.job_id, run.after, run.ctx.run_id))
                writer = SliceWriter(upload)
                self._read(run, stream, first, writer, read)
        except OperationFailure as exc:
            if upload is not None:
                upload.abort()
                upload, writer = None, SliceWriter(_Null())
            if exc.code not in _CANNOT_RESUME:
                raise
            # Nothing read in this run is kept: the gap starts where the last stored slice ended.
            read.through = run.after
            name = (exc.details or {}).get("codeName", f"code {exc.code}")
            read.gap = f"cannot resume after {time_text(run.after)}: {name} ({str(exc).split(', full error')[0]})"
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        key = self._store(run, upload, writer, read)
        return writer, read, key

    def _read(self, run: _Run, stream: Any, event: Any, writer: SliceWriter, read: _Read) -> None:
        from bson import decode

        last: Time | None = None
        taken: dict[tuple[str, str], bool] = {}  # the selection's answer per namespace: fnmatch once, not per event
        newest_id: Any = None  # the last event's token, decoded once when the run ends

        def selected(db: str, coll: str) -> bool:
            if (db, coll) not in taken:
                taken[db, coll] = (
                    collection_selected(run.backup, db, coll) if coll else database_selected(run.backup, db)
                )
            return taken[db, coll]

        try:
            while True:
                if run.ctx.cancel.is_set():
                    raise InterruptedError("stopped while reading changes")
                if event is None:
                    mark = run.now()
                    event = stream.try_next()
                    if event is None:  # caught up: everything at or before `mark` has been read
                        read.through = max(mark, last or read.through)
                        newest_id = stream.resume_token
                        return
                at = as_time(event["clusterTime"])
                if at != last and (at > run.stop or writer.events >= self.options.max_events):
                    # Cut between cluster times: all of `last`'s events are in, and nothing after the stop mark.
                    read.through = max(run.stop, last or read.through) if at > run.stop else (last or read.through)
                    return
                op = str(event["operationType"])
                ns = event.get("ns") or {}
                db, coll = str(ns.get("db", "")), str(ns.get("coll", "") or "")
                if op in _BREAKS_CHAIN:
                    to = event.get("to") or {}
                    if selected(db, coll) or (to and selected(str(to.get("db", "")), str(to.get("coll", "")))):
                        read.through = max(before(at), last or read.through)
                        what = {"rename": "renamed", "invalidate": "invalidated"}.get(op, "dropped")
                        read.gap = f"{db}.{coll if coll else '*'} was {what} at {time_text(at)}"
                        return
                elif selected(db, coll):
                    writer.add(event.raw)
                last = at
                newest_id = event["_id"]
                event = stream.try_next()
        finally:
            if newest_id is not None:
                read.token = decode(newest_id.raw) if hasattr(newest_id, "raw") else dict(newest_id)

    def _store(self, run: _Run, upload: Any, writer: SliceWriter, read: _Read) -> str:
        """The events, then the manifest, then the position: each only once what it describes is durable."""
        ctx = run.ctx
        if read.through <= run.after:  # nothing new was covered (a gap at once)
            if upload is not None:
                upload.abort()
            return ""
        base = slice_base(ctx.job_id, run.after, read.through)
        if upload is not None:
            writer.close()
            if writer.events:
                upload.commit()
            else:
                upload.abort()
        failpoint("capture.slice_stored")
        manifest = {
            "format": SLICE_FORMAT, "job_id": ctx.job_id, "backup_job": self.options.backup,
            "after": time_json(run.after), "through": time_json(read.through), "events": writer.events,
            "data_key": _data_key(ctx.job_id, run.after, ctx.run_id) if writer.events else None,
            "raw_bytes": writer.raw_bytes, "stored_bytes": writer.stored_bytes, "sha256": writer.sha256.hexdigest(),
            "created_at": datetime.now(UTC).isoformat(), "instance": ctx.instance or None,
            "fencing_token": ctx.token,
        }  # fmt: skip
        run.storage.put(base + SLICE_MANIFEST, json.dumps(manifest, indent=2).encode())
        failpoint("capture.manifest_stored")
        ctx.state.set("position", None if read.gap else {"through": time_json(read.through), "token": read.token})
        failpoint("capture.position_stored")
        return base + SLICE_MANIFEST

    def _gap(self, ctx: JobContext, storage: Storage, since: Time, reason: str) -> None:
        now = datetime.now(UTC)
        doc = {"since": time_json(since), "reason": reason, "detected_at": now.isoformat(),
               "backup_job": self.options.backup}  # fmt: skip
        storage.put(f"{ctx.job_id}/gaps/{stamp(now)}{GAP_SUFFIX}", json.dumps(doc, indent=2).encode())
        ctx.state.set("position", None)
        ctx.log("capture.gap", since=time_json(since), reason=reason)

    def _post_images(self, client: Any, backup: BackupOptions) -> dict[str, str]:
        """Turn post-images on where they are off; per namespace, what its updates will be replayed from."""
        from pymongo.errors import OperationFailure

        modes: dict[str, str] = {}
        for db_name in client.list_database_names():
            if not database_selected(backup, db_name):
                continue
            for info in client[db_name].list_collections(filter={"type": "collection"}):
                name = str(info["name"])
                if not collection_selected(backup, db_name, name):
                    continue
                on = bool(((info.get("options") or {}).get("changeStreamPreAndPostImages") or {}).get("enabled"))
                if not on:
                    try:
                        client[db_name].command("collMod", name, changeStreamPreAndPostImages={"enabled": True})
                        on = True
                    except OperationFailure:  # not allowed to this user, or a server before 6.0
                        on = False
                modes[f"{db_name}.{name}"] = "post-images" if on else "update descriptions"
        return modes

    def _prune(self, ctx: JobContext, storage: Storage) -> None:
        """Slices and gaps no retained archive needs (they end before the oldest one's replay point), and events
        objects no manifest starts where they start (a killed run's), from one listing: this runs every minute, and
        the key names carry the times, so no slice manifest is read."""
        archives = scan(storage, self.options.backup).entries
        starts = [as_time(e.manifest["replay_from"]) for e in archives if e.manifest.get("replay_from")]
        if not starts:  # no archive joins the chain yet: the next one will need what follows it, keep all
            return
        oldest, now = min(starts), datetime.now(UTC)
        listed = storage.objects(f"{ctx.job_id}/changes/")
        spans = {o.key: times for o in listed if (times := key_times(o.key)) is not None}
        doomed = [k for k, (_, through) in spans.items() if through is not None and through <= oldest]
        for key in doomed:
            storage.delete(key)  # manifests first: a half-deleted slice is never counted
        kept = {after for k, (after, through) in spans.items() if through is not None and k not in doomed}
        pruned = {spans[k][0] for k in doomed}
        for obj in listed:
            after, through = spans.get(obj.key, (None, None))
            if after is None or through is not None or after in kept:
                continue
            # A pruned slice's events go now; events no manifest ever described once no run can still be writing one.
            if after in pruned or now - obj.modified > ORPHAN_AGE:
                storage.delete(obj.key)
        for gap in scan_changes(storage, ctx.job_id, gaps_only=True).gaps:
            if gap.since < oldest:
                storage.delete(gap.key)


def _data_key(capture_id: str, after: Time, run_id: str) -> str:
    """Where a run's events go: named by where they start and by the run, as `through` is known only at the end,
    and a run repeated after a kill must not write over the events an earlier manifest describes."""
    return f"{capture_id}/changes/{after[0]:010d}.{after[1]:010d}-{run_id[:12]}{SLICE_SUFFIX}"


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def watch(client: Any, backup: BackupOptions, options: Mapping[str, Any]) -> Any:
    """A change stream on the backup's databases: one database's when it names exactly one, else the
    deployment's (filtered to the named databases where they are plain names)."""
    literal = [d for d in backup.databases if not any(c in d for c in "*?[")]
    if len(backup.databases) == 1 and literal:
        return client[literal[0]].watch([], **options)
    every = bool(literal) and len(literal) == len(backup.databases)
    return client.watch([{"$match": {"ns.db": {"$in": literal}}}] if every else [], **options)
