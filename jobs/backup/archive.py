"""The mongodump archive format (`mongodump --archive`), read and written byte for byte.

Layout (all integers little-endian; see shared/docs/reference.md §1):
MAGIC, header doc, prelude docs (one per namespace), TERM, then segments — a namespace
header, raw BSON documents, TERM — and per namespace one EOF header carrying the CRC-64/XZ
of all its documents, then TERM. Documents pass through as raw bytes: nothing is decoded.

The reader holds at most one chunk of documents (about 1 MiB, or one document when that is
larger) whatever the archive: a real mongodump segment can hold a whole 150 MB collection.
Every metadata part has a cap, so a small hostile file cannot make it allocate much more.
An archive is complete only when every namespace its prelude announced has its EOF.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import bson
import fastcrc
from bson.int64 import Int64

MAGIC = struct.pack("<I", 0x8199E26D)
TERM = b"\xff\xff\xff\xff"
MIN_DOC, MAX_DOC = 5, 16 * 1024 * 1024 + 16 * 1024
"""mongorestore's limits; the server allows 16 KiB over 16 MiB for its own (oplog) documents."""
CHUNK_BYTES = 1024 * 1024
"""Documents are handed on in chunks of about this size: the reader's memory, bounded."""
_BLOCK = 1024 * 1024
"""How much is read from the stream at a time."""
MAX_HEADER = 64 * 1024
"""The header and each namespace header hold a few names: anything larger is not an archive."""
MAX_PRELUDE, MAX_PRELUDES_TOTAL, MAX_NAMESPACES = 4 * 1024 * 1024, 32 * 1024 * 1024, 100_000
"""One namespace's metadata (indexes, validator), all of them together, and how many."""
_INT32 = struct.Struct("<i")
_BAD_DB_CHARS = frozenset('/\\. "$\x00')


class ArchiveError(Exception):
    """The archive is malformed; the message names the namespace and byte offset."""

    def __init__(self, message: str, offset: int, namespace: str | None = None) -> None:
        self.offset = offset
        self.namespace = namespace
        where = f" in {namespace}" if namespace else ""
        super().__init__(f"{message}{where} at byte {offset}")


@dataclass(frozen=True)
class Header:
    """The archive's first document."""

    server_version: str
    tool_version: str
    concurrent_collections: int = 1
    version: str = "0.1"


@dataclass(frozen=True)
class _Namespaced:
    db: str
    collection: str

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.collection}"


@dataclass(frozen=True)
class Prelude(_Namespaced):
    """One namespace announced up front, with its `.metadata.json` text."""

    metadata: str
    size: int = 0
    type: str | None = "collection"


@dataclass(frozen=True)
class Segment(_Namespaced):
    """Some documents of one namespace: their concatenated raw BSON."""

    data: bytes


@dataclass(frozen=True)
class End(_Namespaced):
    """A namespace is complete; `crc` is CRC-64/XZ over all its documents."""

    crc: int


Event = Segment | End


def crc64(data: bytes, previous: int | None = None) -> int:
    """CRC-64/XZ (Go's crc64.ECMA table), continuing from `previous`."""
    return int(fastcrc.crc64.xz(data, initial=previous))


def signed64(value: int) -> int:
    """The CRC as mongodump stores it: the int64 bit pattern."""
    return value - (1 << 64) if value >= 1 << 63 else value


def check_namespace(db: str, collection: str) -> str | None:
    """Why MongoDB would refuse this namespace (mongod's naming rules), or None."""
    if db == "" and collection == "oplog":  # mongodump's oplog entry
        return None
    if not db or len(db.encode()) > 63:
        return "a database name must have 1 to 63 bytes"
    if bad := sorted(set(db) & _BAD_DB_CHARS):
        return f"a database name may not contain {' '.join(repr(c) for c in bad)}"
    if not collection or "\x00" in collection:
        return "a collection name must be non-empty and may not contain a NUL byte"
    if "$" in collection:
        return "a collection name may not contain '$'"
    # pymongo's own rules (what restore would meet as InvalidName, mid-run).
    if ".." in collection:
        return "a collection name may not contain '..'"
    if collection.startswith(".") or collection.endswith("."):
        return "a collection name may not start or end with '.'"
    return None


