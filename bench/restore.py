"""Restore throughput, memory and the drill's time split, printed as one JSON line.

A SecantusDB daemon runs in its own process with the dataset of bench/backup.py (500 MB of
BSON by default), backed up once without compression. That archive is then rewritten the
way mongodump lays one out: two namespaces in interleaved segments of up to 160 MB each
(mongodump writes one segment per uninterrupted run of a collection). Then, each in a fresh
child process, on that mongodump-style archive:
- the baseline: the archive's raw documents inserted with `insert_many(ordered=False)` in
  batches, into the same server, in the same run;
- `restore()` through staging collections swapped in at the end (what `opskeeper restore`
  does), and `restore(staging=False)` straight into the target (the old way), same data;
- `verify()` against its manifest, and a restore drill of it, with their time split.
Targets (issues 5 and 13): restore >= 0.85 of the baseline; staging >= 0.9 of direct; peak
RSS of verify, restore and the drill <= 150 MB each.

Usage: python bench/restore.py [--mb 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def insert_baseline(client: Any, target: str, archive: str) -> int:
    """The archive's raw documents inserted in batches of 5,000, unordered: the floor a restore is held to."""
    from bson.raw_bson import RawBSONDocument

    from jobs.backup.archive import ArchiveReader, Segment, iter_documents

    size = 0
    with Path(archive).open("rb") as stream:
        reader = ArchiveReader(stream)
        reader.read_prelude()
        batch: list[RawBSONDocument] = []
        for event in reader.events():
            if isinstance(event, Segment):
                for doc in iter_documents(event.data):
                    batch.append(RawBSONDocument(bytes(doc)))
                    size += len(doc)
                    if len(batch) >= 5000:
                        client[target].users.insert_many(batch, ordered=False)
                        batch = []
        if batch:
            client[target].users.insert_many(batch, ordered=False)
    return size


def child(mode: str, uri: str, archive: str, storage: str) -> None:
    """One measurement in its own process."""
    from pymongo import MongoClient

    from jobs.backup.drill import DrillJob, DrillOptions
    from jobs.backup.restore import restore
    from jobs.backup.source import BackupOptions
    from worker.job import JobContext
    from worker.ledger import JobState, SqliteLedger
    from worker.schedule import JobSpec
    from worker.timespec import parse_schedule

    client: Any = MongoClient(uri)
    target = f"bench_{mode}_{uuid.uuid4().hex[:6]}"
    result: dict[str, Any] = {}
    started = time.perf_counter()
    if mode == "baseline":
        result["bytes"] = insert_baseline(client, target, archive)
    elif mode in ("restore", "restore-direct"):
        with Path(archive).open("rb") as stream:
            report = restore(stream, client, lambda db, coll: (target, coll), staging=mode == "restore")
        result["bytes"] = report.bytes
        result["index_s"] = report.index_s
        result["swap_s"] = report.swap_s
    elif mode == "verify":
        from jobs.backup.catalog import verify

        manifest = json.loads(Path(archive.replace(".archive", ".manifest.json")).read_text())
        with Path(archive).open("rb") as stream:
            checked = verify(stream, manifest)
        result["ok"], result["problems"] = checked.ok, checked.problems[:3]
    else:
        backup = JobSpec(id="bench", kind="backup", schedule=parse_schedule("@daily"),
                         options=BackupOptions(storage=storage, uri=uri))  # fmt: skip
        # The drill takes the newest backup of the job: the mongodump-style archive put there.
        ledger = SqliteLedger(Path(tempfile.mkdtemp()) / "l.db")
        ctx = JobContext(job_id="drill", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 3600,
                         state=JobState(ledger, "d"), cancel=threading.Event(), log=lambda *a, **k: None,
                         jobs={"bench": backup})  # fmt: skip
        outcome = DrillJob(DrillOptions(backup_job="bench", target_uri=uri)).run(ctx)
        result.update(status=outcome.status.value, **{k: outcome.details[k] for k in (
            "read_and_insert_s", "index_build_s", "verification_s", "recovery_s", "bytes")})  # fmt: skip
    result["seconds"] = time.perf_counter() - started
    from backup import peak_rss_mb  # bench/backup.py

    result["peak_rss_mb"] = peak_rss_mb()
    if mode not in ("drill", "verify"):
        client.drop_database(target)
    print(json.dumps(result))


SEGMENT = 160 * 1000 * 1000


