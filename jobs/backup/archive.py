"""The mongodump archive format (`mongodump --archive`), read and written byte for byte.

Layout (all integers little-endian; see shared/docs/reference.md §1):
MAGIC, header doc, prelude docs (one per namespace), TERM, then segments — a namespace
header, raw BSON documents, TERM — and per namespace one EOF header carrying the CRC-64/XZ
of all its documents, then TERM. Documents pass through as raw bytes: nothing is decoded.
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
MIN_DOC, MAX_DOC = 5, 16 * 1024 * 1024
_INT32 = struct.Struct("<i")


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

    def _read(self, size: int, what: str, ns: str | None = None) -> bytes:
        data = self._in.read(size)
        while len(data) < size:  # a stream may return short reads before its end
            more = self._in.read(size - len(data))
            if not more:
                raise ArchiveError(f"archive truncated: expected {what}", self.offset + len(data), ns)
            data += more
        self.offset += size
        return data

    def _doc(self, what: str, ns: str | None = None, first4: bytes | None = None) -> bytes:
        start = self.offset - (4 if first4 is not None else 0)
        head = first4 if first4 is not None else self._read(4, what, ns)
        (length,) = _INT32.unpack(head)
        if not MIN_DOC <= length <= MAX_DOC:
            raise ArchiveError(f"bad {what} length {length}", start, ns)
        body = self._read(length - 4, what, ns)
        if body[-1:] != b"\x00":
            raise ArchiveError(f"{what} does not end with a NUL byte", start, ns)
        return head + body

    def read_prelude(self) -> Header:
        """Magic, header and preludes; returns the header."""
        if self._read(4, "magic number") != MAGIC:
            raise ArchiveError("not a mongodump archive (bad magic number)", 0)
        doc = bson.decode(self._doc("header"))
        self.header = Header(doc["server_version"], doc["tool_version"], doc["concurrent_collections"],
                             doc["version"])  # fmt: skip
        while True:
            head = self._read(4, "prelude or terminator")
            if head == TERM:
                break
            pre = bson.decode(self._doc("prelude", first4=head))
            self.preludes.append(Prelude(pre["db"], pre["collection"], pre.get("metadata", ""),
                                         pre.get("size", 0), pre.get("type")))  # fmt: skip
        return self.header

    def events(self) -> Iterator[Event]:
        """Segments and EOFs, after checking each document's frame and each namespace's CRC."""
        if self.header is None:
            self.read_prelude()
        closed: set[str] = set()
        previous_term = True
        while True:
            head = self._in.read(4)
            if not head:
                return
            if len(head) < 4:
                raise ArchiveError("archive truncated inside a namespace header", self.offset)
            self.offset += 4
            if head == TERM:
                if previous_term:
                    raise ArchiveError("two terminators in a row", self.offset - 4)
                previous_term = True
                continue
            previous_term = False
            nsh = bson.decode(self._doc("namespace header", first4=head))
            ns = f"{nsh['db']}.{nsh['collection']}"
            if ns in closed:
                raise ArchiveError("namespace reopened after its EOF", self.offset, ns)
            if nsh.get("EOF"):
                stored = int(nsh.get("CRC", 0)) & 0xFFFFFFFFFFFFFFFF
                self.crc_ok[ns] = stored == self._crc.get(ns, 0)
                self.crc_values[ns] = stored
                closed.add(ns)
                if self._read(4, "terminator after EOF", ns) != TERM:
                    raise ArchiveError("no terminator after EOF", self.offset - 4, ns)
                previous_term = True
                yield End(nsh["db"], nsh["collection"], stored)
                continue
            chunks = []
            while True:
                first = self._read(4, "document or terminator", ns)
                if first == TERM:
                    break
                doc = self._doc("document", ns, first4=first)
                chunks.append(doc)
            data = b"".join(chunks)
            self.documents[ns] = self.documents.get(ns, 0) + len(chunks)
            self.bytes[ns] = self.bytes.get(ns, 0) + len(data)
            if data:
                self._crc[ns] = crc64(data, self._crc.get(ns))
            previous_term = True
            yield Segment(nsh["db"], nsh["collection"], data)