def iter_documents(data: bytes | memoryview) -> Iterator[memoryview]:
    """Each document in a run of concatenated raw BSON (no decoding)."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        (length,) = _INT32.unpack_from(view, pos)
        yield view[pos : pos + length]
        pos += length


class ArchiveWriter:
    """Writes the archive format to a binary stream, one part at a time."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def header(self, header: Header, preludes: list[Prelude]) -> None:
        """Magic, header doc and every namespace's prelude, then the terminator."""
        self._out.write(MAGIC)
        self._out.write(bson.encode({
            "concurrent_collections": header.concurrent_collections, "version": header.version,
            "server_version": header.server_version, "tool_version": header.tool_version,
        }))  # fmt: skip
        for prelude in preludes:
            doc: dict[str, object] = {"db": prelude.db, "collection": prelude.collection,
                                      "metadata": prelude.metadata, "size": prelude.size}  # fmt: skip
            if prelude.type is not None:
                doc["type"] = prelude.type
            self._out.write(bson.encode(doc))
        self._out.write(TERM)

    def segment(self, db: str, collection: str, data: bytes | memoryview) -> None:
        """A namespace header and documents (already concatenated raw BSON), then TERM."""
        self._out.write(_ns_header(db, collection, eof=False, crc=0))
        self._out.write(data)
        self._out.write(TERM)

    def end(self, db: str, collection: str, crc: int) -> None:
        """The namespace's EOF header with its CRC, then TERM."""
        self._out.write(_ns_header(db, collection, eof=True, crc=signed64(crc)))
        self._out.write(TERM)


def _ns_header(db: str, collection: str, *, eof: bool, crc: int) -> bytes:
    return bson.encode({"db": db, "collection": collection, "EOF": eof, "CRC": Int64(crc)})


