"""`restore_drill` with `point_in_time`: restore a captured second into scratch databases, prove it against the live
database.

The drill picks a second inside the window its chains can restore (at random, or the newest point), restores the
archive and replays the slices up to it into scratch databases, then compares every document with the live source,
by `_id`, byte for byte, both ways. A document that differs is a problem unless the change stream shows it changed
after the target time: the stream is read from just after the target to the present once the comparison is done,
so the proof needs no snapshot read of production. Memory holds one batch of each side and the differing keys
(at most `_MAX_DIFFERENCES`; past that the drill fails saying how many it stopped at).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jobs.backup.catalog import scan
from jobs.backup.changes import END_OF_SECOND, Changes, Time, as_time, scan_chains, time_json, time_text
from jobs.backup.pitr import Plan, plan, reaches, restore_at
from jobs.backup.restore import Restored
from jobs.backup.source import BackupOptions, collection_selected, database_selected, majority_time
from worker.job import JobContext, Outcome, Status, counted

_BATCH = 500
_MAX_DIFFERENCES = 10_000


@dataclass
class Comparison:
    """What differs between the restored copy and the live source, by namespace and `_id`."""

    documents: int = 0
    differing: dict[tuple[str, Any], str] = field(default_factory=dict)
    """(source namespace, _id) -> how it differs: changed, missing from the restore, or not in the source."""
    truncated: bool = False


def choose(changes: Changes, archives: list[Any], mode: str, rng: random.Random) -> Plan | None:
    """The plan for a random restorable second (or the newest point); None if nothing is restorable yet."""
    spans = [(r.consistent_at[0], r.newest_second) for r in reaches(archives, changes) if r.newest_second is not None]
    if not spans:
        return None
    if mode == "latest":
        return plan(archives, changes, None)
    seconds = sorted({s for low, high in spans for s in range(low, (high or low) + 1)})
    return plan(archives, changes, datetime.fromtimestamp(rng.choice(seconds), UTC))


def run_point_in_time_drill(ctx: JobContext, job_id: str, backup: BackupOptions, client: Any, *, scratch: Any,
                            mode: str) -> Outcome:  # fmt: skip
    """Restore a captured point into scratch databases (`scratch(db)` names them) and prove it against the source."""
    storage = backup.open_storage()
    captures = [c.id for c in ctx.jobs.values() if c.kind == "change_capture" and c.options.backup == job_id]
    if not captures:
        return Outcome(Status.FAIL, f"point-in-time drill: no change_capture job follows {job_id}")
    changes = scan_chains(storage, captures)
    # Not a secret: a drill's second only needs to be spread over the window, and repeatable from its run id.
    chosen = choose(changes, scan(storage, job_id).entries, mode, random.Random(ctx.run_id))  # noqa: S311
    if chosen is None:
        return Outcome(Status.FAIL, f"point-in-time drill: no archive of {job_id} joins a captured chain yet")
    from jobs.backup.restore import RestoreError

    started = time.monotonic()
    try:
        report, replayed = restore_at(storage, chosen, client, lambda db, coll: (scratch(db), coll),
                                      replace=frozenset(), staging=False)  # fmt: skip
    except RestoreError as exc:
        return Outcome(Status.FAIL, f"point-in-time drill to {_moment(chosen.until)} failed: {exc}",
                       {"key": chosen.archive.key, "at": _moment(chosen.until)},
                       fingerprint=f"pitr drill: {str(exc).split(':')[0]}")  # fmt: skip
    recovery_s = time.monotonic() - started
    source: Any = _raw(backup)
    try:
        compared = compare(source, client, backup, [n for n in report.namespaces if n.type == "collection"], scratch)
        explained = changed_after(source, backup, chosen.until, set(compared.differing))
    finally:
        source.close()
    unexplained = {k: v for k, v in compared.differing.items() if k not in explained}
    target = _moment(chosen.until)
    problems = [f"{ns} _id={key!r}: {why}" for (ns, key), why in list(unexplained.items())[:50]]
    if compared.truncated:
        problems.insert(0, f"stopped comparing at {_MAX_DIFFERENCES} differing documents")
    details: dict[str, Any] = {
        "key": chosen.archive.key, "at": target, "at_cluster_time": time_json(chosen.until),
        "mode": mode, "events_replayed": replayed.events, "slices": len(chosen.slices),
        "documents_compared": compared.documents, "changed_after_target": len(explained),
        "recovery_s": round(recovery_s, 3), "newest_available": time_json(chosen.newest),
        "problems": problems,
    }  # fmt: skip
    if problems:
        first = problems[0]
        more = f" (+{len(unexplained) - 1} more)" if len(unexplained) > 1 else ""
        return Outcome(Status.FAIL, f"point-in-time drill to {target} failed: {first}{more}", details,
                       fingerprint=f"pitr drill: {first.split(' _id=')[0]}")  # fmt: skip
    return Outcome(Status.OK, f"{chosen.archive.key} + {counted(replayed.events, 'change')} restored to {target} in "
                   f"{recovery_s:.1f} s; {counted(compared.documents, 'document')} equal to the live database "
                   f"({len(explained)} changed since)", details)  # fmt: skip


def _moment(until: Time) -> str:
    if until[1] == END_OF_SECOND:
        return f"{datetime.fromtimestamp(until[0], UTC):%Y-%m-%dT%H:%M:%SZ}"
    return time_text(until)


def _raw(backup: BackupOptions) -> Any:
    from bson.raw_bson import RawBSONDocument

    from worker.mongodb import connect

    return connect(backup.mongo_uri(), "opskeeper-drill-source", readPreference=backup.read_preference,
                   document_class=RawBSONDocument)  # fmt: skip


def compare(source: Any, target: Any, backup: BackupOptions, restored: list[Restored], scratch: Any) -> Comparison:
    """Every document of every selected live collection and of every restored one, compared by `_id` both ways."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    raw = CodecOptions(document_class=RawBSONDocument)
    result = Comparison()
    names = {n.source for n in restored}
    for db in source.list_database_names():
        if database_selected(backup, db):
            names |= {f"{db}.{c}" for c in source[db].list_collection_names() if collection_selected(backup, db, c)}
    for ns in sorted(names):
        db, _, coll = ns.partition(".")
        live = source[db][coll]
        copy = target.get_database(scratch(db), codec_options=raw)[coll]
        for mine, theirs, why in ((live, copy, "missing from the restore"), (copy, live, "not in the source")):
            for batch in _batches(mine):
                result.documents += len(batch) if why.startswith("missing") else 0
                found = {_key(d): d.raw for d in theirs.find({"_id": {"$in": [d["_id"] for d in batch]}})}
                for document in batch:
                    other = found.get(_key(document))
                    if other is None:
                        _differ(result, (ns, document["_id"]), why)
                    elif other != document.raw and why.startswith("missing"):
                        _differ(result, (ns, document["_id"]), "differs from the source")
    return result


