"""Duplicate `_id` values within one collection of an archive, found while it streams, in bounded memory.

`restore` would stop at the first duplicate with an insert error, after dropping nothing but
having spent the time; `backups verify` says so up front. Each document's `_id` element (its
BSON type and bytes; read straight from the raw document, where the server keeps `_id` first)
is hashed to 64 bits and kept in one of `BUCKETS` arrays by its low bits, 8 bytes a document; at the
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
from collections.abc import Callable

import bson

_INT32 = struct.Struct("<i")
#: Value sizes of fixed-width BSON types.
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}
_ID = b"_id\x00"
_OBJECT_ID = b"\x07" + _ID
#: Arrays per namespace: the end's check holds one array's integers at a time (an eighth of a million for
#: eight million documents).
BUCKETS = 64
LIMIT = 8_000_000
"""64 MB of hashes: enough for most apps' collections inside a 512 MB worker."""


def id_hash(doc: memoryview) -> int | None:
    """A 64-bit hash of the document's `_id` element (type and value bytes); None for a document without one."""
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
    decoded = bson.decode(bytes(doc))
    if "_id" not in decoded:
        return None
    return hash(bson.encode({"_id": decoded["_id"]})[4:-1])  # the element alone: the bytes the fast path hashes


class DuplicateIds:
    """Feed each namespace's raw batches; `problems()` at the end names each namespace with duplicates."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.seen = 0
        self.unchecked: dict[str, int] = {}
        self._arrays: dict[str, list[array[int]]] = {}
        self._buckets: dict[str, list[Callable[[int], None]]] = {}

    def add(self, ns: str, batch: bytes | memoryview) -> None:
        """Take a raw batch of `ns`'s documents.

        The loop is verify's hottest after the digest's, so it slices bytes (cheaper than a memoryview's slices
        here), appends through bound methods, and spreads over `BUCKETS` arrays by the low bits. Folding it into
        the digest's loop was measured: no faster.
        """
        appends = self._buckets.get(ns)
        if appends is None:
            arrays = [array("q") for _ in range(BUCKETS)]
            self._arrays[ns] = arrays
            appends = self._buckets[ns] = [a.append for a in arrays]
        data = batch if isinstance(batch, bytes) else bytes(batch)
        unpack, pos, end, mask = _INT32.unpack_from, 0, len(data), BUCKETS - 1
        while pos < end:
            (length,) = unpack(data, pos)
            if self.seen >= self.limit:
                self.unchecked[ns] = self.unchecked.get(ns, 0) + 1
                pos += length
                continue
            head = data[pos + 4 : pos + 21]
            if head.startswith(_OBJECT_ID):  # the common case inline: an ObjectId first, as the server writes it
                key = hash(head)
            else:
                found = id_hash(memoryview(data)[pos : pos + length])
                if found is None:  # no _id at all: nothing a unique index would refuse
                    pos += length
                    continue
                key = found
            appends[key & mask](key)
            self.seen += 1
            pos += length

    def problems(self) -> list[str]:
        """`ns: N documents share an _id with another` for each namespace that has any."""
        found = []
        for ns, arrays in sorted(self._arrays.items()):
            repeated = sum(len(b) - len(set(b)) for b in arrays)
            if repeated:
                found.append(f"{ns}: {repeated} document(s) repeat an _id another document of the collection has "
                             "(a restore would stop at the first)")  # fmt: skip
        return found

    def gaps(self) -> list[str]:
        """What was not checked for duplicates, when the archive was larger than the limit."""
        return [f"{ns}: {n} document(s) past the first {self.limit:,} of the archive were not checked for duplicate "
                "_id values" for ns, n in sorted(self.unchecked.items())]  # fmt: skip
