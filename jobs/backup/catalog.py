"""Backups in storage: naming, manifests, listing, verifying and pruning.

A backup is two objects: `<job>/<stamp>.archive[.gz|.zst]` and, written only after the
archive is complete, `<job>/<stamp>.manifest.json`. A restore drill that passed adds
`<job>/<stamp>.verified.json`. No manifest, no backup: a half-written archive never counts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, cast

import xxhash
import zstandard
from bson import json_util

from jobs.backup.archive import ArchiveError, ArchiveReader, End
from jobs.backup.ids import DuplicateIds
from jobs.backup.retention import BackupInfo, Retention, plan_retention
from worker.storage import Storage

SUFFIX = {"gzip": ".archive.gz", "zstd": ".archive.zst", "none": ".archive"}
MANIFEST, VERIFIED = ".manifest.json", ".verified.json"
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_DIGEST_MASK = (1 << 128) - 1
_LENGTH = struct.Struct("<i")

MANIFEST_FORMAT = "opskeeper-backup/2"
"""/2: content digests with xxh3-128 (`digest_algorithm`); /1 manifests (BLAKE2b-128) still verify."""
DIGEST = "xxh3-128"
_HASHES: dict[str, Callable[[Any], int]] = {
    "xxh3-128": xxhash.xxh3_128_intdigest,
    "blake2b-128": lambda document: int.from_bytes(hashlib.blake2b(document, digest_size=16).digest(), "big"),
}

_gzip_reader: Any
_deflate: Any
try:  # ISA-L: ordinary gzip, about 10x faster than zlib at zlib level 6's ratio (bench/pipeline.py)
    from isal import igzip as _gzip_reader
    from isal import isal_zlib as _deflate

    GZIP_ENGINE, GZIP_LEVEL = "isa-l", 1
except ImportError:  # no wheel for this platform: the standard library's zlib
    _gzip_reader, _deflate = gzip, zlib
    GZIP_ENGINE, GZIP_LEVEL = "zlib", 6
ZSTD_LEVEL = 1
CORRUPT_STREAM: tuple[type[Exception], ...] = (
    EOFError, zlib.error, cast(type[Exception], _deflate.error), gzip.BadGzipFile, zstandard.ZstdError,
)  # fmt: skip
"""What a damaged compressed stream raises, whichever decompressor read it."""
_VERIFY_STREAM: tuple[type[Exception], ...] = (OSError, *CORRUPT_STREAM)


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


def digest_update(total: int, document: bytes | memoryview, algorithm: str = DIGEST) -> int:
    """Fold one document into an order-independent content digest (a sum of 128-bit hashes mod 2^128).

    A restore recomputes it from the restored documents: same documents, same digest, in any
    order; one changed, missing or extra document changes it. xxh3-128 is not a cryptographic
    hash: the digest proves a restore complete and unaltered by accident, while the archive's
    integrity against tampering rests on its sha256 in the manifest.
    """
    return (total + _HASHES[algorithm](document)) & _DIGEST_MASK


def digest_batch(total: int, batch: bytes | memoryview, algorithm: str = DIGEST) -> tuple[int, int]:
    """digest_update() over every document of a raw batch, in one tight loop; (new total, documents)."""
    hash_of, unpack, view = _HASHES[algorithm], _LENGTH.unpack_from, memoryview(batch)
    pos, end, count = 0, len(view), 0
    while pos < end:
        (length,) = unpack(view, pos)
        total += hash_of(view[pos : pos + length])
        pos += length
        count += 1
    return total & _DIGEST_MASK, count


def digest_algorithm(manifest: dict[str, Any] | None) -> str:
    """The content digest a manifest's figures were made with (BLAKE2b-128 before format /2)."""
    if manifest is None:
        return DIGEST
    return str(manifest.get("digest_algorithm") or ("blake2b-128" if manifest.get("format") == "opskeeper-backup/1"
                                                   else DIGEST))  # fmt: skip


