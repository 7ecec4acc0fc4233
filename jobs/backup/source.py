"""What a backup reads: the job's options, and the namespaces they select on the server.

Its own module because both engines need it: the native dump in `job.py` and the real
mongodump in `mongodump.py`, which `job.py` calls.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from pydantic import Field

from jobs.backup.retention import Retention
from worker.job import JobOptions
from worker.mongodb import MongoUri, check_uri
from worker.storage import Storage, open_storage

SYSTEM_DATABASES = ("admin", "local", "config")
#: The scratch copies this project makes itself: a drill's databases and a guarded restore's staging collections.
#: No backup ever sweeps them in, whatever `databases:` or `collections:` match: they are ours, short-lived and
#: dropped after use, and a backup of them would be a copy of a copy.
SCRATCH_DATABASE_PREFIX = "opskeeper_drill_"
STAGING_COLLECTION_PREFIX = "opskeeper_restore_"


def is_scratch(db: str, collection: str | None = None) -> bool:
    """Whether a database (or a collection in it) is one of this project's scratch copies."""
    return db.startswith(SCRATCH_DATABASE_PREFIX) or bool(collection and collection.startswith(
        STAGING_COLLECTION_PREFIX))  # fmt: skip


class BackupOptions(JobOptions):
    """What to back up, where to, how compressed, and how many to keep."""

    uri: MongoUri | None = None
    """Defaults to the MONGODB_URI environment variable."""
    databases: tuple[str, ...] = ()
    exclude_databases: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()
    exclude_collections: tuple[str, ...] = ()
    read_preference: Literal["primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"] = (
        "secondaryPreferred"
    )
    storage: str = "var/backups"
    endpoint_url: str | None = None
    region: str | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    compression: Literal["gzip", "zstd", "none"] = "gzip"
    retention: Retention = Retention()
    engine: Literal["native", "mongodump"] = "native"
    """native streams with pymongo; mongodump runs the real binary (password via a config file)."""
    pass_env: tuple[str, ...] = ()
    """Variables of ours mongodump may see (e.g. AWS_* for MONGODB-AWS auth); it gets a minimal environment."""
    batch_size: Annotated[int, Field(ge=1)] = 1000

    def open_storage(self) -> Storage:
        """This job's storage."""
        return open_storage(self.storage, endpoint_url=self.endpoint_url, region=self.region, sse=self.sse,
                            kms_key_id=self.kms_key_id)  # fmt: skip

    def mongo_uri(self) -> str:
        """The source URI; a clear error when none is configured."""
        uri = self.uri or os.environ.get("MONGODB_URI", "")
        if not uri:
            raise ValueError("no MongoDB URI: set MONGODB_URI or options.uri")
        return check_uri(uri, "options.uri" if self.uri else "MONGODB_URI")


@dataclass
class Namespace:
    """One collection (or view) to dump."""

    db: str
    name: str
    type: str
    metadata: str
    options: dict[str, Any]
    indexes: list[dict[str, Any]]

    @property
    def data_collection(self) -> str:
        """Where the documents are: a time-series collection keeps them in its buckets."""
        return f"system.buckets.{self.name}" if self.type == "timeseries" else self.name


def metadata_json(name: str, kind: str, options: dict[str, Any], indexes: list[Any], uuid: str | None) -> str:
    """The `.metadata.json` text as mongodump writes it (canonical, compact, its key order)."""
    doc: dict[str, Any] = {}
    if options:
        doc["options"] = options
    doc["indexes"] = indexes
    if uuid:
        doc["uuid"] = uuid
    doc["collectionName"] = name
    if kind:
        doc["type"] = kind
    return json_util.dumps(doc, json_options=CANONICAL_JSON_OPTIONS, separators=(",", ":"), ensure_ascii=False)


def database_selected(options: BackupOptions, db_name: str) -> bool:
    """Whether the backup's database patterns take this database (never a scratch copy)."""
    if is_scratch(db_name):
        return False
    included = any(fnmatch.fnmatchcase(db_name, p) for p in options.databases)
    if (options.databases and not included) or (db_name in SYSTEM_DATABASES and not included):
        return False
    return not any(fnmatch.fnmatchcase(db_name, p) for p in options.exclude_databases)


def collection_selected(options: BackupOptions, db_name: str, name: str) -> bool:
    """Whether the backup takes this collection: its database is selected, and the collection patterns agree."""
    ns = f"{db_name}.{name}"
    if not database_selected(options, db_name) or name.startswith("system.") or is_scratch(db_name, name):
        return False
    if options.collections and not any(fnmatch.fnmatchcase(ns, p) for p in options.collections):
        return False
    return not any(fnmatch.fnmatchcase(ns, p) for p in options.exclude_collections)


def select(options: BackupOptions, client: Any) -> list[Namespace]:
    """The namespaces to dump, in a stable order, after include and exclude patterns; never a scratch copy
    (`is_scratch`)."""
    chosen = []
    for db_name in sorted(client.list_database_names()):
        if not database_selected(options, db_name):
            continue
        db = client[db_name]
        for info in sorted(db.list_collections(), key=lambda i: i["name"]):
            name, kind = info["name"], info.get("type", "collection")
            if not collection_selected(options, db_name, name):
                continue
            coll_options = dict(info.get("options") or {})
            indexes = [] if kind == "view" else [dict(ix) for ix in db[name].list_indexes()]
            uuid = info.get("info", {}).get("uuid")
            meta = metadata_json(name, kind, coll_options, indexes, uuid.hex() if uuid is not None else None)
            chosen.append(Namespace(db_name, name, kind, meta, coll_options, indexes))
    return chosen


def clock_database(options: BackupOptions) -> str:
    """Where `majority_time` reads: the first database the backup names outright (its user can read it), else
    admin."""
    return next((d for d in options.databases if not any(c in d for c in "*?[")), "admin")


def majority_time(client: Any, db: str) -> Any:
    """The server's majority-committed cluster time now (a bson Timestamp), or None where it keeps none.

    The `operationTime` of a majority read (of a collection that need not exist, in `db`, which the
    backup's user can read): every change at or before it is durable and visible to a change stream.
    A standalone mongod answers without one.
    """
    from pymongo.read_concern import ReadConcern

    with client.start_session(causal_consistency=False) as session:
        collection = client[db].get_collection("opskeeper_clock", read_concern=ReadConcern("majority"))
        collection.find_one({}, session=session)
        return session.operation_time
