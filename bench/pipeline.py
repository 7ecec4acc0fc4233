"""The backup pipeline's ceiling on one core, with no server in the way, printed as one JSON line.

Realistic documents (200 B to 20 KB, nested, with arrays: bench/backup.py's mix) are generated
in memory and cut into raw batches as `find_raw_batches` hands them over. They then go through
the backup job's own per-collection code: the archive writer, CRC-64, the content digest and the
compressor, into a sink that only counts. Then the stored bytes go back through `verify()`, the
restore side's reader (decompress, frames, CRCs, digests). Both are reported in MB of BSON per
second for each compression, beside the bare compressor (and decompressor) on the same bytes: the
limit. The process is pinned to one core.

`--root DIR` runs another checkout's code (e.g. an older commit) on the same data, for an A/B.
Targets (issue 20): gzip >= 400 MB/s, zstd >= 500 MB/s, none >= 800 MB/s; verify >= 1.5x the
code before issue 20.

Usage: python bench/pipeline.py [--mb 200] [--root DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def documents(megabytes: float, seed: int = 7) -> list[bytes]:
    """BSON documents of bench/backup.py's shapes, about `megabytes` in all."""
    import bson
    from backup import document  # bench/backup.py: the same documents as the server benchmarks

    rnd = random.Random(seed)  # noqa: S311 - test data, not secrets
    docs, total, i = [], 0, 0
    while total < megabytes * 1e6:
        i += 1
        # An ObjectId `_id` first, as a server hands documents over (verify checks _ids for duplicates).
        docs.append(bson.encode({"_id": bson.ObjectId(i.to_bytes(12, "big")), **document(rnd, i)}))
        total += len(docs[-1])
    return docs


def batches(docs: list[bytes], batch_docs: int = 1000) -> list[bytes]:
    """Raw batches as the server returns them: concatenated documents, up to 16 MiB or `batch_docs` each."""
    out, current, size = [], [], 0
    for doc in docs:
        if current and (len(current) >= batch_docs or size + len(doc) > 16 * 1024 * 1024):
            out.append(b"".join(current))
            current, size = [], 0
        current.append(doc)
        size += len(doc)
    if current:
        out.append(b"".join(current))
    return out


class _Collection:
    """What the backup job asks of a collection: its raw batches (here from memory)."""

    def __init__(self, raw: list[bytes]) -> None:
        self.raw = raw

    def find_raw_batches(self, *_args: Any, **_kwargs: Any) -> list[bytes]:
        return self.raw


class _Source(dict[str, Any]):
    """client[db][collection] for one in-memory collection."""

    def __init__(self, raw: list[bytes]) -> None:
        super().__init__(bench={"items": _Collection(raw)})


class _NoSnapshot:
    active = False

    def kwargs(self) -> dict[str, Any]:
        return {}


class _Counting:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def backup_side(raw: list[bytes], compression: str) -> tuple[float, bytes, dict[str, Any]]:
    """Seconds for the job's per-collection path into a counting sink; the stored bytes; the manifest."""
    from jobs.backup import catalog
    from jobs.backup.archive import ArchiveWriter, Header, Prelude
    from jobs.backup.job import BackupJob
    from jobs.backup.source import BackupOptions, Namespace
    from worker.job import JobContext

    ns = Namespace("bench", "items", "collection", '{"indexes":[]}', {}, [])
    kept = io.BytesIO()
    sink = catalog.CompressingSink(kept, compression)
    ctx = JobContext(job_id="bench", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 3600,
                     state=None, cancel=threading.Event(), log=lambda *a, **k: None)  # type: ignore[arg-type]  # fmt: skip
    job = BackupJob(BackupOptions(compression=compression))  # type: ignore[arg-type]
    started = time.process_time()
    writer = ArchiveWriter(sink)  # type: ignore[arg-type]
    writer.header(Header("8.0.0", "bench"), [Prelude("bench", "items", ns.metadata)])
    stats = job._collection(ctx, _Source(raw), ns, writer, _NoSnapshot())  # type: ignore[arg-type]
    sink.close()
    seconds = time.process_time() - started
    manifest = {"format": getattr(catalog, "MANIFEST_FORMAT", "opskeeper-backup/1"), "namespaces": [stats],
                "sha256": sink.sha256.hexdigest()}  # fmt: skip
    if hasattr(catalog, "DIGEST"):
        manifest["digest_algorithm"] = catalog.DIGEST
    return seconds, kept.getvalue(), manifest


def bare(data: bytes, compression: str) -> tuple[float, float]:
    """Seconds to compress `data` with the same compressor in 1 MiB chunks, and to decompress it."""
    from jobs.backup import catalog

    sink = _Counting()
    packer = catalog.CompressingSink(sink, compression)
    kept = io.BytesIO()
    started = time.process_time()
    for start in range(0, len(data), 1 << 20):
        packer.write(data[start : start + (1 << 20)])
    packer.close()
    packed = time.process_time() - started
    keeper = catalog.CompressingSink(kept, compression)
    keeper.write(data)
    keeper.close()
    started = time.process_time()
    reader = catalog.decompressed(catalog.HashingReader(io.BytesIO(kept.getvalue())))
    while reader.read(1 << 20):
        pass
    return packed, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as a Render starter instance has
    from jobs.backup.catalog import verify

    docs = documents(args.mb)
    raw = batches(docs)
    size = sum(len(b) for b in raw)
    joined = b"".join(raw)
    figures: dict[str, Any] = {"bench": "pipeline", "code": str(args.root.resolve()), "bson_mb": round(size / 1e6, 1)}
    try:
        from jobs.backup.catalog import GZIP_ENGINE, GZIP_LEVEL

        figures["gzip_engine"] = f"{GZIP_ENGINE} level {GZIP_LEVEL}"
    except ImportError:
        figures["gzip_engine"] = "zlib level 6"
    for compression in ("gzip", "zstd", "none"):
        seconds, stored, manifest = backup_side(raw, compression)
        started = time.process_time()
        report = verify(io.BytesIO(stored), manifest)
        verify_s = time.process_time() - started
        packed, unpacked = bare(joined, compression)
        figures[compression] = {
            "backup_mb_s": round(size / seconds / 1e6, 1),
            "bare_compressor_mb_s": round(size / max(packed, 1e-9) / 1e6, 1),
            "verify_mb_s": round(size / verify_s / 1e6, 1),
            "bare_decompressor_mb_s": round(size / max(unpacked, 1e-9) / 1e6, 1),
            "ratio": round(size / len(stored), 2),
            "verify_ok": report.ok,
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
