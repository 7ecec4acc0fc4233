"""Restore against mongorestore, throughput, memory and the drill's time split, printed as one JSON line.

A SecantusDB daemon runs in its own process, loaded with bench/backup.py's realistic documents
in two collections (`users_a`, `users_b`, 50,000 each by default) with a secondary index each.
Two archives of it are restored:
- a mongodump-written one: the real `mongodump --archive --gzip` with MONGODUMP=/path (built as
  reference §1a says), else our gzip backup rewritten the way mongodump lays one out (the two
  collections in interleaved segments of up to 160 MB, one segment per uninterrupted run);
- our own gzip backup, as the backup job writes it.
Each restore runs in a fresh child process (wall, CPU, peak RSS are its own), into a database of
its own, `--repeat` times, interleaved, medians reported:
- `opskeeper restore`'s code path: staging collections swapped in at the end, `parallel` at its
  default and at 1; `restore(staging=False)` straight into the target; a plain `insert_many`
  of the raw documents (the baseline);
- with MONGORESTORE=/path, the real `mongorestore --archive --gzip --nsFrom --nsTo`.
Every restored copy is checked against the source: each collection's document count and
order-independent content digest, and its index names. Also: `verify()` CPU against a bare
stdlib gunzip of the same archive, and a restore drill of the mongodump-written one, with its
time split.
Targets: issue 32, restore <= 0.9x mongorestore's wall and <= 1.0x its CPU, peak RSS <= 200 MB,
verify CPU <= 1.5x gunzip; issues 5 and 13, restore >= 0.85 of the baseline, staging >= 0.9 of
direct.

SecantusDB copies a collection to rename it (mongod renames within a database by metadata
only), so the staging swap is printed on its own.

Usage: python bench/restore.py [--docs 100000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
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
COLLECTIONS = ("users_a", "users_b")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def insert_baseline(client: Any, target: str, archive: str) -> int:
    """The archive's raw documents inserted in batches of 5,000, unordered: the floor a restore is held to."""
    from bson.raw_bson import RawBSONDocument

    from jobs.backup.archive import ArchiveReader, Segment, iter_documents
    from jobs.backup.catalog import HashingReader, decompressed

    size = 0
    batches: dict[str, list[RawBSONDocument]] = {}
    with Path(archive).open("rb") as stream:
        reader = ArchiveReader(decompressed(HashingReader(stream)))
        reader.read_prelude()
        for event in reader.events():
            if isinstance(event, Segment) and event.db:
                batch = batches.setdefault(event.collection, [])
                for doc in iter_documents(event.data):
                    batch.append(RawBSONDocument(bytes(doc)))
                    size += len(doc)
                    if len(batch) >= 5000:
                        client[target][event.collection].insert_many(batch, ordered=False)
                        batch.clear()
        for name, batch in batches.items():
            if batch:
                client[target][name].insert_many(batch, ordered=False)
    return size


