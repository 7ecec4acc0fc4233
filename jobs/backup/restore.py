"""Restore a mongodump archive (ours or mongodump's) into a server, streaming, and check the result.

One pass over the stored object: decompress, parse, create collections with their options,
insert raw documents in bounded unordered batches from a pool of `parallel` workers (as
mongorestore's parallel collections), build each collection's indexes as soon as its last batch
is in (while the others load), then create views. Before anything is swapped in, the server's
count of each loaded collection must equal what was inserted. `check()` (the drill's proof)
reads the restored data back and recomputes counts and content digests.

With `staging` (what `opskeeper restore` uses) nothing the operator has is touched until the
whole archive has been read and proven: every namespace complete, every CRC right, and with a
manifest every count, CRC and the sha256 equal to it. Documents go into staging collections
(`opskeeper_restore_<token>.<name>`) in the target database, indexes are built there, and only
then is each collection swapped in with `renameCollection` and `dropTarget`: atomic per
collection, not across collections. On any failure before the swap the staging collections are
dropped and the target is as it was.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from bson import json_util
from pymongo.errors import OperationFailure, PyMongoError

from jobs.backup.archive import ArchiveError, ArchiveReader, check_namespace
from jobs.backup.catalog import CORRUPT_STREAM, HashingReader, decompressed, digest_algorithm, digest_batch
from jobs.backup.insert import PARALLEL, Inserter, InsertError, load
from jobs.backup.source import STAGING_COLLECTION_PREFIX

_INDEX_FIELDS_IGNORED = ("v", "ns", "background")
_SERVER_DATABASES = ("admin", "config", "local")
STAGING_PREFIX = STAGING_COLLECTION_PREFIX


class RestoreError(Exception):
    """The archive cannot be restored; the message names the namespace and the reason."""


Rename = Callable[[str, str], tuple[str, str]]


def ns_mapper(pattern_from: str | None, pattern_to: str | None) -> Rename:
    """mongorestore's --nsFrom/--nsTo: `app.*` -> `app_copy.*` (each `*` carries over in order)."""
    if not pattern_from or not pattern_to:
        return lambda db, coll: (db, coll)
    if pattern_from.count("*") != pattern_to.count("*"):
        raise ValueError("--ns-from and --ns-to must have the same number of '*' wildcards")
    regex = re.compile("^" + "(.*?)".join(re.escape(p) for p in pattern_from.split("*")) + "$")
    pieces = pattern_to.split("*")

    def rename(db: str, coll: str) -> tuple[str, str]:
        match = regex.match(f"{db}.{coll}")
        if not match:
            return db, coll
        target = pieces[0] + "".join(g + p for g, p in zip(match.groups(), pieces[1:], strict=True))
        new_db, _, new_coll = target.partition(".")
        return new_db, new_coll

    return rename


@dataclass
class Restored:
    """One namespace as restored."""

    source: str
    target_db: str
    target_coll: str
    type: str
    documents: int = 0
    bytes: int = 0
    indexes: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""
    """Why it was not restored (the oplog; a type the target does not support)."""
    load_coll: str = ""
    """Where the documents go first: a staging collection, or the target itself."""


@dataclass
class RestoreReport:
    """What a restore did, and how long each part took."""

    namespaces: list[Restored] = field(default_factory=list)
    stored_bytes: int = 0
    sha256: str = ""
    read_insert_s: float = 0.0
    """Reading, inserting and building indexes, which overlap: wall time until the last index is built."""
    index_s: float = 0.0
    """Time spent building indexes, summed over collections (within read_insert_s, beside the inserts)."""
    swap_s: float = 0.0
    """The renames that put staged collections in place (metadata-only on mongod; a copy on some stand-ins)."""

    @property
    def documents(self) -> int:
        return sum(n.documents for n in self.namespaces)

    @property
    def bytes(self) -> int:
        return sum(n.bytes for n in self.namespaces)


