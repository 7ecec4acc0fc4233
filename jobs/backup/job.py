"""`backup`: stream MongoDB into a mongodump-compatible archive, compressed and stored as it goes.

FAIL is never used: a backup either completes (OK, or WARN when pruning old ones failed) or
raises, which the runner records as ERROR. The archive is aborted on any error, the manifest
is written only after the archive is stored, and pruning runs only after a success — so a
failed run never leaves a backup that looks complete, nor deletes a good one.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import json_util

from jobs.backup.archive import (
    ArchiveWriter,
    Header,
    Prelude,
    crc64,
)
from jobs.backup.catalog import (
    DIGEST,
    MANIFEST,
    MANIFEST_FORMAT,
    SUFFIX,
    CompressingSink,
    digest_batch,
    prune,
    stamp,
)
from jobs.backup.mongodump import dump_with_mongodump
from jobs.backup.retention import is_future
from jobs.backup.source import BackupOptions, Namespace, clock_database, majority_time, select
from worker.job import JobContext, Outcome, Status, counted, format_size
from worker.mongodb import connect
from worker.reporting.redact import Redactor
from worker.storage import Storage
from worker.timespec import format_duration
from worker.version import version as opskeeper_version


class BackupJob:
    """Dump the selected namespaces to one archive in storage, write its manifest, prune old ones."""

    def __init__(self, options: BackupOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        opts = self.options
        uri = opts.mongo_uri()
        client: Any = connect(uri, "opskeeper-backup", readPreference=opts.read_preference, tz_aware=True)
        # One storage client for the dump, the manifest and the pruning.
        storage = opts.open_storage()
        try:
            manifest = self._dump(ctx, client, uri, storage)
        finally:
            client.close()
        took = format_duration(timedelta(seconds=manifest["duration_s"]))
        summary = (f"{counted(len(manifest['namespaces']), 'collection')}, "
                   f"{counted(manifest['documents'], 'document')}, {_mb(manifest['archive_bytes'])} → "
                   f"{_mb(manifest['stored_bytes'])} {opts.compression} in {took} to "
                   f"{storage.display}{manifest['key']}")  # fmt: skip
        details = {k: manifest[k] for k in ("key", "documents", "archive_bytes", "stored_bytes", "sha256",
                                            "duration_s", "consistent_snapshot")}  # fmt: skip
        try:
            pruned = prune(storage, ctx.job_id, opts.retention)
        except Exception as exc:  # noqa: BLE001 - a failed prune must not undo a good backup
            return Outcome(Status.WARN, f"backed up {summary}; pruning failed: {exc}", details)
        details["pruned"] = [e.key for e in pruned.gone]
        for key in pruned.orphans:
            ctx.log("backup.orphan_removed", key=key, reason="an archive without a manifest (a failed run's)")
        text = f"backed up {summary}" + (f"; pruned {len(pruned.gone)}" if pruned.gone else "")
        problems = pruned.listing.problems
        future = [e.key for e in pruned.listing.entries if is_future(e.created_at, datetime.now(UTC))]
        if future:
            problems = [*problems, f"{len(future)} backup(s) dated in the future, kept and not counted: "
                                   f"{', '.join(future[:3])}"]  # fmt: skip
        if problems:
            details["catalog_problems"] = problems
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            return Outcome(Status.WARN, f"{text}; {problems[0]}{more}", details)
        return Outcome(Status.OK, text, details)

    def _dump(self, ctx: JobContext, client: Any, uri: str, storage: Storage) -> dict[str, Any]:
        opts = self.options
        server_version = client.admin.command("buildInfo")["version"]
        # The chain's join: changes after `replay_from` may be missing from the dump; replaying them from there
        # makes the archive consistent at `consistent_at`, the majority time once the dump is done (as
        # `mongodump --oplog`). A standalone server keeps no cluster time: its archives join no chain.
        replay_from = _cluster_time(client, opts)
        namespaces = select(opts, client)
        started = datetime.now(UTC)
        key = f"{ctx.job_id}/{stamp(started)}{SUFFIX[opts.compression]}"
        # Only one run of a job at a time: anything unfinished under its prefix is abandoned.
        for abandoned in storage.abort_abandoned(f"{ctx.job_id}/"):
            ctx.log("backup.abandoned_upload_removed", key=abandoned)
        upload = storage.upload(key, estimate=lambda: _estimate(client, namespaces))
        sink = CompressingSink(upload, opts.compression)
        stats: list[dict[str, Any]] = []
        try:
            writer = ArchiveWriter(sink)  # type: ignore[arg-type]
            preludes = [Prelude(n.db, n.name, n.metadata, 0, n.type) for n in namespaces]
            writer.header(Header(server_version, f"opskeeper {opskeeper_version()}"), preludes)
            if opts.engine == "mongodump":
                stats = dump_with_mongodump(ctx, client, uri, opts, namespaces, writer=writer)
                consistent = False
            else:
                total = _estimate(client, namespaces) if ctx.progress is not None else None
                with _Snapshot(client) as snapshot:
                    for ns in namespaces:
                        stats.append(self._collection(ctx, client, ns, writer, snapshot))
                        if ctx.progress is not None:
                            ctx.progress("backup", sum(s["bytes"] for s in stats), total, unit="bytes",
                                         label="backup (all collections)")  # fmt: skip
                    consistent = snapshot.active
            sink.close()
            upload.commit()
        except BaseException:
            upload.abort()
            raise
        consistent_at = _cluster_time(client, opts) if replay_from is not None else None
        finished = datetime.now(UTC)
        manifest = {
            "format": MANIFEST_FORMAT,
            "digest_algorithm": DIGEST,
            "job_id": ctx.job_id,
            "key": key,
            "source": Redactor().text(uri),
            "server_version": server_version,
            "engine": opts.engine,
            "compression": opts.compression,
            "consistent_snapshot": consistent,
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "duration_s": round((finished - started).total_seconds(), 3),
            "archive_bytes": sink.raw_bytes,
            "stored_bytes": sink.stored_bytes,
            "sha256": sink.sha256.hexdigest(),
            "documents": sum(s["documents"] for s in stats),
            "opskeeper_version": opskeeper_version(),
            # Which daemon made it, under which term of the lease (None from run-now): a backup a deposed leader
            # finished is still a backup, and this says so.
            "instance": ctx.instance or None,
            "fencing_token": ctx.token,
            "replay_from": replay_from,
            "consistent_at": consistent_at,
            "namespaces": stats,
        }
        try:
            storage.put(key.removesuffix(SUFFIX[opts.compression]) + MANIFEST,
                        json.dumps(manifest, indent=2, default=str).encode())  # fmt: skip
        except BaseException:
            # No manifest, no backup: the archive would only fill the disk. If this delete fails
            # too, the next run's prune removes it as an orphan.
            with contextlib.suppress(Exception):
                storage.delete(key)
            raise
        return manifest

    def _collection(self, ctx: JobContext, client: Any, ns: Namespace, writer: ArchiveWriter,
                    session: _Snapshot) -> dict[str, Any]:  # fmt: skip
        from pymongo.errors import OperationFailure  # the driver loads when a backup runs

        started = time.monotonic()
        data_ns = ns.data_collection
        crc: int | None = None
        digest = documents = size = 0
        # The estimate is the collection's metadata count: cheap, and only asked for when someone watches.
        estimate = None
        if ctx.progress is not None and ns.type != "view":
            with contextlib.suppress(OperationFailure):
                estimate = client[ns.db][data_ns].estimated_document_count()
        if ns.type != "view":
            for batch in self._batches(client, ns, session):
                if ctx.cancel.is_set():
                    raise InterruptedError(f"stopped while dumping {ns.db}.{ns.name}")
                digest, count = digest_batch(digest, batch)
                documents += count
                if ctx.progress is not None:
                    ctx.progress(f"{ns.db}.{ns.name}", documents, estimate)
                crc = crc64(batch, crc)
                size += len(batch)
                writer.segment(ns.db, data_ns, batch)
        if documents == 0:
            writer.segment(ns.db, data_ns, b"")  # mongodump writes an empty segment too
        writer.end(ns.db, data_ns, crc or 0)
        if ctx.progress is not None:
            ctx.progress(f"{ns.db}.{ns.name}", documents, documents)  # done: its true count is the total
        ctx.log("backup.collection", ns=f"{ns.db}.{ns.name}", documents=documents, bytes=size,
                seconds=round(time.monotonic() - started, 3))  # fmt: skip
        return {
            "ns": f"{ns.db}.{ns.name}",
            "data_ns": f"{ns.db}.{data_ns}",
            "type": ns.type,
            "documents": documents,
            "bytes": size,
            "crc": f"{crc or 0:016x}",
            "digest": f"{digest:032x}",
            "options": json.loads(json_util.dumps(ns.options)),
            "indexes": json.loads(json_util.dumps(ns.indexes)),
        }

    def _batches(self, client: Any, ns: Namespace, snapshot: _Snapshot) -> Iterator[bytes]:
        """Raw batches of a collection, read at the snapshot while the server allows it."""
        from pymongo.errors import OperationFailure

        collection = client[ns.db][ns.data_collection]
        batches = prefetched(collection.find_raw_batches({}, batch_size=self.options.batch_size,
                                                         **snapshot.kwargs()))  # fmt: skip
        try:
            first = next(batches, None)
        except OperationFailure:
            if not snapshot.active:
                raise
            # The server refuses snapshot reads (a standalone mongod): go on without one.
            snapshot.give_up()
            batches = prefetched(collection.find_raw_batches({}, batch_size=self.options.batch_size))
            first = next(batches, None)
        if first is not None:
            yield first
            yield from batches


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


def prefetched(batches: Iterable[bytes], depth: int = 2) -> Iterator[bytes]:
    """Yield from `batches`, fetching up to `depth` ahead in a thread.

    The server prepares the next batch while this one is hashed, compressed and uploaded;
    memory stays bounded at `depth` + 1 batches (each at most 16 MB).
    """
    ahead: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        ahead.put(batch, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            ahead.put(_Failure(exc))

    thread = threading.Thread(target=pump, name="backup-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ahead.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while not ahead.empty():
            ahead.get_nowait()
        thread.join(5)


class _Snapshot:
    """One snapshot session for the whole dump where the server offers one (a consistent backup)."""

    def __init__(self, client: Any) -> None:
        from pymongo.errors import ConfigurationError

        try:
            self.session: Any = client.start_session(snapshot=True)
        except ConfigurationError:
            self.session = None

    @property
    def active(self) -> bool:
        return self.session is not None

    def kwargs(self) -> dict[str, Any]:
        return {"session": self.session} if self.session is not None else {}

    def give_up(self) -> None:
        if self.session is not None:
            self.session.end_session()
        self.session = None

    def __enter__(self) -> _Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.give_up()


def _cluster_time(client: Any, opts: BackupOptions) -> dict[str, int] | None:
    """The majority-committed cluster time as {"t", "i"}; None where the server keeps none or refuses the read."""
    from pymongo.errors import OperationFailure

    try:
        now = majority_time(client, clock_database(opts))
    except OperationFailure:
        return None
    return None if now is None else {"t": int(now.time), "i": int(now.inc)}


def _estimate(client: Any, namespaces: list[Namespace]) -> int | None:
    """The archive's likely size: the selected databases' own dataSize (uncompressed BSON); None if unknown."""
    from pymongo.errors import OperationFailure

    total = 0
    try:
        for db in sorted({n.db for n in namespaces}):
            total += int(client[db].command("dbStats").get("dataSize", 0))
    except (OperationFailure, TypeError, ValueError):
        return None
    return total or None


def _mb(size: int) -> str:
    return format_size(size)