def child(spec: dict[str, Any]) -> None:
    """One measurement in its own process; prints seconds, CPU seconds, peak RSS and what the mode reports."""
    from backup import peak_rss_mb  # bench/backup.py
    from pymongo import MongoClient

    import jobs.backup.catalog
    import jobs.backup.restore  # noqa: F401 - imported before the clocks start: what is timed is the work

    mode, archive = spec["mode"], spec["archive"]
    client: Any = MongoClient(spec["uri"]) if "uri" in spec else None
    result: dict[str, Any] = {}
    started, cpu_started = time.perf_counter(), cpu_s()
    if mode == "baseline":
        result["bytes"] = insert_baseline(client, spec["target"], archive)
    elif mode in ("restore", "direct"):
        from jobs.backup.restore import restore

        target = spec["target"]
        with Path(archive).open("rb") as stream:
            report = restore(stream, client, lambda db, coll: (target, coll), staging=mode == "restore",
                             **({"parallel": spec["parallel"]} if spec.get("parallel") else {}))  # fmt: skip
        result.update(bytes=report.bytes, index_s=report.index_s, swap_s=report.swap_s)
    elif mode == "verify":
        from jobs.backup.catalog import verify

        manifest = json.loads(Path(spec["manifest"]).read_text()) if spec.get("manifest") else None
        with Path(archive).open("rb") as stream:
            checked = verify(stream, manifest)
        result.update(ok=checked.ok, problems=checked.problems[:3])
    elif mode == "gunzip":  # the bare decompressor: what verify is held to
        with gzip.open(archive, "rb") as stream:
            while stream.read(1 << 20):
                pass
    else:  # the drill, of our own backup in its storage
        from jobs.backup.drill import DrillJob, DrillOptions
        from jobs.backup.source import BackupOptions
        from worker.job import JobContext
        from worker.ledger import JobState, SqliteLedger
        from worker.schedule import JobSpec
        from worker.timespec import parse_schedule

        backup = JobSpec(id="bench", kind="backup", schedule=parse_schedule("@daily"),
                         options=BackupOptions(storage=spec["storage"], uri=spec["uri"]))  # fmt: skip
        ledger = SqliteLedger(Path(tempfile.mkdtemp()) / "l.db")
        ctx = JobContext(job_id="drill", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 3600,
                         state=JobState(ledger, "d"), cancel=threading.Event(), log=lambda *a, **k: None,
                         jobs={"bench": backup})  # fmt: skip
        outcome = DrillJob(DrillOptions(backup_job="bench", target_uri=spec["uri"])).run(ctx)
        result.update(status=outcome.status.value, **{k: outcome.details[k] for k in (
            "read_and_insert_s", "index_build_s", "verification_s", "recovery_s")})  # fmt: skip
    result.update(seconds=time.perf_counter() - started, cpu_s=cpu_s() - cpu_started, peak_rss_mb=peak_rss_mb())
    print(json.dumps(result))


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def mongorestore(tool: str, uri: str, archive: str, source: str, target: str) -> dict[str, Any]:
    """The real `mongorestore --archive --gzip` into `target`: wall and CPU seconds, peak RSS."""
    argv = ["/usr/bin/time", "-f", "%e %U %S %M", tool, f"--uri={uri}", f"--archive={archive}", "--gzip",
            f"--nsFrom={source}.*", f"--nsTo={target}.*", "--quiet"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall, user, system, peak_kb = done.stderr.strip().splitlines()[-1].split()
    return {"seconds": float(wall), "cpu_s": float(user) + float(system), "peak_rss_mb": int(peak_kb) / 1024}


def contents(client: Any, db: str) -> dict[str, Any]:
    """Each collection's count, order-independent content digest and index names: equal means the same data."""
    from jobs.backup.catalog import digest_batch

    found = {}
    for name in COLLECTIONS:
        digest, count = 0, 0
        for batch in client[db][name].find_raw_batches({}, batch_size=1000):
            digest, documents = digest_batch(digest, batch)
            count += documents
        indexes = sorted(ix["name"] for ix in client[db][name].list_indexes())
        found[name] = {"documents": count, "digest": f"{digest:032x}", "indexes": indexes}
    return found


SEGMENT = 160 * 1000 * 1000
RUN = 10_000
"""Documents per uninterrupted run of a collection in the mongodump-style rewrite."""


def mongodump_style(native: Path, out: Path) -> tuple[str, list[int]]:
    """Rewrite our archive as mongodump lays one out, gzipped as `--gzip` does: the collections in interleaved
    segments (runs of RUN documents, alternating, each segment at most 160 MB). Returns its path and segment sizes."""
    from collections.abc import Iterator

    from jobs.backup.archive import ArchiveReader, ArchiveWriter, Header, Prelude, Segment, crc64, iter_documents
    from jobs.backup.catalog import HashingReader, decompressed

    def documents(name: str) -> Iterator[bytes]:
        with native.open("rb") as source:
            reader = ArchiveReader(decompressed(HashingReader(source)))
            reader.read_prelude()
            for event in reader.events():
                if isinstance(event, Segment) and event.collection == name:
                    yield from (bytes(doc) for doc in iter_documents(event.data))

    with native.open("rb") as source:
        reader = ArchiveReader(decompressed(HashingReader(source)))
        reader.read_prelude()
        preludes = [Prelude(p.db, p.collection, p.metadata) for p in reader.preludes]
    streams = {p.collection: documents(p.collection) for p in preludes}
    crc: dict[str, int | None] = dict.fromkeys(streams)
    segments: list[int] = []
    with gzip.open(out, "wb") as raw:
        writer = ArchiveWriter(raw)  # type: ignore[arg-type]
        writer.header(Header("8.0.0", "mongodump-style"), preludes)
        open_streams = dict(streams)
        while open_streams:
            for name, stream in list(open_streams.items()):
                run: list[bytes] = []
                size = 0
                for doc in stream:
                    run.append(doc)
                    size += len(doc)
                    if len(run) >= RUN or size >= SEGMENT:
                        break
                else:
                    del open_streams[name]
                if run:
                    data = b"".join(run)
                    writer.segment("bench_source", name, data)
                    crc[name] = crc64(data, crc[name])
                    segments.append(len(data))
        for name in streams:
            writer.end("bench_source", name, crc[name] or 0)
    return str(out), segments


def median(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 2)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in ("seconds", "cpu_s", "peak_rss_mb", "swap_s", "index_s") if k in rows[0]]
    return {k: median(rows, k) for k in keys} | {"runs": len(rows)}


