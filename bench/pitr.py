"""Point-in-time recovery: capture throughput, the daemon's added CPU, replay speed, lag to a durable slice, storage.

A SecantusDB daemon runs in its own process with mongod's idle no-op every 10 s (so an idle cluster time moves as
it does on a replica set) and an oplog large enough for the run. Printed as one JSON line:

- backlog: `--events` changes (half inserts of bench/backup.py's realistic documents, 40% updates of nested fields
  and arrays, 10% deletes) are written while capture is stopped; one capture run then reads them into one slice.
  Its events/s and MB/s (raw BSON read) are set against a bare pymongo change stream reading the same events and
  storing nothing, in the same process (the baseline: `capture_vs_bare`). Storage per million events is the
  slice's stored (zstd) size scaled.
- replay: `restore --at latest`'s path (archive restore, then the slice replayed into staging, then the swap), the
  replay alone timed in events/s, and set against inserting the same number of documents with insert_many.
- steady: a writer in its own process makes `--rate` writes a second for `--minutes`, recording each write's wall
  time and cluster time; capture runs every `--interval` seconds (the `every 1m` trigger: runs start on the
  interval's grid from the first). Lag is, per write, the time from the write to the end of the run whose slice
  holds it (durable: the manifest is stored): p50 and p95 against the issue's RPO target of 70 s at every 1m.
  Added CPU is the capture runs' CPU time over the wall time, as a share of one core.
- peak RSS of this process (the capture runs in it).

Usage: python bench/pitr.py [--events 100000] [--rate 50] [--minutes 5] [--interval 60]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

WRITER = """
import json, sys, time
from pymongo import MongoClient
uri, db, rate, seconds, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
client = MongoClient(uri)
coll = client[db].steady
start = time.time()
with open(out, "w") as f, client.start_session(causal_consistency=False) as session:
    n = 0
    while time.time() - start < seconds:
        due = start + n / rate
        time.sleep(max(0.0, due - time.time()))
        coll.update_one({"_id": n % 500}, {"$set": {"v": n, "at": time.time()}}, upsert=True, session=session)
        ct = session.operation_time
        f.write(json.dumps([time.time(), ct.time, ct.inc]) + "\\n")
        n += 1
