"""Backup throughput and memory, printed as one JSON line.

A SecantusDB daemon (a MongoDB wire-protocol server) runs in its own process and is loaded
with realistic documents: mixed sizes from 200 B to 20 KB, nested, with arrays. There are
two databases, one 5 times the size of the other. Each measurement runs in a fresh child
process, so its peak RSS is its own:
- the raw floor: `find_raw_batches` read and discarded (the baseline), plain and inside
  a snapshot session (the consistent read a backup makes where the server offers one);
- opskeeper backups to disk with `none`, `zstd` and `gzip`, and to moto's S3 with `zstd`.
Throughput is reported as a ratio of the raw floor, with the compression ratio and peak
RSS, and S3 against disk for the same data in the same run (parts upload from a pool while
the next one fills). Targets (issues 4 and 13): >= 0.9 of the floor for none and zstd to
disk; S3 >= 0.9 of disk; peak RSS < 200 MB, growing < 32 MB from the smaller to the 5x
larger dataset. With MONGODUMP=/path/to/mongodump (a real one, built as reference §1a says),
each dataset is also dumped by `mongodump --archive --gzip` in the same run: wall time,
client CPU, peak RSS and size against our default gzip backup (issue 20: wall <= 0.9x, CPU
<= 0.6x, size <= 1.1x). It also prints the largest archive S3's 10,000 parts hold under our
part-size rule, with and without the database's size estimate.

Usage: python bench/backup.py [--small-mb 100] [--factor 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, not ru_maxrss, which Linux carries over from the forking parent."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_secantus(storage: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A SecantusDB daemon in its own process (so its work is not on our GIL), ready to use."""
    from pymongo import MongoClient

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "secantusd-py"), "--port", str(port),
                               "--storage-path", str(storage)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    uri = f"mongodb://127.0.0.1:{port}/"
    MongoClient(uri, serverSelectionTimeoutMS=30_000).admin.command("ping")
    return server, uri


def document(rnd: random.Random, i: int) -> dict[str, Any]:
    """One realistic document: mixed sizes from 200 B to 20 KB (Pareto), nested, with arrays."""
    size = int(rnd.paretovariate(1.2) * 200)
    return {
        "n": i, "email": f"user{i}@example.com", "created": datetime(2026, 1, 1, tzinfo=UTC),
        "profile": {"bio": "".join(rnd.choices("abcdefghij klmnop", k=min(size, 20_000))),
                    "address": {"city": rnd.choice(["Berlin", "Lyon", "Porto"]), "zip": f"{i % 99999:05d}"}},
        "orders": [{"sku": f"S{rnd.randrange(1000)}", "qty": rnd.randint(1, 5), "price": rnd.random() * 100}
                   for _ in range(rnd.randint(0, 12))],
    }  # fmt: skip


def load(uri: str, db: str, megabytes: float, seed: int) -> int:
    """Insert about `megabytes` of realistic documents; returns the BSON bytes inserted."""
    import bson
    from pymongo import MongoClient

    rnd = random.Random(seed)  # noqa: S311 - test data, not secrets
    client: Any = MongoClient(uri)
    total, i = 0, 0
    while total < megabytes * 1e6:
        docs = []
        for _ in range(500):
            i += 1
            docs.append(document(rnd, i))
        total += sum(len(bson.encode(d)) for d in docs)
        client[db].users.insert_many(docs, ordered=False)
    client.close()
    return total


def child(mode: str, uri: str, db: str, target: str, endpoint: str | None) -> None:
    """One measurement, in its own process; prints seconds, bytes and peak RSS."""
    from pymongo import MongoClient

    from jobs.backup.job import BackupJob
    from jobs.backup.source import BackupOptions
    from worker.job import JobContext
    from worker.ledger import JobState, SqliteLedger

    started = time.perf_counter()
    if mode.startswith("raw"):
        client: Any = MongoClient(uri)
        if mode == "raw-snapshot":  # the same consistent read a backup makes
            with client.start_session(snapshot=True) as session:
                size = sum(len(b) for b in client[db].users.find_raw_batches({}, session=session))
        else:
            size = sum(len(b) for b in client[db].users.find_raw_batches())
        stored = size
    else:
        compression, where = mode.split("-")
        storage = f"s3://bench-backups/{db}" if where == "s3" else target
        options = BackupOptions(uri=uri, databases=(db,), storage=storage, compression=compression,  # type: ignore[arg-type]
                                endpoint_url=endpoint if where == "s3" else None)  # fmt: skip
        ledger = SqliteLedger(Path(tempfile.mkdtemp()) / "l.db")
        ctx = JobContext(job_id=f"bench-{mode}", run_id="r", scheduled_at=datetime.now(UTC),
                         deadline=time.monotonic() + 3600, state=JobState(ledger, "b"), cancel=threading.Event(),
                         log=lambda *a, **k: None)  # fmt: skip
        outcome = BackupJob(options).run(ctx)
        size, stored = outcome.details["archive_bytes"], outcome.details["stored_bytes"]
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "bytes": size, "stored": stored, "peak_rss_mb": peak,
                      "cpu_s": usage.ru_utime + usage.ru_stime}))  # fmt: skip