class CompressingSink:
    """Compresses what is written and passes it to an upload, hashing what is stored."""

    def __init__(self, upload: Any, compression: str) -> None:
        self._upload = upload
        self.sha256 = hashlib.sha256()
        self.raw_bytes = 0
        self.stored_bytes = 0
        self._compressor: Any = None
        self._threaded: Any = None
        if compression == "gzip" and GZIP_ENGINE == "isa-l":
            # One gzip stream over the whole archive (what `mongodump --archive --gzip` writes), compressed in
            # 1 MiB blocks on a thread of ISA-L's own, which runs without the GIL: the next batch's framing, CRCs
            # and digests overlap this one's compression instead of waiting for it. Each block is compressed with
            # the previous 32 KiB as its dictionary, so the ratio stays the single stream's. Measured on 2 cores,
            # the backup pipeline with no server in the way (200 MB of bench/pipeline.py's documents, median of 6):
            # 391 MB/s against 359 MB/s compressing in the caller's thread, the same size within 0.1%.
            from isal import igzip_threaded

            opener: Any = igzip_threaded.open  # untyped
            self._threaded = opener(_Emitter(self), "wb", compresslevel=GZIP_LEVEL, threads=1)
        elif compression == "gzip":
            self._compressor = _deflate.compressobj(GZIP_LEVEL, _deflate.DEFLATED, 31)
        elif compression == "zstd":
            # Level 1: faster than 3 and, on BSON, no larger (bench/pipeline.py: 2.11 against 2.08).
            self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

    def write(self, data: bytes | memoryview) -> int:
        self.raw_bytes += len(data)
        if self._threaded is not None:
            self._threaded.write(data)  # copied before it returns: the caller may reuse its buffer
        else:
            self._emit(self._compressor.compress(data) if self._compressor else bytes(data))
        return len(data)

    def close(self) -> None:
        """Flush the compressor's tail (and wait for the compressing thread to write it)."""
        if self._threaded is not None:
            self._threaded.close()
        elif self._compressor is not None:
            self._emit(self._compressor.flush())

    def _emit(self, data: bytes | memoryview) -> None:
        if data:
            self.sha256.update(data)
            self.stored_bytes += len(data)
            self._upload.write(bytes(data))