def restore(
    raw: BinaryIO, client: Any, rename: Rename = lambda db, coll: (db, coll),
    progress: Callable[[int, int], None] | None = None, *, manifest: dict[str, Any] | None = None,
    staging: bool = True, replace: frozenset[str] = frozenset(), parallel: int = PARALLEL,
    replay: Callable[[Callable[[str, str], Any]], None] | None = None,
) -> RestoreReport:  # fmt: skip
    """Restore every namespace of the archive in `raw` (compressed or not) through `client`.

    `replace` names target databases the operator agreed to replace: their collections are
    swapped over existing ones, and their collections that the archive does not hold are
    dropped last. A target collection holding data in any other database is a RestoreError.
    `parallel` batches are inserted at once (mongorestore's --numParallelCollections).
    `replay(resolve)`, when given, runs once the archive is loaded and proven, before anything is swapped in:
    `resolve(db, coll)` is the collection where changes to that source namespace go (a staging copy; created
    for a namespace the archive does not hold), or None for one that is not restored.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, not {parallel}")
    report = RestoreReport()
    started = time.monotonic()
    reader = HashingReader(raw)
    archive = ArchiveReader(decompressed(reader))
    token = uuid.uuid4().hex[:8] if staging else ""
    try:
        try:
            archive.read_prelude()
            by_data_ns, views = _prepare(archive, client, rename, report, token=token, replace=replace)
            # Progress counts documents read and sent to the server: the inserts trail by a batch or two, and a count
            # of inserted ones alone stays at 0 through the first batch of every collection.
            with Inserter(client, parallel, _indexes) as inserter:
                load(archive, inserter, by_data_ns, lambda sent: progress(reader.count, sent) if progress else None)
            report.index_s = inserter.index_s
            reader.drain()
        except (ArchiveError, InsertError) as exc:
            raise RestoreError(str(exc)) from None
        except CORRUPT_STREAM as exc:
            raise RestoreError(f"compressed stream is corrupt near stored byte {reader.count}: {exc}") from None
        bad = sorted(ns for ns, ok in archive.crc_ok.items() if not ok)
        if bad:
            raise RestoreError(f"{', '.join(bad)}: CRC mismatch in the archive")
        report.stored_bytes = reader.count
        report.sha256 = reader.sha256.hexdigest()
        if manifest is not None:
            _against_manifest(archive, report.sha256, manifest)
        _against_counts(client, report)
        report.read_insert_s = time.monotonic() - started
        if replay is not None:
            replay(_resolver(client, rename, report, token=token, replace=replace))
        if staging:
            swap_started = time.monotonic()
            for item in report.namespaces:
                if item.load_coll != _data_collection(item) and not item.skipped:
                    _swap(client, item)
            report.swap_s = time.monotonic() - swap_started
    except BaseException:
        if staging:
            _drop_staging(client, report)
        raise
    for item in views:
        _view(client, item, replace)
    for db in sorted(replace):
        kept = {n.target_coll for n in report.namespaces if n.target_db == db}
        for name in client[db].list_collection_names():  # system.* (time-series buckets too) stay
            if name not in kept and not name.startswith("system."):
                client[db].drop_collection(name)
    return report


def _against_manifest(archive: ArchiveReader, sha256: str, manifest: dict[str, Any]) -> None:
    """The archive must be the one the manifest describes: sha256, then each namespace's count and CRC."""
    if manifest.get("sha256") and manifest["sha256"] != sha256:
        raise RestoreError(f"the stored object's sha256 {sha256} differs from the manifest's {manifest['sha256']}")
    for ns in manifest.get("namespaces", []):
        name = ns.get("data_ns", ns.get("ns"))
        count = archive.documents.get(name, 0)
        if count != ns.get("documents", count):
            raise RestoreError(f"{name}: {count} documents in the archive, the manifest says {ns['documents']}")
        if "crc" in ns and f"{archive.crc_values.get(name, 0):016x}" != ns["crc"]:
            raise RestoreError(f"{name}: the archive's CRC differs from the manifest's")


def _against_counts(client: Any, report: RestoreReport) -> None:
    """Every collection loaded holds, by the server's own count, what the archive gave it.

    The inserts were acknowledged document for document and the archive proven by its CRCs (and sha256), so a
    difference here is something else writing into the collection while it was restored: it is not swapped in.
    """
    for item in report.namespaces:
        if item.skipped or item.type != "collection":
            continue
        held = client[item.target_db][item.load_coll].estimated_document_count()
        if held != item.documents:
            raise RestoreError(f"{item.source}: {item.target_db}.{item.load_coll} holds {held} documents after the "
                               f"load, {item.documents} were restored: something else wrote into it")  # fmt: skip


def _resolver(client: Any, rename: Rename, report: RestoreReport, *, token: str,
              replace: frozenset[str]) -> Callable[[str, str], Any]:  # fmt: skip
    """Where replayed changes to a source namespace go: its loaded copy, or a new one under the same rules."""
    by_source = {n.source: n for n in report.namespaces}

    def resolve(db: str, coll: str) -> Any:
        item = by_source.get(f"{db}.{coll}")
        if item is None:
            if db in _SERVER_DATABASES or coll.startswith("system."):
                return None
            target_db, target_coll = rename(db, coll)
            if (why := check_namespace(target_db, target_coll)) is not None:
                raise RestoreError(f"{db}.{coll}: cannot restore into {target_db + '.' + target_coll!r}: {why}")
            item = Restored(f"{db}.{coll}", target_db, target_coll, "collection")
            item.load_coll = f"{STAGING_PREFIX}{token}.{target_coll}" if token else target_coll
            if target_db not in replace and _holds_documents(client, target_db, target_coll):
                raise RestoreError(f"{db}.{coll}: {target_db}.{target_coll} already holds documents; it is replaced "
                                   "only with --drop")  # fmt: skip
            report.namespaces.append(item)
            by_source[item.source] = item
        if item.skipped or item.type != "collection":
            return None
        return client[item.target_db][item.load_coll]

    return resolve