def _differ(result: Comparison, key: tuple[str, Any], why: str) -> None:
    if len(result.differing) >= _MAX_DIFFERENCES:
        result.truncated = True
        return
    result.differing[(key[0], _hashable(key[1]))] = why


def _hashable(value: Any) -> Any:
    return value.raw if hasattr(value, "raw") else value


def _key(document: Any) -> Any:
    return _hashable(document["_id"])


def _batches(collection: Any) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for document in collection.find({}, sort=[("_id", 1)], batch_size=_BATCH):
        batch.append(document)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def changed_after(source: Any, backup: BackupOptions, until: Time, wanted: set[tuple[str, Any]]) -> set[Any]:
    """Of `wanted` (namespace, _id) pairs, those the live change stream shows changed after `until`, up to now.

    A namespace dropped, renamed or created after `until` explains every document in it."""
    from bson.timestamp import Timestamp

    from jobs.backup.capture import watch
    from jobs.backup.source import clock_database

    if not wanted:
        return set()
    by_ns = {ns for ns, _ in wanted}
    clock = clock_database(backup)
    stop = as_time(majority_time(source, clock))
    start = Timestamp(until[0], until[1] + 1) if until[1] < END_OF_SECOND else Timestamp(until[0] + 1, 0)
    explained: set[Any] = set()
    options = {"start_at_operation_time": start, "show_expanded_events": True, "max_await_time_ms": 200}
    with watch(source, backup, options) as stream:
        while True:
            event = stream.try_next()
            if event is None:
                if as_time(majority_time(source, clock)) >= stop and stream.try_next() is None:
                    return explained
                continue
            if as_time(event["clusterTime"]) > stop:
                return explained
            ns = event.get("ns") or {}
            name = f"{ns.get('db')}.{ns.get('coll')}"
            if name not in by_ns:
                continue
            key = event.get("documentKey")
            if key is None:  # a whole collection changed (created, dropped, renamed)
                explained |= {k for k in wanted if k[0] == name}
            elif (name, _hashable(key["_id"])) in wanted:
                explained.add((name, _hashable(key["_id"])))
