"""Backups in storage: naming, manifests, listing, verifying and pruning.

A backup is two objects: `<job>/<stamp>.archive[.gz|.zst]` and, written only after the
archive is complete, `<job>/<stamp>.manifest.json`. A restore drill that passed adds
`<job>/<stamp>.verified.json`. No manifest, no backup: a half-written archive never counts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, cast

import zstandard
from bson import json_util

from jobs.backup.archive import ArchiveError, ArchiveReader, End, iter_documents
from jobs.backup.retention import BackupInfo, Retention, plan_retention
from worker.storage import Storage

SUFFIX = {"gzip": ".archive.gz", "zstd": ".archive.zst", "none": ".archive"}
MANIFEST, VERIFIED = ".manifest.json", ".verified.json"
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_DIGEST_MOD = 1 << 128


def stamp(moment: datetime) -> str:
    """A sortable UTC timestamp for keys: 20261126T031500.123Z."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S}.{moment.microsecond // 1000:03d}Z"


def base_of(key: str) -> str:
    """The key without its archive or manifest suffix."""
    for suffix in (*SUFFIX.values(), MANIFEST, VERIFIED):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def digest_update(total: int, document: bytes | memoryview) -> int:
    """Fold one document into an order-independent content digest (a sum of hashes mod 2^128).

    A restore recomputes it from the restored documents: same documents, same digest, in any
    order; one changed, missing or extra document changes it.
    """
    return (total + int.from_bytes(hashlib.blake2b(document, digest_size=16).digest(), "big")) % _DIGEST_MOD


class CompressingSink:
    """Compresses what is written and passes it to an upload, hashing what is stored."""

    def __init__(self, upload: Any, compression: str) -> None:
        self._upload = upload
        self.sha256 = hashlib.sha256()
        self.raw_bytes = 0
        self.stored_bytes = 0
        self._compressor: Any = None
        if compression == "gzip":
            # One gzip stream over the whole archive: what `mongodump --archive --gzip` writes.
            self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif compression == "zstd":
            self._compressor = zstandard.ZstdCompressor(level=3).compressobj()

    def write(self, data: bytes | memoryview) -> int:
        self.raw_bytes += len(data)
        self._emit(self._compressor.compress(data) if self._compressor else bytes(data))
        return len(data)

    def close(self) -> None:
        """Flush the compressor's tail."""
        if self._compressor is not None:
            self._emit(self._compressor.flush())

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha256.update(data)
            self.stored_bytes += len(data)
            self._upload.write(data)


class HashingReader:
    """Reads a stored object, hashing and counting the bytes as they pass."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.count = 0
        self._pushback = b""

    def peek(self, size: int) -> bytes:
        """The next bytes, without consuming them."""
        if len(self._pushback) < size:
            more = self._raw.read(size - len(self._pushback))
            self.sha256.update(more)
            self.count += len(more)
            self._pushback += more
        return self._pushback[:size]

    def read(self, size: int = -1) -> bytes:
        head, self._pushback = self._pushback, b""
        if size >= 0 and len(head) >= size:
            self._pushback = head[size:]
            return head[:size]
        more = self._raw.read(-1 if size < 0 else size - len(head))
        self.sha256.update(more)
        self.count += len(more)
        return head + more

    def drain(self) -> None:
        """Read to the end, so the hash covers the whole object."""
        while self.read(1 << 20):
            pass


def decompressed(reader: HashingReader) -> BinaryIO:
    """The archive inside, whatever the compression (detected from the magic bytes)."""
    magic = reader.peek(4)
    stream = cast(BinaryIO, reader)  # it has the read() these readers use
    if magic.startswith(_GZIP_MAGIC):
        return cast(BinaryIO, gzip.GzipFile(fileobj=stream, mode="rb"))
    if magic == _ZSTD_MAGIC:
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True))
    return stream


@dataclass
class VerifyReport:
    """What `backups verify` found."""

    namespaces: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def public(self) -> dict[str, Any]:
        return {"ok": self.ok, "namespaces": self.namespaces, "problems": self.problems}


def verify(
    raw: BinaryIO, manifest: dict[str, Any] | None = None, progress: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Stream an archive: every frame, CRC and count; sha256 and counts against the manifest.

    `progress(stored_bytes_read, documents_seen)` is called as the archive is read.
    """
    report = VerifyReport()
    reader = HashingReader(raw)
    archive = ArchiveReader(decompressed(reader))
    digests: dict[str, int] = {}
    ended: set[str] = set()
    try:
        archive.read_prelude()
        for prelude in archive.preludes:
            try:
                json_util.loads(prelude.metadata) if prelude.metadata else None
            except (ValueError, TypeError) as exc:
                report.problems.append(f"{prelude.ns}: metadata is not valid JSON ({exc})")
        for event in archive.events():
            if isinstance(event, End):
                ended.add(event.ns)
                if not archive.crc_ok.get(event.ns, True):
                    report.problems.append(f"{event.ns}: CRC mismatch (archive offset {archive.offset})")
                continue
            total = digests.get(event.ns, 0)
            for doc in iter_documents(event.data):
                total = digest_update(total, doc)
            digests[event.ns] = total
            if progress is not None:
                progress(reader.count, sum(archive.documents.values()))
    except ArchiveError as exc:
        report.problems.append(str(exc))
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        report.problems.append(f"compressed stream is corrupt near stored byte {reader.count}: {exc}")
    if not report.problems:
        reader.drain()  # so the sha256 covers the whole stored object
    for ns in sorted(set(archive.documents) | ended):
        report.namespaces.append({"ns": ns, "documents": archive.documents.get(ns, 0),
                                  "crc_ok": archive.crc_ok.get(ns, False)})  # fmt: skip
        report.digests[ns] = f"{digests.get(ns, 0):032x}"
    for ns in sorted(set(archive.documents) - ended):
        report.problems.append(f"{ns}: no EOF header (the archive is incomplete)")
    if manifest is not None and not report.problems:
        _against_manifest(report, manifest, reader.sha256.hexdigest(), archive.documents)
    return report