def _swap(client: Any, item: Restored) -> None:
    """Put a staged collection in place of its target: one renameCollection, atomic on the server."""
    source, target = f"{item.target_db}.{item.load_coll}", f"{item.target_db}.{item.target_coll}"
    try:
        client.admin.command("renameCollection", source, to=target, dropTarget=True)
    except OperationFailure as exc:
        raise RestoreError(f"{item.source}: cannot move the restored copy into {target}: {exc}") from None
    item.load_coll = item.target_coll


def _drop_staging(client: Any, report: RestoreReport) -> None:
    """After a failure: drop every staging collection; what the operator had stays as it was."""
    for item in report.namespaces:
        if item.load_coll.startswith(STAGING_PREFIX):
            with contextlib.suppress(PyMongoError):
                client[item.target_db].drop_collection(item.load_coll)


def _prepare(
    archive: ArchiveReader, client: Any, rename: Rename, report: RestoreReport, *, token: str, replace: frozenset[str]
) -> tuple[dict[str, Restored], list[Restored]]:
    """Create every collection the archive announces; views wait until their sources hold data."""
    by_data_ns: dict[str, Restored] = {}
    views = []
    for prelude in archive.preludes:
        if not prelude.db:  # mongodump's oplog namespace
            report.namespaces.append(Restored(prelude.ns, "", "", "oplog", skipped="oplog entries are not replayed"))
            continue
        if prelude.db in _SERVER_DATABASES and prelude.collection.startswith("system."):
            # The server's own state (feature compatibility version, users): never written over.
            report.namespaces.append(Restored(prelude.ns, "", "", "system", skipped="server system collection"))
            continue
        try:
            meta = json_util.loads(prelude.metadata) if prelude.metadata else {}
        except (ValueError, TypeError) as exc:
            raise RestoreError(f"{prelude.ns}: metadata is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise RestoreError(f"{prelude.ns}: metadata is not a JSON object")
        db, coll = rename(prelude.db, prelude.collection)
        kind = prelude.type or meta.get("type") or "collection"
        item = Restored(prelude.ns, db, coll, kind, indexes=list(meta.get("indexes", [])),
                        options=dict(meta.get("options", {})))  # fmt: skip
        if (why := check_namespace(db, coll)) is not None:
            raise RestoreError(f"{prelude.ns}: cannot restore into {db + '.' + coll!r}: {why}")
        # Time-series collections cannot be renamed: they are restored in place.
        item.load_coll = f"{STAGING_PREFIX}{token}.{coll}" if token and kind == "collection" else _data_collection(item)
        report.namespaces.append(item)
        if kind == "view":
            views.append(item)
            continue
        if db not in replace and _holds_documents(client, db, coll):
            raise RestoreError(f"{prelude.ns}: {db}.{coll} already holds documents; it is replaced only with --drop")
        _create(client, item)
        if not item.skipped:
            data_ns = f"{prelude.db}.system.buckets.{prelude.collection}" if kind == "timeseries" else prelude.ns
            by_data_ns[data_ns] = item
    return by_data_ns, views


def _holds_documents(client: Any, db: str, coll: str) -> bool:
    return client[db][coll].find_one({}, {"_id": 1}) is not None


def _create(client: Any, item: Restored) -> None:
    db = client[item.target_db]
    options = {k: v for k, v in item.options.items() if k not in ("uuid",)}
    name = item.load_coll if item.type == "collection" else item.target_coll
    try:
        db.create_collection(name, **options)
    except OperationFailure as exc:
        if item.type == "timeseries":
            item.skipped = f"time-series collections are not supported by the target ({exc.details and exc.code})"
            return
        if exc.code == 48:  # NamespaceExists: restoring into an existing collection (allowed with --drop off)
            return
        raise RestoreError(f"{item.source}: cannot create {item.target_db}.{item.target_coll}: {exc}") from None


def _data_collection(item: Restored) -> str:
    return f"system.buckets.{item.target_coll}" if item.type == "timeseries" else item.target_coll


def index_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """An index spec as createIndexes takes it (and as compared after a restore)."""
    return {k: v for k, v in spec.items() if k not in _INDEX_FIELDS_IGNORED}


def _indexes(client: Any, item: Restored) -> None:
    specs = [index_spec(s) for s in item.indexes if s.get("name") != "_id_"]
    if not specs:
        return
    try:
        on = item.load_coll if item.load_coll.startswith(STAGING_PREFIX) else item.target_coll
        client[item.target_db].command("createIndexes", on, indexes=specs)
    except OperationFailure as exc:
        raise RestoreError(f"{item.source}: cannot build its indexes: {exc}") from None


def _view(client: Any, item: Restored, replace: frozenset[str]) -> None:
    if item.target_db in replace:
        client[item.target_db].drop_collection(item.target_coll)
    options = dict(item.options)
    view_on = options.pop("viewOn", None)
    pipeline = options.pop("pipeline", [])
    if view_on is None:
        raise RestoreError(f"{item.source}: a view without viewOn in its metadata")
    try:
        client[item.target_db].create_collection(item.target_coll, viewOn=view_on, pipeline=pipeline, **options)
    except OperationFailure as exc:
        raise RestoreError(f"{item.source}: cannot create the view: {exc}") from None


# --- checking a restored copy --------------------------------------------------------


def check(client: Any, restored: list[Restored], manifest: dict[str, Any]) -> list[str]:
    """Compare the restored copy with the manifest: counts, content digests, indexes, views.

    Every problem names the collection and what differed.
    """
    expected = {n["ns"]: n for n in manifest.get("namespaces", [])}
    algorithm = digest_algorithm(manifest)
    problems = []
    for item in restored:
        if item.skipped:
            continue
        want = expected.get(item.source)
        if want is None:
            problems.append(f"{item.source}: in the archive but not in the manifest")
            continue
        db = client[item.target_db]
        if item.type == "view":
            info = next(iter(db.list_collections(filter={"name": item.target_coll})), None)
            if info is None or info.get("type") != "view":
                problems.append(f"{item.source}: the view is missing after the restore")
            continue
        count, digest = 0, 0
        for batch in db[_data_collection(item)].find_raw_batches({}, batch_size=1000):  # bounded memory
            digest, documents = digest_batch(digest, batch, algorithm)
            count += documents
        if count != want["documents"]:
            problems.append(f"{item.source}: {count} documents restored, the backup has {want['documents']}")
        elif f"{digest:032x}" != want.get("digest", f"{digest:032x}"):
            problems.append(f"{item.source}: document contents differ from the backup (content digest mismatch)")
        have = {ix["name"]: index_spec(dict(ix)) for ix in db[item.target_coll].list_indexes()}
        for spec in want.get("indexes", []):
            name = spec.get("name")
            if name not in have:
                problems.append(f"{item.source}: index {name} is missing after the restore")
            elif _comparable(have[name]) != _comparable(index_spec(spec)):
                problems.append(f"{item.source}: index {name} differs: {have[name]} != {index_spec(spec)}")
    return problems


def _comparable(spec: dict[str, Any]) -> str:
    return json_util.dumps({k: spec[k] for k in sorted(spec)})


# --- what a restore may replace: the rules `opskeeper restore` follows ----------------


def holds_data(client: Any, db: str) -> bool:
    """Whether a database exists and any of its collections holds a document."""
    if db not in client.list_database_names():
        return False
    database = client[db]
    return any(database[name].find_one({}, {"_id": 1}) is not None for name in database.list_collection_names()
               if not name.startswith("system."))  # fmt: skip


def may_replace(occupied: list[str], target: str, *, drop: bool, yes: bool,
                ask: Callable[[str], str] | None) -> bool:  # fmt: skip
    """Whether databases that hold data may be dropped and replaced.

    Never without `drop`; then either `yes`, or the operator types each database's name when
    asked (`ask` is None where nobody can be asked: that refuses). Raises RestoreRefusedError with
    the rule that stops it; False means the operator declined.
    """
    if not occupied:
        return True
    if not drop:
        raise RestoreRefusedError(f"refusing to restore: {occupied_text(occupied)} on {target}; pass --drop to "
                                  f"replace {'it' if len(occupied) == 1 else 'them'}")  # fmt: skip
    if yes:
        return True
    if ask is None:
        raise RestoreRefusedError("refusing to drop without confirmation: stdin is not a terminal; pass --yes")
    return all(ask(f"Type the database name to drop and replace it ({db}): ") == db for db in occupied)


def occupied_text(occupied: list[str]) -> str:
    """`app already holds data` / `app, crm already hold data`."""
    return f"{', '.join(occupied)} already {'holds' if len(occupied) == 1 else 'hold'} data"


class RestoreRefusedError(Exception):
    """A restore would replace data without the consent its rules ask for."""
