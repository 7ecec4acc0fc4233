"""Inserting a restore's documents: bounded batches from a pool of workers, while the archive is read.

Kept apart from restore.py, which decides what goes where and when it may be swapped in: this
module only moves batches to the server and says why the server refused one.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError

from jobs.backup.archive import ArchiveReader, End, iter_documents

Restored = Any
"""restore.Restored (source, target_db, load_coll, documents, bytes): not imported, as restore.py imports this."""

_BATCH_BYTES = 8 * 1024 * 1024
_BATCH_DOCS = 5000
PARALLEL = 4
"""Batches inserted at once, mongorestore's default for --numParallelCollections."""
_IN_FLIGHT_BYTES = 24 * 1024 * 1024
"""Documents queued or being inserted, whatever `parallel` is: four of the usual batches (5,000 documents of
about 1.2 KB), three of 8 MB, one 16 MiB document at a time. A batch being inserted costs two to three times its
size, with pymongo's encoded message: this keeps a restore of 16 MiB documents under 200 MB."""


class InsertError(Exception):
    """The server refused documents; the message names the collection and why, never the documents."""


def load(archive: ArchiveReader, inserter: Inserter, by_data_ns: dict[str, Restored],
          tick: Callable[[int], None]) -> None:  # fmt: skip
    """Hand the documents to the inserters in bounded batches, per namespace, while the next are read; a
    namespace's EOF queues its index build behind its last batch. `tick(sent)` after each block of the archive."""
    pending: dict[str, tuple[list[RawBSONDocument], list[int]]] = {}
    sent = 0
    for event in archive.events():
        target = by_data_ns.get(event.ns)
        if target is None:
            continue
        if isinstance(event, End):
            batch, size = pending.pop(event.ns, ([], [0]))
            inserter.submit(target, batch, size[0])
            inserter.finish(target)
            continue
        batch, size = pending.setdefault(event.ns, ([], [0]))
        for doc in iter_documents(event.data):
            batch.append(RawBSONDocument(bytes(doc)))
            sent += 1
            size[0] += len(doc)
            if len(batch) >= _BATCH_DOCS or size[0] >= _BATCH_BYTES:
                inserter.submit(target, batch, size[0])
                batch, size = pending[event.ns] = ([], [0])
        tick(sent)


class Inserter:
    """`workers` threads inserting batches of any namespace while the archive is read, as mongorestore's
    parallel collections do; a namespace's index build runs in the pool once its last batch is in.

    Memory is bounded in bytes, not batches: queued and inserting batches hold at most _IN_FLIGHT_BYTES
    between them (one batch is always let through, so a 16 MiB document still goes), whatever the
    archive and however many workers. Tasks leave the queue in order, so when a worker takes a
    namespace's index build every batch of it has been taken: it waits only for those to end.
    """

    def __init__(self, client: Any, workers: int, build: Callable[[Any, Restored], None]) -> None:
        self._client = client
        self._build = build
        self._queue: queue.SimpleQueue[tuple[Restored, list[RawBSONDocument] | None, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._busy: dict[int, int] = {}
        self._in_flight = 0
        self._state = threading.Condition()
        self._threads = [threading.Thread(target=self._work, name=f"restore-insert-{n}", daemon=True)
                         for n in range(workers)]  # fmt: skip
        self.index_s = 0.0
        """Time spent building indexes, summed over namespaces (the builds overlap the load)."""

    def __enter__(self) -> Inserter:
        for thread in self._threads:
            thread.start()
        return self

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            target, batch, size = task
            try:
                if self._error is None:
                    if batch is None:
                        self._wait_until_loaded(id(target))
                        started = time.monotonic()
                        self._build(self._client, target)
                        with self._state:
                            self.index_s += time.monotonic() - started
                    else:
                        _flush(self._client, target, batch, size)
            except BaseException as exc:  # noqa: BLE001 - raised in the reading thread
                self._error = self._error or exc
            finally:
                loaded = batch is not None
                # An idle worker must not keep its last batch alive while it waits for the next.
                task = batch = None
                with self._state:
                    if loaded:
                        self._busy[id(target)] -= 1
                        self._in_flight -= size
                    self._state.notify_all()

    def _wait_until_loaded(self, key: int) -> None:
        with self._state:
            self._state.wait_for(lambda: not self._busy.get(key) or self._error is not None)

    def submit(self, target: Restored, batch: list[RawBSONDocument], size: int) -> None:
        """Queue a batch of `size` bytes, once the batches in flight leave room for it."""
        with self._state:
            self._state.wait_for(lambda: self._in_flight + size <= _IN_FLIGHT_BYTES or not self._in_flight
                                 or self._error is not None)  # fmt: skip
            if self._error is not None:
                raise self._error
            if not batch:
                return
            self._busy[id(target)] = self._busy.get(id(target), 0) + 1
            self._in_flight += size
        self._queue.put((target, batch, size))

    def finish(self, target: Restored) -> None:
        """Build `target`'s indexes once its batches are in (a staging collection's, or a scratch one's)."""
        if self._error is not None:
            raise self._error
        if not target.skipped and target.type != "view":
            self._queue.put((target, None, 0))

    def __exit__(self, *exc: object) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


def _flush(client: Any, item: Restored, batch: list[RawBSONDocument], size: int) -> None:
    collection = client[item.target_db][item.load_coll]
    try:
        collection.insert_many(batch, ordered=False)
    except BulkWriteError as exc:
        raise InsertError(f"{item.source}: {_rejected(exc)}") from None
    item.documents += len(batch)
    item.bytes += size


def _rejected(exc: BulkWriteError) -> str:
    """Why the server refused documents, never quoting them (a duplicate key may be personal data)."""
    errors = exc.details.get("writeErrors", [])
    codes = sorted({e.get("code") for e in errors}, key=str)
    if codes == [11000]:
        index = re.search(r"index: (\S+)", errors[0].get("errmsg", ""))
        where = f" on index {index.group(1)}" if index else ""
        return f"{len(errors)} document(s) in a batch have a duplicate key{where} (values not shown)"
    if codes == [121]:
        return f"{len(errors)} document(s) failed the collection's validator (values not shown)"
    return f"the server rejected {len(errors)} document(s) (error codes {', '.join(map(str, codes))})"