def peer(mongodump: str, uri: str, db: str, out: Path) -> dict[str, Any]:
    """The real `mongodump --archive --gzip` of the same database: wall and CPU seconds, peak RSS, size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["/usr/bin/time", "-f", "%e %U %S %M", mongodump, f"--uri={uri}", f"--db={db}", f"--archive={out}",
            "--gzip", "--quiet"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall, user, system, peak_kb = done.stderr.strip().splitlines()[-1].split()
    return {"seconds": float(wall), "cpu_s": float(user) + float(system), "peak_rss_mb": int(peak_kb) / 1024,
            "stored": out.stat().st_size}  # fmt: skip


def s3_limits() -> dict[str, Any]:
    """The largest archive 10,000 parts hold under part_size(), and the upload's memory at the default part."""
    from worker.storage.s3 import IN_FLIGHT, MAX_PARTS, MIN_PART, part_size

    def largest(expected: int | None) -> int:
        done = 0
        for n in range(MAX_PARTS):
            done += part_size(expected, n, done)
        return done

    return {"largest_archive_tib_without_estimate": round(largest(None) / 1024**4, 2),
            "largest_archive_tib_with_1tb_estimate": round(largest(10**12) / 1024**4, 2),
            "part_mib_for_100gb_estimate": part_size(100 * 10**9, 0, 0) // 2**20,
            "upload_buffer_mib_default": (IN_FLIGHT + 1) * MIN_PART // 2**20}  # fmt: skip


def measure(mode: str, uri: str, db: str, target: str, endpoint: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, uri, db, target, endpoint],
                         capture_output=True, text=True, check=True, env=os.environ.copy())  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small-mb", type=float, default=100)
    parser.add_argument("--factor", type=float, default=5)
    parser.add_argument("--child", nargs=5, metavar=("MODE", "URI", "DB", "TARGET", "ENDPOINT"))
    args = parser.parse_args()
    if args.child:
        mode, uri, db, target, endpoint = args.child
        child(mode, uri, db, target, endpoint or None)
        return

    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench-backups")
    work = Path(tempfile.mkdtemp(prefix="opskeeper-bench-backup-"))
    server, uri = start_secantus(work / "db")
    try:
        sizes = {"small": args.small_mb, "large": args.small_mb * args.factor}
        loaded = {name: load(uri, f"bench_{name}", mb, seed=i) for i, (name, mb) in enumerate(sizes.items())}
        figures: dict[str, Any] = {"bench": "backup", "bson_mb": {k: round(v / 1e6, 1) for k, v in loaded.items()}}
        for name in sizes:
            db = f"bench_{name}"
            raw = measure("raw", uri, db, "", endpoint)
            floor = raw["bytes"] / raw["seconds"]
            snap = measure("raw-snapshot", uri, db, "", endpoint)
            snap_floor = snap["bytes"] / snap["seconds"]
            row: dict[str, Any] = {
                "raw_floor_mb_s": round(floor / 1e6, 1),
                "raw_floor_snapshot_mb_s": round(snap_floor / 1e6, 1),
                "raw_peak_rss_mb": round(raw["peak_rss_mb"], 1),
            }
            for mode in ("none-disk", "zstd-disk", "gzip-disk", "zstd-s3"):
                result = measure(mode, uri, db, str(work / "out"), endpoint)
                row[mode] = {
                    "mb_s": round(result["bytes"] / result["seconds"] / 1e6, 1),
                    "ratio_to_floor": round(result["bytes"] / result["seconds"] / floor, 3),
                    "ratio_to_snapshot_floor": round(result["bytes"] / result["seconds"] / snap_floor, 3),
                    "compression_ratio": round(result["bytes"] / max(1, result["stored"]), 2),
                    "peak_rss_mb": round(result["peak_rss_mb"], 1),
                }
            row["s3_to_disk_ratio_zstd"] = round(row["zstd-s3"]["mb_s"] / row["zstd-disk"]["mb_s"], 3)
            if os.environ.get("MONGODUMP"):  # a real mongodump (reference §1a builds one): the peer, same run
                ours = measure("gzip-disk", uri, db, str(work / "out"), endpoint)
                theirs = peer(os.environ["MONGODUMP"], uri, db, work / "peer" / f"{db}.archive.gz")
                row["peer_mongodump_gzip"] = {
                    "mongodump": {k: round(v, 2) for k, v in theirs.items()},
                    "opskeeper_gzip": {k: round(ours[k], 2) for k in ("seconds", "cpu_s", "peak_rss_mb", "stored")},
                    "wall_ratio": round(ours["seconds"] / theirs["seconds"], 3),
                    "client_cpu_ratio": round(ours["cpu_s"] / theirs["cpu_s"], 3),
                    "size_ratio": round(ours["stored"] / theirs["stored"], 3),
                }
            figures[name] = row
        growth = {mode: round(figures["large"][mode]["peak_rss_mb"] - figures["small"][mode]["peak_rss_mb"], 1)
                  for mode in ("none-disk", "zstd-disk", "gzip-disk", "zstd-s3")}  # fmt: skip
        figures["peak_rss_growth_mb_small_to_large"] = growth
        figures["s3_parts"] = s3_limits()
        print(json.dumps(figures))
    finally:
        server.terminate()
        server.wait(30)
        moto.stop()


if __name__ == "__main__":
    main()
