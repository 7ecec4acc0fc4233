"""Replay captured change events onto restored collections, in cluster-time order.

Each event becomes an idempotent write keyed by its `documentKey`, so replaying from before an
archive's snapshot (what `mongodump --oplog` does too) gives the state at the last event replayed:

- insert, replace, and an update that carries its post-image: replace the document (upsert);
- an update without one: its `updateDescription` — arrays truncated first (`$push` with `$slice`),
  then `$set` of the updated fields and `$unset` of the removed ones, in one update (no upsert: a
  document that is not there was deleted later, and its delete or re-insert follows);
- delete: delete the document;
- create and createIndexes (MongoDB 6.0+'s expanded events): create the collection or its indexes.

Writes to one collection are sent as bulk writes of up to `_BATCH` operations: one ordered command of
inserts, replaces and updates, one of deletes. Writes to different documents commute, so only a
document's own order must hold: a delete of a document with a write pending (or the reverse) flushes
the batch first, as do a change of collection and an event that is not a document write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure

from jobs.backup.changes import Time, as_time

_BATCH = 1000
_IGNORED = frozenset({"modify", "dropIndexes", "shardCollection", "reshardCollection", "refineCollectionShardKey"})
"""Events that change no document: options, sharding. (dropIndexes: an index the restore does not need.)"""


class ReplayError(Exception):
    """An event could not be replayed; the message names its namespace, cluster time and the reason."""


Resolve = Callable[[str, str], Any]
"""(source db, source collection) -> the collection to write into, or None to skip the namespace."""


@dataclass
class Replayed:
    """What a replay did."""

    events: int = 0
    """Events applied (not counting those skipped as already applied or after the target time)."""
    by_op: dict[str, int] = field(default_factory=dict)
    last: Time | None = None
    """The cluster time of the last event applied."""


class Replayer:
    """Applies events in order; skips any at or before `applied` and any after `until`."""

    def __init__(self, resolve: Resolve, *, applied: Time, until: Time | None) -> None:
        self._resolve = resolve
        self.applied = applied
        self._until = until
        self._pending: list[Any] = []
        self._deletes: list[Any] = []
        self._keys: tuple[set[bytes], set[bytes]] = (set(), set())
        """The document keys in the pending writes and in the pending deletes: a key is only ever in one."""
        self._target: Any = None
        self._pending_ns = ""
        self.done = Replayed()

    def feed(self, batch: Iterable[RawBSONDocument]) -> bool:
        """Apply what is due; False once an event after `until` is seen (nothing later is due)."""
        for event in batch:
            at = as_time(event["clusterTime"])
            if self._until is not None and at > self._until:
                self.flush()
                return False
            if at <= self.applied:
                continue
            self._apply(event, at)
        return True

    def _apply(self, event: RawBSONDocument, at: Time) -> None:
        op = str(event["operationType"])
        ns = event.get("ns") or {}
        db, coll = str(ns.get("db", "")), str(ns.get("coll", ""))
        target = self._resolve(db, coll) if coll else None
        if target is None or op in _IGNORED:
            self._count(op, at)
            return
        write = _write(op, event)
        if write is not None:
            deleting = op == "delete"
            key = bytes(event["documentKey"].raw)
            if (self._pending_ns != f"{db}.{coll}" or len(self._pending) + len(self._deletes) >= _BATCH
                    or key in self._keys[not deleting]):  # fmt: skip
                self.flush()
            self._pending_ns, self._target = f"{db}.{coll}", target
            # Writes to different documents commute: deletes wait in a list of their own, so a batch is two commands
            # (an ordered bulk write goes to the server as one command per run of one kind), not one per run.
            (self._deletes if deleting else self._pending).extend(write)
            self._keys[deleting].add(key)
            self._count(op, at)
            return
        self.flush()
        try:
            if op == "create":
                _create(target, event)
            elif op == "createIndexes":
                specs = [{k: v for k, v in dict(ix).items() if k not in ("v", "ns")}
                         for ix in event["operationDescription"]["indexes"]]  # fmt: skip
                target.database.command("createIndexes", target.name, indexes=specs)
            else:
                raise ReplayError(f"{db}.{coll} at {at}: a {op!r} event cannot be replayed")
        except OperationFailure as exc:
            raise ReplayError(f"{db}.{coll} at {at}: replaying {op} failed: {exc}") from None
        self._count(op, at)

    def _count(self, op: str, at: Time) -> None:
        self.done.events += 1
        self.done.by_op[op] = self.done.by_op.get(op, 0) + 1
        self.done.last = self.applied = at

    def flush(self) -> None:
        for writes in (self._pending, self._deletes):
            if not writes:
                continue
            try:
                self._target.bulk_write(writes, ordered=True)
            except BulkWriteError as exc:
                first = (exc.details.get("writeErrors") or [{}])[0]
                raise ReplayError(f"{self._pending_ns}: replaying a write failed: {first.get('errmsg', exc)}") from None
        self._pending, self._deletes = [], []
        self._keys = (set(), set())


def _write(op: str, event: RawBSONDocument) -> list[Any] | None:
    """The bulk operations an event becomes; None for one that is not a document write."""
    if op not in ("insert", "replace", "update", "delete"):
        return None
    key = event["documentKey"]
    if op == "delete":
        return [DeleteOne(key)]
    full = event.get("fullDocument")
    if full is not None:
        return [ReplaceOne(key, full, upsert=True)]
    if op != "update":
        raise ReplayError(f"{event['ns']['db']}.{event['ns']['coll']}: an {op} event without its document")
    change = event["updateDescription"]
    writes: list[Any] = []
    for truncated in change.get("truncatedArrays") or []:
        writes.append(UpdateOne(key, {"$push": {truncated["field"]: {"$each": [], "$slice": truncated["newSize"]}}}))
    update: dict[str, Any] = {}
    if change.get("updatedFields"):
        update["$set"] = change["updatedFields"]
    if change.get("removedFields"):
        update["$unset"] = dict.fromkeys(change["removedFields"], "")
    if update:
        writes.append(UpdateOne(key, update))
    return writes


def _create(target: Any, event: RawBSONDocument) -> None:
    description = dict(event.get("operationDescription") or {})
    options = {k: v for k, v in description.items() if k not in ("idIndex", "uuid")}
    try:
        target.database.create_collection(target.name, **options)
    except OperationFailure as exc:
        if exc.code != 48:  # NamespaceExists: the archive, or an earlier insert, made it already
            raise