def _against_manifest(report: VerifyReport, manifest: dict[str, Any], sha256: str, counts: dict[str, int]) -> None:
    if manifest.get("sha256") and manifest["sha256"] != sha256:
        report.problems.append(f"sha256 {sha256} differs from the manifest's {manifest['sha256']}")
    for ns in manifest.get("namespaces", []):
        name = ns["data_ns"]
        if counts.get(name, 0) != ns["documents"]:
            report.problems.append(f"{name}: {counts.get(name, 0)} documents, manifest says {ns['documents']}")
        if ns.get("digest") and report.digests.get(name) != ns["digest"]:
            report.problems.append(f"{name}: content digest differs from the manifest")


# --- listing and pruning -------------------------------------------------------------


@dataclass(frozen=True)
class BackupEntry:
    """A complete backup (its manifest exists)."""

    key: str
    job_id: str
    created_at: datetime
    size_bytes: int
    compression: str
    collections: int
    documents: int
    verified: bool
    manifest: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {"key": self.key, "job_id": self.job_id, "created_at": self.created_at.isoformat(),
                "size_bytes": self.size_bytes, "compression": self.compression, "collections": self.collections,
                "documents": self.documents, "verified": self.verified}  # fmt: skip


def list_backups(storage: Storage, job_id: str | None = None) -> list[BackupEntry]:
    """Every complete backup, newest first."""
    objects = storage.objects(f"{job_id}/" if job_id else "")
    keys = {o.key for o in objects}
    entries = []
    for obj in objects:
        if not obj.key.endswith(MANIFEST):
            continue
        with storage.open(obj.key) as stream:
            manifest = json.loads(stream.read())
        entries.append(BackupEntry(
            key=manifest["key"], job_id=manifest["job_id"], created_at=datetime.fromisoformat(manifest["started_at"]),
            size_bytes=manifest["stored_bytes"], compression=manifest["compression"],
            collections=len(manifest["namespaces"]), documents=sum(n["documents"] for n in manifest["namespaces"]),
            verified=base_of(obj.key) + VERIFIED in keys, manifest=manifest,
        ))  # fmt: skip
    return sorted(entries, key=lambda e: e.created_at, reverse=True)


def prune(storage: Storage, job_id: str, policy: Retention, *, dry_run: bool = False) -> list[BackupEntry]:
    """Delete the backups retention does not keep; returns them. Manifest first, then the rest."""
    entries = list_backups(storage, job_id)
    infos = [BackupInfo(e.key, e.created_at, e.verified) for e in entries]
    _keep, drop = plan_retention(infos, policy)
    doomed = {b.key for b in drop}
    gone = [e for e in entries if e.key in doomed]
    if not dry_run:
        for entry in gone:
            base = base_of(entry.key)
            # The manifest goes first: if deleting stops halfway, no backup looks complete.
            for key in (base + MANIFEST, entry.key, base + VERIFIED):
                storage.delete(key)
    return gone
