"""Restore throughput, memory and the drill's time split, printed as one JSON line.

A SecantusDB daemon runs in its own process with the dataset of bench/backup.py (500 MB of
BSON by default), backed up once without compression. Then, each in a fresh child process:
- the baseline: the archive's raw documents inserted with `insert_many(ordered=False)` in
  batches, into the same server, in the same run;
- `restore()` of the archive into a fresh database (its peak RSS is the child's);
- a restore drill of the backup, reporting read+decompress+insert, index build and
  verification times.
Targets (issue 5): restore >= 0.85 of the baseline; peak RSS < 200 MB.

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


def peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def child(mode: str, uri: str, archive: str, storage: str) -> None:
    """One measurement in its own process."""
    from bson.raw_bson import RawBSONDocument
    from pymongo import MongoClient

    from jobs.backup.archive import ArchiveReader, Segment, iter_documents
    from jobs.backup.drill import DrillJob, DrillOptions
    from jobs.backup.job import BackupOptions
    from jobs.backup.restore import restore
    from worker.job import JobContext
    from worker.ledger import JobState, SqliteLedger
    from worker.schedule import JobSpec
    from worker.timespec import parse_schedule

    client: Any = MongoClient(uri)
    target = f"bench_{mode}_{uuid.uuid4().hex[:6]}"
    result: dict[str, Any] = {}
    started = time.perf_counter()
    if mode == "baseline":
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
        result["bytes"] = size
    elif mode == "restore":
        with Path(archive).open("rb") as stream:
            report = restore(stream, client, lambda db, coll: (target, coll))
        result["bytes"] = report.bytes
        result["index_s"] = report.index_s
    else:
        backup = JobSpec(id="bench", kind="backup", schedule=parse_schedule("@daily"),
                         options=BackupOptions(storage=storage, uri=uri))  # fmt: skip
        ledger = SqliteLedger(Path(tempfile.mkdtemp()) / "l.db")
        ctx = JobContext(job_id="drill", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 3600,
                         state=JobState(ledger, "d"), cancel=threading.Event(), log=lambda *a, **k: None,
                         jobs={"bench": backup})  # fmt: skip
        outcome = DrillJob(DrillOptions(backup_job="bench", target_uri=uri)).run(ctx)
        result.update(status=outcome.status.value, **{k: outcome.details[k] for k in (
            "read_and_insert_s", "index_build_s", "verification_s", "recovery_s", "bytes")})  # fmt: skip
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_rss_mb()
    if mode != "drill":
        client.drop_database(target)
    print(json.dumps(result))


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

    from jobs.backup.job import BackupJob, BackupOptions
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
        archive = str(Path(storage) / details["key"])
        baseline = measure("baseline", uri, archive, storage)
        restored = measure("restore", uri, archive, storage)
        drill = measure("drill", uri, archive, storage)
        base_rate = baseline["bytes"] / baseline["seconds"]
        rate = restored["bytes"] / restored["seconds"]
        print(json.dumps({
            "bench": "restore",
            "bson_mb": round(loaded / 1e6, 1),
            "baseline_insert_many_mb_s": round(base_rate / 1e6, 1),
            "restore_mb_s": round(rate / 1e6, 1),
            "restore_ratio_to_baseline": round(rate / base_rate, 3),
            "restore_index_build_s": round(restored["index_s"], 2),
            "restore_peak_rss_mb": round(restored["peak_rss_mb"], 1),
            "baseline_peak_rss_mb": round(baseline["peak_rss_mb"], 1),
            "drill": {k: drill[k] for k in ("status", "read_and_insert_s", "index_build_s", "verification_s",
                                            "recovery_s")} | {"peak_rss_mb": round(drill["peak_rss_mb"], 1)},
        }))  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