class _Emitter(io.RawIOBase):
    """Where ISA-L's threaded writer puts the compressed bytes: the sink's hash, count and upload, one writer at a
    time (its compressing thread, and the caller's for the header and the trailer, never both at once)."""

    def __init__(self, sink: CompressingSink) -> None:
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sink._emit(data)
        return len(data)


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

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` from the stream (the ISA-L gzip reader asks this way)."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end, so the hash covers the whole object."""
        while self.read(1 << 20):
            pass


def decompressed(reader: HashingReader) -> BinaryIO:
    """The archive inside, whatever the compression (detected from the magic bytes)."""
    magic = reader.peek(4)
    stream = cast(BinaryIO, reader)  # it has the read() these readers use
    if magic.startswith(_GZIP_MAGIC):
        return cast(BinaryIO, _gzip_reader.GzipFile(fileobj=stream, mode="rb"))
    if magic == _ZSTD_MAGIC:
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True))
    return stream


@dataclass
class VerifyReport:
    """What `backups verify` found."""

    namespaces: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    """What was not checked (duplicate _ids past the limit): named, never passed off as checked."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def public(self) -> dict[str, Any]:
        return {"ok": self.ok, "namespaces": self.namespaces, "problems": self.problems, "unchecked": self.unchecked}


def verify(
    raw: BinaryIO, manifest: dict[str, Any] | None = None, progress: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Stream an archive: every frame, CRC and count, every announced namespace ended; sha256 and counts
    against the manifest.

    `progress(stored_bytes_read, documents_seen)` is called as the archive is read.
    """
    report = VerifyReport()
    algorithm = digest_algorithm(manifest)
    reader = HashingReader(raw)
    archive = ArchiveReader(decompressed(reader))
    digests: dict[str, int] = {}
    ended: set[str] = set()
    ids = DuplicateIds()
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
            digests[event.ns] = digest_batch(digests.get(event.ns, 0), event.data, algorithm)[0]
            if event.db:  # not mongodump's oplog (database ""), whose entries are not documents with an _id
                ids.add(event.ns, event.data)
            if progress is not None:
                progress(reader.count, sum(archive.documents.values()))
    except ArchiveError as exc:
        report.problems.append(str(exc))
    except _VERIFY_STREAM as exc:
        report.problems.append(f"compressed stream is corrupt near stored byte {reader.count}: {exc}")
    report.problems += ids.problems()
    report.unchecked += ids.gaps()
    if not report.problems:
        reader.drain()  # so the sha256 covers the whole stored object
    for ns in sorted(set(archive.documents) | ended):
        report.namespaces.append({"ns": ns, "documents": archive.documents.get(ns, 0),
                                  "crc_ok": archive.crc_ok.get(ns, False)})  # fmt: skip
        report.digests[ns] = f"{digests.get(ns, 0):032x}"
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


ORPHAN_AGE = timedelta(minutes=10)
"""An archive without a manifest this old is a failed run's (its manifest comes seconds after it)."""
_MAX_MANIFEST = 64 * 1024 * 1024


@dataclass
class Listing:
    """What a job's storage holds: complete backups, and what could not be counted as one."""

    entries: list[BackupEntry] = field(default_factory=list)
    """Complete backups, newest first."""
    problems: list[str] = field(default_factory=list)
    """Manifests skipped as unreadable, each with its key and the reason."""
    orphans: list[str] = field(default_factory=list)
    """Archives older than ORPHAN_AGE that have no manifest: a run failed after storing them."""


def scan(storage: Storage, job_id: str | None = None, now: datetime | None = None) -> Listing:
    """Every complete backup, newest first; a corrupt manifest is reported and skipped.

    Keys come from the listing itself, never from a manifest's text: a manifest can only
    speak for the archive beside it.
    """
    now = now or datetime.now(UTC)
    objects = storage.objects(f"{job_id}/" if job_id else "")
    by_key = {o.key: o for o in objects}
    listing = Listing()
    with_manifest: set[str] = set()
    for obj in objects:
        if not obj.key.endswith(MANIFEST):
            continue
        base = base_of(obj.key)
        try:
            entry = _entry(storage, obj.key, by_key)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            listing.problems.append(f"{obj.key}: unreadable manifest, skipped ({_short(exc)})")
            with_manifest.update(base + suffix for suffix in SUFFIX.values())  # never called an orphan
            continue
        with_manifest.add(entry.key)
        listing.entries.append(entry)
    for obj in objects:
        archive = any(obj.key.endswith(suffix) for suffix in SUFFIX.values())
        if archive and obj.key not in with_manifest and now - obj.modified > ORPHAN_AGE:
            listing.orphans.append(obj.key)
    listing.entries.sort(key=lambda e: e.created_at, reverse=True)
    return listing


def _entry(storage: Storage, manifest_key: str, by_key: dict[str, Any]) -> BackupEntry:
    if by_key[manifest_key].size > _MAX_MANIFEST:
        raise ValueError(f"{by_key[manifest_key].size} bytes, over the {_MAX_MANIFEST // 2**20} MiB limit")
    with storage.open(manifest_key) as stream:
        manifest = json.loads(stream.read(_MAX_MANIFEST + 1))
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    base = base_of(manifest_key)
    compression = manifest["compression"]
    if compression not in SUFFIX:
        raise ValueError(f"unknown compression {compression!r}")
    key = base + SUFFIX[compression]
    if key not in by_key:
        raise ValueError(f"its archive {key} is missing")
    created = datetime.fromisoformat(manifest["started_at"])
    if created.tzinfo is None:
        raise ValueError("started_at has no time zone")
    namespaces = manifest["namespaces"]
    return BackupEntry(
        key=key, job_id=manifest_key.split("/", maxsplit=1)[0], created_at=created,
        size_bytes=int(manifest["stored_bytes"]),
        compression=compression, collections=len(namespaces), documents=sum(int(n["documents"]) for n in namespaces),
        verified=base + VERIFIED in by_key, manifest=manifest,
    )  # fmt: skip


def _short(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no field {exc}"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def list_backups(storage: Storage, job_id: str | None = None) -> list[BackupEntry]:
    """Every complete backup, newest first (see scan() for what was skipped)."""
    return scan(storage, job_id).entries


@dataclass
class Pruned:
    """What a prune deleted, and what it found along the way."""

    gone: list[BackupEntry]
    listing: Listing

    @property
    def orphans(self) -> list[str]:
        """The archives without a manifest that went too (or would go, in a dry run)."""
        return self.listing.orphans


def prune(storage: Storage, job_id: str, policy: Retention, *, now: datetime | None = None,
          dry_run: bool = False) -> Pruned:  # fmt: skip
    """Delete the backups retention does not keep, and orphan archives. Manifest first, then the rest."""
    now = now or datetime.now(UTC)
    listing = scan(storage, job_id, now)
    infos = [BackupInfo(e.key, e.created_at, e.verified) for e in listing.entries]
    _keep, drop = plan_retention(infos, policy, now)
    doomed = {b.key for b in drop}
    gone = [e for e in listing.entries if e.key in doomed]
    if not dry_run:
        for entry in gone:
            base = base_of(entry.key)
            # The manifest goes first: if deleting stops halfway, no backup looks complete.
            for key in (base + MANIFEST, entry.key, base + VERIFIED):
                storage.delete(key)
        for key in listing.orphans:
            storage.delete(key)
    return Pruned(gone, listing)
