"""Captured changes in storage: slices, gaps, and the chain an archive and its slices make.

A capture job writes, under its own prefix in the backup job's storage:

- `<capture>/changes/<after>-<run>.bson.zst`: the change events read in one run, each a BSON
  document as the server sent it, zstd-compressed (absent when the run read none);
- `<capture>/changes/<after>-<through>.changes.json`, written only after that object is stored: the
  slice's manifest, naming its events' object. It covers every event with
  `after < clusterTime <= through`, so a slice with no events still says that nothing happened in its interval;
- `<capture>/gaps/<stamp>.gap.json`: capture could not go on past `from` (the reason is in it).

Times are cluster times as `(seconds, increment)` pairs. A resume token is never decoded (its format
is the server's own and differs between servers): the cluster time is always stored beside it.
Slices may overlap (a run killed after storing its slice and before storing its position reads the
same events again): the chain takes, at each point, the slice that reaches furthest, and replay
skips events it has applied. Nothing here talks to a database.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import zstandard
from bson.raw_bson import RawBSONDocument

from worker.storage import Storage

Time = tuple[int, int]
"""A cluster time: (seconds since the epoch, increment)."""
SLICE_FORMAT = "opskeeper-changes/1"
SLICE_SUFFIX, SLICE_MANIFEST, GAP_SUFFIX = ".bson.zst", ".changes.json", ".gap.json"
_LENGTH = struct.Struct("<i")
_MAX_EVENT = 48 * 1024 * 1024  # a change event is at most 16 MiB on mongod; a larger length is corruption
_MAX_MANIFEST = 1024 * 1024
END_OF_SECOND = 2**32 - 1


class SliceError(Exception):
    """A stored slice is not what its manifest says; the message names the key and the rule."""


def as_time(value: Any) -> Time:
    """A bson Timestamp, a {"t", "i"} mapping or a pair, as a Time."""
    if isinstance(value, dict):
        return int(value["t"]), int(value["i"])
    if hasattr(value, "time") and hasattr(value, "inc"):
        return int(value.time), int(value.inc)
    seconds, increment = value
    return int(seconds), int(increment)


def time_json(value: Time) -> dict[str, int]:
    return {"t": value[0], "i": value[1]}


def time_text(value: Time) -> str:
    """`2026-12-03T09:15:00Z (+3)`: the second, and the increment within it."""
    return f"{datetime.fromtimestamp(value[0], UTC):%Y-%m-%dT%H:%M:%SZ} (+{value[1]})"


def before(value: Time) -> Time:
    """The cluster time just before `value` (an exclusive lower bound that includes `value`)."""
    seconds, increment = value
    return (seconds, increment - 1) if increment > 0 else (seconds - 1, END_OF_SECOND)


def _name(value: Time) -> str:
    return f"{value[0]:010d}.{value[1]:010d}"


def slice_base(capture_id: str, after: Time, through: Time) -> str:
    """The key of a slice without its suffix: sortable by `after`, then `through`."""
    return f"{capture_id}/changes/{_name(after)}-{_name(through)}"


def key_times(key: str) -> tuple[Time, Time | None] | None:
    """(after, through) from a slice manifest's key, (after, None) from an events object's; None for another key.

    The names carry what pruning needs, so a capture run prunes from one listing without reading every manifest."""
    name = key.rsplit("/", 1)[-1]
    for suffix in (SLICE_MANIFEST, SLICE_SUFFIX):
        if name.endswith(suffix):
            first, _, second = name.removesuffix(suffix).partition("-")
            try:
                after = as_time(first.split("."))
                return (after, as_time(second.split("."))) if suffix == SLICE_MANIFEST else (after, None)
            except (ValueError, TypeError):
                return None
    return None


@dataclass(frozen=True)
class Slice:
    """One stored slice, as its manifest describes it."""

    key: str
    """The manifest's key."""
    after: Time
    through: Time
    events: int
    manifest: dict[str, Any]

    @property
    def data_key(self) -> str | None:
        """The object holding the events (None for a slice that covers a quiet interval)."""
        return str(self.manifest["data_key"]) if self.events else None


@dataclass(frozen=True)
class Gap:
    """Capture stopped being able to follow the server after `since`."""

    key: str
    since: Time
    reason: str
    detected_at: str