def mongodump_style(native: Path, out: Path) -> tuple[str, list[int]]:
    """Rewrite our archive as mongodump lays one out: users_a and users_b in interleaved segments of up to
    160 MB; with a manifest, so verify and the drill can check it. Returns its path and segment sizes."""
    import hashlib

    from jobs.backup.archive import ArchiveReader, ArchiveWriter, Header, Prelude, Segment, crc64, iter_documents
    from jobs.backup.catalog import DIGEST, MANIFEST_FORMAT, digest_update

    out.parent.mkdir(parents=True, exist_ok=True)
    names = ("users_a", "users_b")
    crc: dict[str, int | None] = dict.fromkeys(names)
    stats = {n: {"documents": 0, "bytes": 0, "digest": 0} for n in names}
    pending: dict[str, list[bytes]] = {n: [] for n in names}
    sizes: dict[str, int] = dict.fromkeys(names, 0)
    segments: list[int] = []
    sha = hashlib.sha256()

    class Hashing:
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def write(self, data: bytes) -> int:
            sha.update(data)
            return int(self.stream.write(data))

    with native.open("rb") as source, out.open("wb") as raw:
        reader = ArchiveReader(source)
        reader.read_prelude()
        writer = ArchiveWriter(Hashing(raw))  # type: ignore[arg-type]
        writer.header(Header("8.0.0", "mongodump-style"), [Prelude("bench_source", n, '{"indexes":[]}') for n in names])

        def flush(name: str) -> None:
            data = b"".join(pending[name])
            writer.segment("bench_source", name, data)
            crc[name] = crc64(data, crc[name])
            segments.append(len(data))
            pending[name], sizes[name] = [], 0

        i = 0
        for event in reader.events():
            if not isinstance(event, Segment):
                continue
            for doc in iter_documents(event.data):
                name = names[(i // 50_000) % 2]  # runs of 50,000 documents, alternating
                i += 1
                pending[name].append(bytes(doc))
                sizes[name] += len(doc)
                stats[name]["documents"] += 1
                stats[name]["bytes"] += len(doc)
                stats[name]["digest"] = digest_update(stats[name]["digest"], doc)
                if sizes[name] >= SEGMENT:
                    flush(name)
        for name in names:
            if pending[name]:
                flush(name)
            writer.end("bench_source", name, crc[name] or 0)
    manifest = {
        "format": MANIFEST_FORMAT, "digest_algorithm": DIGEST, "job_id": "bench", "key": f"bench/{out.name}",
        "compression": "none",
        "started_at": "2026-01-01T00:00:00+00:00", "stored_bytes": out.stat().st_size, "sha256": sha.hexdigest(),
        "namespaces": [{"ns": f"bench_source.{n}", "data_ns": f"bench_source.{n}", "type": "collection",
                        "documents": stats[n]["documents"], "bytes": stats[n]["bytes"], "crc": f"{crc[n] or 0:016x}",
                        "digest": f"{stats[n]['digest']:032x}", "indexes": []} for n in names],
    }  # fmt: skip
    out.with_name(out.name.replace(".archive", ".manifest.json")).write_text(json.dumps(manifest))
    return str(out), segments


def measure(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=500)
    parser.add_argument("--child", nargs=4, metavar=("MODE", "URI", "ARCHIVE", "STORAGE"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from backup import load, start_secantus  # bench/backup.py: the same dataset and server

    from jobs.backup.job import BackupJob
    from jobs.backup.source import BackupOptions
    from worker.job import JobContext
    from worker.ledger import JobState, SqliteLedger

    work = Path(tempfile.mkdtemp(prefix="opskeeper-bench-restore-"))
    server, uri = start_secantus(work / "db")
    try:
        loaded = load(uri, "bench_source", args.mb, seed=7)
        ledger = SqliteLedger(work / "ledger.db")
        ctx = JobContext(job_id="bench", run_id="r", scheduled_at=datetime.now(UTC),
                         deadline=time.monotonic() + 3600, state=JobState(ledger, "bench"),
                         cancel=threading.Event(), log=lambda *a, **k: None)  # fmt: skip
        storage = str(work / "backups")
        details = BackupJob(BackupOptions(uri=uri, databases=("bench_source",), storage=storage,
                                          compression="none")).run(ctx).details  # fmt: skip
        native = Path(storage) / details["key"]
        archive, segments = mongodump_style(native, Path(storage) / "bench" / "20260101T000000.000Z.archive")
        native.unlink()
        native.with_name(native.name.replace(".archive", ".manifest.json")).unlink()
        baseline = measure("baseline", uri, archive, storage)
        restored = measure("restore", uri, archive, storage)
        direct = measure("restore-direct", uri, archive, storage)
        verified = measure("verify", uri, archive, storage)
        drill = measure("drill", uri, archive, storage)
        base_rate = baseline["bytes"] / baseline["seconds"]
        rate = restored["bytes"] / restored["seconds"]
        direct_rate = direct["bytes"] / direct["seconds"]
        print(json.dumps({
            "bench": "restore",
            "bson_mb": round(loaded / 1e6, 1),
            "archive": {"layout": "mongodump-style, 2 namespaces interleaved",
                        "largest_segment_mb": round(max(segments) / 1e6, 1), "segments": len(segments)},
            "baseline_insert_many_mb_s": round(base_rate / 1e6, 1),
            "restore_mb_s": round(rate / 1e6, 1),
            "restore_ratio_to_baseline": round(rate / base_rate, 3),
            "restore_direct_mb_s": round(direct_rate / 1e6, 1),
            "staging_ratio_to_direct": round(rate / direct_rate, 3),
            # SecantusDB copies a collection to rename it; mongod renames within a database by metadata only.
            "staging_swap_s": round(restored["swap_s"], 2),
            "staging_ratio_to_direct_without_swap": round(
                restored["bytes"] / (restored["seconds"] - restored["swap_s"]) / direct_rate, 3),
            "restore_index_build_s": round(restored["index_s"], 2),
            "peak_rss_mb": {"baseline": round(baseline["peak_rss_mb"], 1), "restore": round(restored["peak_rss_mb"], 1),
                            "restore_direct": round(direct["peak_rss_mb"], 1),
                            "verify": round(verified["peak_rss_mb"], 1), "drill": round(drill["peak_rss_mb"], 1)},
            "verify_ok": verified["ok"],
            "drill": {k: drill[k] for k in ("status", "read_and_insert_s", "index_build_s", "verification_s",
                                            "recovery_s")},
        }))  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