def load_source(client: Any, docs: int) -> dict[str, Any]:
    """bench/backup.py's documents, half in each collection, one secondary index each; returns their contents."""
    import random

    from backup import document  # bench/backup.py: the same documents

    rnd = random.Random(7)  # noqa: S311 - test data
    for n, name in enumerate(COLLECTIONS):
        for start in range(0, docs // 2, 500):
            client.bench_source[name].insert_many([document(rnd, n * docs + i) for i in
                                                   range(start, min(start + 500, docs // 2))])  # fmt: skip
    client.bench_source.users_a.create_index("email", unique=True)
    client.bench_source.users_b.create_index([("n", 1), ("email", 1)])
    return contents(client, "bench_source")


def mongodump_written(own: Path, work: Path, uri: str) -> dict[str, Any]:
    """The real mongodump's gzip archive of the source (MONGODUMP set), else our rewrite of ours in its layout."""
    tool = os.environ.get("MONGODUMP")
    if not tool:
        path, segments = mongodump_style(own, work / "mongodump-style.archive.gz")
        return {"path": path, "by": "opskeeper's mongodump-style rewrite (MONGODUMP not set)",
                "segments": len(segments), "largest_segment_mb": round(max(segments) / 1e6, 1)}  # fmt: skip
    dumped = work / "mongodump.archive.gz"
    subprocess.run([tool, f"--uri={uri}", "--db=bench_source", f"--archive={dumped}", "--gzip", "--quiet"],
                   check=True)  # fmt: skip
    version = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    return {"path": str(dumped), "by": version}


def restores(client: Any, uri: str, archive: dict[str, Any], source: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Every restore of one archive, `repeat` times interleaved, each checked against the source; medians."""
    tool = os.environ.get("MONGORESTORE")
    modes = ["restore", "restore_parallel_1", "direct", "baseline"] + (["mongorestore"] if tool else [])
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    identical: dict[str, bool] = {}
    for _ in range(repeat):
        for mode in modes:
            target = f"bench_{mode}_{uuid.uuid4().hex[:6]}"
            if tool and mode == "mongorestore":
                result = mongorestore(tool, uri, archive["path"], "bench_source", target)
            else:
                result = measure({"mode": mode.removesuffix("_parallel_1"), "uri": uri, "target": target,
                                  "archive": archive["path"],
                                  "parallel": 1 if mode.endswith("_parallel_1") else None})  # fmt: skip
            restored = contents(client, target)
            if mode == "baseline":  # documents only: it builds no indexes
                restored = {n: {**c, "indexes": source[n]["indexes"]} for n, c in restored.items()}
            identical[mode] = identical.get(mode, True) and restored == source
            client.drop_database(target)
            rows[mode].append(result)
    row: dict[str, Any] = {m: summary(rows[m]) for m in modes}
    row.update({
        "archive": {k: v for k, v in archive.items() if k not in ("path", "manifest")},
        "restored_data_identical_to_source": identical,
        "restore_to_baseline": round(row["baseline"]["seconds"] / row["restore"]["seconds"], 3),
        "staging_to_direct": round(row["direct"]["seconds"] / row["restore"]["seconds"], 3),
        "staging_to_direct_without_swap": round(
            row["direct"]["seconds"] / (row["restore"]["seconds"] - row["restore"]["swap_s"]), 3),
    })  # fmt: skip
    if tool:
        peer = row["mongorestore"]
        for mode in ("restore", "restore_parallel_1", "direct"):
            row[f"{mode}_to_mongorestore"] = {"wall": round(row[mode]["seconds"] / peer["seconds"], 3),
                                              "cpu": round(row[mode]["cpu_s"] / peer["cpu_s"], 3)}  # fmt: skip
    verified = measure({"mode": "verify", "archive": archive["path"], "manifest": archive.get("manifest")})
    unzipped = measure({"mode": "gunzip", "archive": archive["path"]})
    row["verify"] = {"ok": verified["ok"], "cpu_s": round(verified["cpu_s"], 3),
                     "gunzip_cpu_s": round(unzipped["cpu_s"], 3),
                     "cpu_to_gunzip": round(verified["cpu_s"] / unzipped["cpu_s"], 3)}  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000, help="documents in all, split over two collections")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each restore, interleaved; medians printed")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    from backup import start_secantus  # bench/backup.py: the same server
    from pymongo import MongoClient

    from jobs.backup.job import BackupJob
    from jobs.backup.source import BackupOptions
    from worker.job import JobContext
    from worker.ledger import JobState, SqliteLedger

    work = Path(tempfile.mkdtemp(prefix="opskeeper-bench-restore-"))
    server, uri = start_secantus(work / "db")
    client: Any = MongoClient(uri)
    try:
        source = load_source(client, args.docs)
        ctx = JobContext(job_id="bench", run_id="r", scheduled_at=datetime.now(UTC),
                         deadline=time.monotonic() + 3600, state=JobState(SqliteLedger(work / "ledger.db"), "bench"),
                         cancel=threading.Event(), log=lambda *a, **k: None)  # fmt: skip
        storage = str(work / "backups")
        details = BackupJob(BackupOptions(uri=uri, databases=("bench_source",), storage=storage,
                                          compression="gzip")).run(ctx).details  # fmt: skip
        own = Path(storage) / details["key"]
        archives = {"mongodump_written": mongodump_written(own, work, uri),
                    "own": {"path": str(own), "by": "opskeeper backup, gzip",
                            "manifest": str(own).replace(".archive.gz", ".manifest.json")}}  # fmt: skip
        figures: dict[str, Any] = {"bench": "restore", "documents": args.docs,
                                   "bson_mb": round(details["archive_bytes"] / 1e6, 1)}  # fmt: skip
        for label, archive in archives.items():
            figures[label] = restores(client, uri, archive, source, args.repeat)
        drill = measure({"mode": "drill", "uri": uri, "archive": str(own), "storage": storage})
        figures["drill_of_own"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in drill.items()}
        print(json.dumps(figures))
    finally:
        client.close()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