class ArchiveReader:
    """Reads and checks an archive from a stream: every frame, every length, every CRC."""

    def __init__(self, stream: BinaryIO) -> None:
        self._in = stream
        self.offset = 0
        self.header: Header | None = None
        self.preludes: list[Prelude] = []
        self.documents: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.crc_ok: dict[str, bool] = {}
        self.crc_values: dict[str, int] = {}
        self._crc: dict[str, int] = {}
        self.ended: set[str] = set()
        self._announced: set[str] = set()
        # Read-ahead: the stream is read in blocks and documents are found in them, instead of
        # two small reads per document (the reader's main cost on archives of small documents).
        self._buf = b""
        self._pos = 0

    def _buffer(self, want: int) -> int:
        """Read ahead until `want` bytes are buffered or the stream ends; how many are buffered."""
        have = len(self._buf) - self._pos
        while have < want:
            chunk = self._in.read(max(_BLOCK, want - have))
            if not chunk:
                break
            self._buf = self._buf[self._pos :] + chunk
            self._pos, have = 0, len(self._buf)
        return have

    def _read(self, size: int, what: str, ns: str | None = None) -> bytes:
        if size > _BLOCK:  # a large document: straight into its own buffer
            prefix, self._buf, self._pos = self._buf[self._pos :], b"", 0
            self.offset += len(prefix)
            return self._fill(prefix, self.offset - len(prefix), size, what, ns)
        if self._buffer(size) < size:
            rest = self._buf[self._pos :]
            raise ArchiveError(f"archive truncated: expected {what}", self.offset + len(rest), ns)
        data = self._buf[self._pos : self._pos + size]
        self._pos += size
        self.offset += size
        return data

    def _big(self, head: bytes, start: int, length: int, what: str, ns: str | None) -> bytes:
        """A document over one block: what is buffered, then the rest read into one buffer."""
        prefix, self._buf, self._pos = head + self._buf[self._pos :], b"", 0
        self.offset = start + len(prefix)
        return self._fill(prefix, start, length, what, ns)

    def _fill(self, prefix: bytes, start: int, size: int, what: str, ns: str | None) -> bytes:
        """`size` bytes from `start`, `prefix` already read (a stream may return short reads before its end)."""
        have = len(prefix)
        buffer = bytearray(size)
        buffer[:have] = prefix
        view = memoryview(buffer)
        readinto = getattr(self._in, "readinto", None)  # straight into the buffer: no second copy
        while have < size:
            if readinto is not None:
                got = readinto(view[have:size])
            else:
                more = self._in.read(size - have)
                got = len(more)
                view[have : have + got] = more
            if not got:
                raise ArchiveError(f"archive truncated: expected {what}", start + have, ns)
            have += got
        view.release()
        self.offset = start + size
        return buffer  # type: ignore[return-value]  # bytes-like; one copy fewer for 16 MiB documents

    def _doc(self, what: str, ns: str | None = None, first4: bytes | None = None, cap: int = MAX_DOC) -> bytes:
        start = self.offset - (4 if first4 is not None else 0)
        head = first4 if first4 is not None else self._read(4, what, ns)
        (length,) = _INT32.unpack(head)
        if not MIN_DOC <= length <= cap:
            raise ArchiveError(f"bad {what} length {length} (the limit is {MIN_DOC} to {cap} bytes)", start, ns)
        doc = head + self._read(length - 4, what, ns) if length <= _BLOCK else self._big(head, start, length, what, ns)
        if doc[-1:] != b"\x00":
            raise ArchiveError(f"{what} does not end with a NUL byte", start, ns)
        return doc

    def read_prelude(self) -> Header:
        """Magic, header and preludes; returns the header."""
        if self._read(4, "magic number") != MAGIC:
            raise ArchiveError("not a mongodump archive (bad magic number)", 0)
        doc = self._decode(self._doc("header", cap=MAX_HEADER), "header", 4)
        try:
            concurrent = doc["concurrent_collections"]
            if not isinstance(concurrent, int):
                raise TypeError("concurrent_collections")
            self.header = Header(str(doc["server_version"]), str(doc["tool_version"]), concurrent,
                                 str(doc["version"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"the header lacks a valid field {exc}", 4) from None
        total = 0
        while True:
            head = self._read(4, "prelude or terminator")
            if head == TERM:
                break
            start = self.offset - 4
            raw = self._doc("prelude", first4=head, cap=MAX_PRELUDE)
            total += len(raw)
            if total > MAX_PRELUDES_TOTAL or len(self.preludes) >= MAX_NAMESPACES:
                raise ArchiveError(f"the prelude exceeds {MAX_PRELUDES_TOTAL // 2**20} MiB or {MAX_NAMESPACES} "
                                   "namespaces", start)  # fmt: skip
            pre = self._decode(raw, "prelude", start)
            db, coll, meta, kind = pre.get("db"), pre.get("collection"), pre.get("metadata", ""), pre.get("type")
            if not isinstance(db, str) or not isinstance(coll, str) or not isinstance(meta, str):
                raise ArchiveError("a prelude needs string db, collection and metadata", start)
            if (why := check_namespace(db, coll)) is not None:
                raise ArchiveError(f"bad namespace {db + '.' + coll!r}: {why}", start)
            size = pre.get("size", 0)
            prelude = Prelude(
                db, coll, meta, size if isinstance(size, int) else 0, kind if isinstance(kind, str) else None
            )
            if prelude.ns in self._announced:
                raise ArchiveError("namespace announced twice in the prelude", start, prelude.ns)
            self.preludes.append(prelude)
            self._announced.add(prelude.ns)
        return self.header

    def _decode(self, raw: bytes, what: str, start: int) -> dict[str, object]:
        try:
            return bson.decode(raw)
        except Exception as exc:  # noqa: BLE001 - bson raises several types for bad bytes
            raise ArchiveError(f"the {what} is not valid BSON ({type(exc).__name__})", start) from None

    def data_namespaces(self) -> list[str]:
        """Where each announced namespace's documents are: a time-series keeps them in its buckets."""
        return [f"{p.db}.system.buckets.{p.collection}" if p.type == "timeseries" else p.ns for p in self.preludes]

    def _known(self, ns: str) -> bool:
        db, _, coll = ns.partition(".")
        series = f"{db}.{coll.removeprefix('system.buckets.')}"
        return ns in self._announced or (coll.startswith("system.buckets.") and series in self._announced)

    def events(self) -> Iterator[Event]:
        """Segments (in chunks) and EOFs, after checking each document's frame and each namespace's CRC.

        Raises ArchiveError at the end when a namespace of the prelude never got its EOF.
        """
        if self.header is None:
            self.read_prelude()
        previous_term = True
        while True:
            have = self._buffer(4)
            if have == 0:
                break
            if have < 4:
                raise ArchiveError("archive truncated inside a namespace header", self.offset)
            head = self._read(4, "namespace header")
            if head == TERM:
                if previous_term:
                    raise ArchiveError("two terminators in a row", self.offset - 4)
                previous_term = True
                continue
            previous_term = False
            start = self.offset - 4
            nsh = self._decode(self._doc("namespace header", first4=head, cap=MAX_HEADER), "namespace header", start)
            db, coll = nsh.get("db"), nsh.get("collection")
            if not isinstance(db, str) or not isinstance(coll, str):
                raise ArchiveError("a namespace header needs string db and collection", start)
            ns = f"{db}.{coll}"
            if not self._known(ns):
                raise ArchiveError("namespace not announced in the prelude", start, ns)
            if ns in self.ended:
                raise ArchiveError("namespace reopened after its EOF", self.offset, ns)
            if nsh.get("EOF"):
                crc = nsh.get("CRC", 0)
                if not isinstance(crc, int):
                    raise ArchiveError("an EOF header needs an int64 CRC", start, ns)
                stored = crc & 0xFFFFFFFFFFFFFFFF
                self.crc_ok[ns] = stored == self._crc.get(ns, 0)
                self.crc_values[ns] = stored
                self.ended.add(ns)
                if self._read(4, "terminator after EOF", ns) != TERM:
                    raise ArchiveError("no terminator after EOF", self.offset - 4, ns)
                previous_term = True
                yield End(db, coll, stored)
                continue
            yield from self._segment(db, coll, ns)
            previous_term = True
        missing = [ns for ns in self.data_namespaces() if ns not in self.ended]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ArchiveError(f"archive incomplete: no EOF for {shown} (announced in the prelude)", self.offset)

    def _segment(self, db: str, coll: str, ns: str) -> Iterator[Segment]:
        """One segment's documents, a chunk at a time; at least one (maybe empty) chunk.

        Complete documents already read ahead are checked in place (length, final NUL) and
        handed on as one slice; one that crosses the block's end is read on its own.
        """
        yielded = False
        while True:
            if self._buffer(4) < 4:
                raise ArchiveError("archive truncated: expected document or terminator", self.offset, ns)
            buf, pos, start, count = self._buf, self._pos, self._pos, 0
            end = len(buf)
            while pos + 4 <= end and pos - start < CHUNK_BYTES:
                (length,) = _INT32.unpack_from(buf, pos)
                if length == -1 or pos + length > end:  # the terminator, or a document not all here yet
                    break
                if not MIN_DOC <= length <= MAX_DOC:
                    raise ArchiveError(f"bad document length {length} (the limit is {MIN_DOC} to {MAX_DOC} bytes)",
                                       self.offset + pos - start, ns)  # fmt: skip
                if buf[pos + length - 1] != 0:
                    raise ArchiveError("document does not end with a NUL byte", self.offset + pos - start, ns)
                pos += length
                count += 1
            if count:
                self._pos = pos
                self.offset += pos - start
                yield self._chunk(db, coll, ns, buf[start:pos], count)
                yielded = True
                continue
            first = self._read(4, "document or terminator", ns)
            if first == TERM:
                break
            doc = self._doc("document", ns, first4=first)
            yield self._chunk(db, coll, ns, doc, 1)
            yielded = True
        if not yielded:
            yield self._chunk(db, coll, ns, b"", 0)

    def _chunk(self, db: str, coll: str, ns: str, data: bytes, count: int) -> Segment:
        self.documents[ns] = self.documents.get(ns, 0) + count
        self.bytes[ns] = self.bytes.get(ns, 0) + len(data)
        if data:
            self._crc[ns] = crc64(data, self._crc.get(ns))
        return Segment(db, coll, data)