@dataclass
class Changes:
    """What a capture job has stored: its slices by `after`, its gaps, and what could not be read."""

    slices: list[Slice] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def scan_changes(storage: Storage, capture_id: str, *, gaps_only: bool = False) -> Changes:
    """Every slice and gap a capture job has stored (only its gaps, with `gaps_only`); an unreadable manifest is a
    problem, never a slice."""
    found = Changes()
    objects = storage.objects(f"{capture_id}/gaps/" if gaps_only else f"{capture_id}/")
    keys = {o.key for o in objects}
    for obj in objects:
        if not (obj.key.endswith(SLICE_MANIFEST) or obj.key.endswith(GAP_SUFFIX)):
            continue
        try:
            if obj.size > _MAX_MANIFEST:
                raise ValueError(f"{obj.size} bytes, over the {_MAX_MANIFEST} byte limit")
            with storage.open(obj.key) as stream:
                doc = json.loads(stream.read(_MAX_MANIFEST + 1))
            if obj.key.endswith(GAP_SUFFIX):
                found.gaps.append(Gap(obj.key, as_time(doc["since"]), str(doc["reason"]), str(doc["detected_at"])))
                continue
            item = Slice(obj.key, as_time(doc["after"]), as_time(doc["through"]), int(doc["events"]), doc)
            if not item.after < item.through:
                raise ValueError(f"after {item.after} is not before through {item.through}")
            if item.data_key is not None and not item.data_key.startswith(f"{capture_id}/changes/"):
                raise ValueError(f"its events {item.data_key!r} are outside {capture_id}/changes/")
            if item.data_key is not None and item.data_key not in keys:
                raise ValueError(f"its events {item.data_key} are missing")
            found.slices.append(item)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            found.problems.append(f"{obj.key}: unreadable, skipped ({exc})")
    found.slices.sort(key=lambda s: (s.after, s.through))
    found.gaps.sort(key=lambda g: g.since)
    return found


def scan_chains(storage: Storage, capture_ids: list[str]) -> Changes:
    """What several capture jobs following one backup job stored, merged in order (one chain's slices may continue
    another's after a capture job is renamed)."""
    merged = Changes()
    for capture_id in capture_ids:
        found = scan_changes(storage, capture_id)
        merged.slices += found.slices
        merged.gaps += found.gaps
        merged.problems += found.problems
    merged.slices.sort(key=lambda s: (s.after, s.through))
    merged.gaps.sort(key=lambda g: g.since)
    return merged


def chain(slices: list[Slice], start: Time) -> tuple[list[Slice], Time]:
    """The slices that cover, without a hole, from `start` on; and the time they reach.

    At each point the slice that starts at or before it and reaches furthest is taken, so overlapping
    slices (a run repeated after a kill) cost nothing but the events replay skips.
    """
    taken: list[Slice] = []
    reached = start
    while True:
        candidates = [s for s in slices if s.after <= reached < s.through]
        if not candidates:
            return taken, reached
        best = max(candidates, key=lambda s: s.through)
        taken.append(best)
        reached = best.through


# --- writing and reading a slice's events --------------------------------------------


class SliceWriter:
    """Compresses raw BSON events into an upload, hashing what is stored."""

    def __init__(self, upload: Any) -> None:
        self._upload = upload
        self._compressor = zstandard.ZstdCompressor(level=3).compressobj()
        self.sha256 = hashlib.sha256()
        self.events = self.raw_bytes = self.stored_bytes = 0

    def add(self, event: bytes) -> None:
        self.events += 1
        self.raw_bytes += len(event)
        self._emit(self._compressor.compress(event))

    def close(self) -> None:
        self._emit(self._compressor.flush())

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha256.update(data)
            self.stored_bytes += len(data)
            self._upload.write(data)


def events(storage: Storage, item: Slice) -> Iterator[RawBSONDocument]:
    """The slice's events in order, after proving the stored object is the one its manifest describes.

    The object is read twice: once to check its sha256 and count (nothing is replayed from a slice that
    fails), then to decode it, so memory holds one event at a time whatever the slice's size.
    """
    key = item.data_key
    if key is None:
        return
    digest, count = hashlib.sha256(), 0
    try:
        with storage.open(key) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != item.manifest.get("sha256"):
            raise SliceError(f"{key}: its sha256 {digest.hexdigest()} differs from the manifest's "
                             f"{item.manifest.get('sha256')}: the slice is damaged")  # fmt: skip
        with storage.open(key) as stream:
            for document in _documents(zstandard.ZstdDecompressor().stream_reader(stream), key):
                count += 1
                yield document
    except zstandard.ZstdError as exc:
        raise SliceError(f"{key}: the compressed stream is corrupt ({exc})") from None
    if count != item.events:
        raise SliceError(f"{key}: {count} events, the manifest says {item.events}")


def _documents(stream: BinaryIO, key: str) -> Iterator[RawBSONDocument]:
    while head := _exactly(stream, 4, key, allow_end=True):
        (length,) = _LENGTH.unpack(head)
        if not 5 <= length <= _MAX_EVENT:
            raise SliceError(f"{key}: an event of {length} bytes: the slice is corrupt")
        yield RawBSONDocument(head + _exactly(stream, length - 4, key))


def _exactly(stream: BinaryIO, size: int, key: str, *, allow_end: bool = False) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            if allow_end and not data:
                return b""
            raise SliceError(f"{key}: the slice ends inside an event")
        data += chunk
    return data
