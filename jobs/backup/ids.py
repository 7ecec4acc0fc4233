"""Duplicate `_id` values within one collection of an archive, found while it streams, in bounded memory.

`restore` would stop at the first duplicate with an insert error, after dropping nothing but
having spent the time; `backups verify` says so up front. Each document's `_id` element (its
BSON type and bytes; read straight from the raw document, where the server keeps `_id` first)
is hashed to 64 bits and kept in one of 256 arrays by its top byte, 8 bytes a document; at the
end each array is checked on its own, so the check never holds more than one array's Python
integers at a time. Two different `_id`s share a 64-bit hash with a chance near n²/2⁶⁵ (10⁻⁶ for
ten million documents); such a pair is reported as a duplicate, which errs on the side of a
backup not called good. BSON-equal values of different types (the int 1 and the double 1.0,
which a unique index also refuses together) are not caught: they differ byte for byte.

Past `limit` documents in all, the rest go unchecked and the report says so.
"""

from __future__ import annotations

import struct
from array import array

import bson

_INT32 = struct.Struct("<i")
#: Value sizes of fixed-width BSON types.
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}
_ID = b"_id\x00"
LIMIT = 8_000_000
"""64 MB of hashes: enough for most apps' collections inside a 512 MB worker."""


def id_hash(doc: memoryview) -> int:
    """A 64-bit hash of the document's `_id` element (type and value bytes)."""
    kind = doc[4]
    if doc[5:9] == _ID:
        size = _FIXED.get(kind)
        if size is None and kind in (0x02, 0x0D, 0x0E):  # string, JavaScript, symbol: int32 length + bytes
            size = 4 + _INT32.unpack_from(doc, 9)[0]
        elif size is None and kind in (0x03, 0x04):  # document, array: their own int32 length
            size = _INT32.unpack_from(doc, 9)[0]
        elif size is None and kind == 0x05:  # binary: length, subtype, bytes
            size = 5 + _INT32.unpack_from(doc, 9)[0]
        if size is not None:
            return hash(doc[4 : 9 + size].tobytes())  # type, the name `_id` (the same in all) and the value
    # `_id` not first (not what a server writes): decode this one document to find it.
    value = bson.decode(bytes(doc)).get("_id")
    return hash(bson.encode({"_id": value}))


class DuplicateIds:
    """Feed each namespace's raw batches; `problems()` at the end names each namespace with duplicates."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.seen = 0
        self.unchecked: dict[str, int] = {}
        self._buckets: dict[str, list[array[int]]] = {}

    def add(self, ns: str, batch: bytes | memoryview) -> None:
        """Take a raw batch of `ns`'s documents. (Folding verify's digest into this loop was measured: no faster.)"""
        buckets = self._buckets.get(ns)
        if buckets is None:
            buckets = self._buckets[ns] = [array("q") for _ in range(256)]
        view, unpack, pos, end = memoryview(batch), _INT32.unpack_from, 0, len(batch)
        while pos < end:
            (length,) = unpack(view, pos)
            if self.seen >= self.limit:
                self.unchecked[ns] = self.unchecked.get(ns, 0) + 1
            else:
                # The common case inline (an ObjectId first, as the server writes it): hashing the bytes in place.
                if view[pos + 4] == 0x07 and view[pos + 5 : pos + 9] == _ID:
                    key = hash(view[pos + 4 : pos + 21].tobytes())
                else:
                    key = id_hash(view[pos : pos + length])
                buckets[(key >> 56) & 0xFF].append(key)
                self.seen += 1
            pos += length

    def problems(self) -> list[str]:
        """`ns: N documents share an _id with another` for each namespace that has any."""
        found = []
        for ns, buckets in sorted(self._buckets.items()):
            repeated = sum(len(b) - len(set(b)) for b in buckets)
            if repeated:
                found.append(f"{ns}: {repeated} document(s) repeat an _id another document of the collection has "
                             "(a restore would stop at the first)")  # fmt: skip
        return found

    def gaps(self) -> list[str]:
        """What was not checked for duplicates, when the archive was larger than the limit."""
        return [f"{ns}: {n} document(s) past the first {self.limit:,} of the archive were not checked for duplicate "
                "_id values" for ns, n in sorted(self.unchecked.items())]  # fmt: skip