"""


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_server(storage: Path) -> tuple[subprocess.Popen[bytes], str]:
    from backup import free_port  # bench/backup.py
    from pymongo import MongoClient

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "secantusd-py"), "--port", str(port),
                               "--storage-path", str(storage), "--oplog-max-entries", "20000000",
                               "--noop-heartbeat-seconds", "10"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    uri = f"mongodb://127.0.0.1:{port}/"
    MongoClient(uri, serverSelectionTimeoutMS=30_000).admin.command("ping")
    return server, uri


def write_backlog(client: Any, db: str, events: int) -> None:
    from backup import document  # bench/backup.py's realistic documents
    from pymongo import DeleteOne, InsertOne, UpdateOne

    rnd = random.Random(7)  # noqa: S311 - repeatable test data, not a secret
    ops: list[Any] = []
    live: list[int] = []
    for n in range(events):
        pick = rnd.random()
        if pick < 0.5 or len(live) < 10:
            ops.append(InsertOne({"_id": n, **document(rnd, n)}))
            live.append(n)
        elif pick < 0.9:
            target = rnd.choice(live)
            ops.append(
                UpdateOne(
                    {"_id": target},
                    {
                        "$set": {"profile.address.city": rnd.choice(["Oslo", "Kyiv"]), "n": n},
                        "$push": {"orders": {"sku": "X", "qty": 1}},
                    },
                )
            )
        else:
            ops.append(DeleteOne({"_id": live.pop(rnd.randrange(len(live)))}))
        if len(ops) >= 1000:
            client[db].users.bulk_write(ops, ordered=True)
            ops = []
    if ops:
        client[db].users.bulk_write(ops, ordered=True)


def bare_read(uri: str, db: str, start: Any, expected: int) -> tuple[float, int]:
    """A change stream read of `expected` events with nothing stored: (seconds, raw bytes)."""
    from bson.raw_bson import RawBSONDocument
    from pymongo import MongoClient

    client: Any = MongoClient(uri, document_class=RawBSONDocument)
    began, seen, size = time.monotonic(), 0, 0
    with client[db].watch(start_at_operation_time=start, full_document="whenAvailable", batch_size=1000) as stream:
        while seen < expected:
            event = stream.try_next()
            if event is not None and event["ns"]["coll"] == "users":
                seen += 1
                size += len(event.raw)
    client.close()
    return time.monotonic() - began, size


def main() -> None:  # noqa: PLR0915 - one measured sequence, read top to bottom
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=60.0)
    args = parser.parse_args()

    from pymongo import MongoClient

    from jobs.backup.catalog import scan
    from jobs.backup.changes import scan_changes
    from jobs.backup.pitr import plan, restore_at
    from jobs.backup.restore import ns_mapper
    from jobs.backup.source import majority_time
    from tests.test_pitr import Chain  # the tests' in-process runner of a backup and its capture job

    work = Path(tempfile.mkdtemp(prefix="bench-pitr-"))
    server, uri = start_server(work / "db")
    client: Any = MongoClient(uri)
    db = "pitr_bench"
    result: dict[str, Any] = {"bench": "pitr", "events": args.events}
    try:
        chain = Chain(uri, work, db)
        client[db].users.insert_one({"_id": -1})
        assert chain.capture().status.value == "ok"
        assert chain.backup().status.value == "ok"
        chain.capture_options = chain.capture_options.model_copy(update={"max_events": args.events * 2})
        start = majority_time(client, db)
        write_backlog(client, db, args.events)
        began, cpu = time.monotonic(), cpu_s()
        run = chain.capture()
        wall, used = time.monotonic() - began, cpu_s() - cpu
        captured = run.details["events"]
        bare_s, bare_bytes = bare_read(uri, db, start, captured)
        result["backlog"] = {
            "events_captured": captured, "seconds": round(wall, 3), "cpu_s": round(used, 3),
            "events_per_s": round(captured / wall), "mb_per_s": round(run.details["raw_bytes"] / wall / 1e6, 2),
            "bare_events_per_s": round(captured / bare_s), "capture_vs_bare": round(bare_s / wall, 3),
            "raw_mb": round(run.details["raw_bytes"] / 1e6, 2),
            "stored_mb": round(run.details["stored_bytes"] / 1e6, 2),
            "stored_mb_per_million_events": round(run.details["stored_bytes"] / captured * 1e6 / 1e6, 1),
            "bare_raw_mb": round(bare_bytes / 1e6, 2),
        }  # fmt: skip
        storage = chain.backup_options.open_storage()
        chosen = plan(scan(storage, "nightly").entries, scan_changes(storage, "capture"), None)
        timed: dict[str, float] = {}
        from jobs.backup import pitr

        original = pitr.replay

        def timed_replay(*a: Any, **k: Any) -> Any:
            t = time.monotonic()
            done = original(*a, **k)
            timed["replay_s"] = time.monotonic() - t
            return done

        pitr.replay = timed_replay  # type: ignore[assignment]
        began = time.monotonic()
        _report, replayed = restore_at(storage, chosen, client, ns_mapper(f"{db}.*", f"{db}_r.*"), replace=frozenset())
        total = time.monotonic() - began
        pitr.replay = original  # type: ignore[assignment]
        raw_docs = list(client[db].users.find({}, limit=replayed.events))
        t = time.monotonic()
        for i in range(0, len(raw_docs), 1000):
            client[db].baseline.insert_many(raw_docs[i : i + 1000], ordered=False)
        insert_s = time.monotonic() - t
        same = list(client[db].users.find({}, sort=[("_id", 1)])) == list(
            client[f"{db}_r"].users.find({}, sort=[("_id", 1)])
        )
        result["replay"] = {
            "events": replayed.events, "seconds": round(timed["replay_s"], 3),
            "events_per_s": round(replayed.events / timed["replay_s"]),
            "insert_many_docs_per_s": round(len(raw_docs) / insert_s),
            "replay_vs_insert_many": round((replayed.events / timed["replay_s"]) / (len(raw_docs) / insert_s), 3),
            "restore_at_latest_s": round(total, 3), "restored_equals_source": same,
        }  # fmt: skip
        # Steady load, capture on an interval grid.
        chain.capture()  # caught up before the steady phase
        log = work / "writes.jsonl"
        seconds = args.minutes * 60
        writer = subprocess.Popen([sys.executable, "-c", WRITER, uri, db, str(args.rate), str(seconds), str(log)])
        runs: list[tuple[tuple[int, int], tuple[int, int], float]] = []
        capture_cpu = 0.0
        origin = time.time()
        for tick in range(1, 10_000):  # until the writer is done and a run has covered its last write
            time.sleep(max(0.0, origin + tick * args.interval - time.time()))
            cpu = cpu_s()
            out = chain.capture()
            capture_cpu += cpu_s() - cpu
            d = out.details
            runs.append(((d["after"]["t"], d["after"]["i"]), (d["through"]["t"], d["through"]["i"]), time.time()))
            if writer.poll() is not None and runs[-1][1] >= _last_write(log):
                break
        writer.wait()
        lags = []
        for line in log.read_text().splitlines():
            wall, ct_t, ct_i = json.loads(line)
            durable = next((end for after, through, end in runs if after < (ct_t, ct_i) <= through), None)
            if durable is not None:
                lags.append(durable - wall)
        lags.sort()
        elapsed = time.time() - origin
        result["steady"] = {
            "rate_per_s": args.rate, "interval_s": args.interval, "writes": len(lags), "runs": len(runs),
            "lag_p50_s": round(statistics.median(lags), 1), "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 1),
            "lag_max_s": round(lags[-1], 1), "rpo_target_s": 70,
            "capture_cpu_share_of_one_core": round(capture_cpu / elapsed, 4),
        }  # fmt: skip
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    finally:
        client.close()
        server.terminate()
        server.wait()
    print(json.dumps(result))


def _last_write(log: Path) -> tuple[int, int]:
    lines = log.read_text().splitlines()
    if not lines:
        return (0, 0)
    _, t, i = json.loads(lines[-1])
    return (t, i)


if __name__ == "__main__":
    main()
