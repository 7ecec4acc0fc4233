"""Status page figures, printed as one JSON line.

A SQLite ledger holds 90 days of `--endpoints` health endpoints checked every `--interval`
seconds (10 endpoints every minute: 1,296,000 checks), a backup and a drill a day. The page
is built from it (`opskeeper status --html`) in a fresh process, timed, with its peak RSS
(VmHWM) and the page's size. The baseline is reading those checks out of the ledger in one
query, which a page drawn from raw checks would have to do. Targets (issue 18): < 2 s,
< 150 MB, page < 1 MB.

Usage: python bench/status.py [--endpoints 10] [--interval 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.job import CheckRecord, Status  # noqa: E402
from worker.ledger import RunRecord, SqliteLedger  # noqa: E402

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAYS = 90


def fill(ledger: SqliteLedger, endpoints: int, interval: int) -> int:
    total = 0
    for e in range(endpoints):
        batch = []
        for i in range(int(DAYS * 86400 / interval)):
            at = NOW - timedelta(seconds=i * interval)
            failed = i % 5000 == 7  # a failed check now and then
            batch.append(CheckRecord(job_id="api-health", endpoint=f"endpoint-{e:02d}", at=at,
                                     verdict="fail" if failed else "ok", state="UP", status_code=200,
                                     latency_ms=None if failed else 80.0 + (i % 40), reason=""))  # fmt: skip
            if len(batch) == 50_000:
                ledger.record_checks(batch)
                total += len(batch)
                batch = []
        ledger.record_checks(batch)
        total += len(batch)
    for day in range(DAYS):
        at = NOW - timedelta(days=day, hours=9)
        ledger.record(RunRecord(run_id=f"b{day}", job_id="nightly", kind="backup", status=Status.OK, started_at=at,
                                finished_at=at, summary="backed up", details={"key": f"nightly/{day}",
                                "stored_bytes": 50_000_000 + day * 10_000, "documents": 100_000}))  # fmt: skip
        ledger.record(RunRecord(run_id=f"d{day}", job_id="drill", kind="restore_drill", status=Status.OK,
                                started_at=at + timedelta(hours=3), finished_at=at, summary="restored",
                                details={"key": f"nightly/{day}", "recovery_s": 40.0 + day % 7}))  # fmt: skip
    return total


CONFIG = """\
jobs:
  - id: api-health
    kind: health
    schedule: every 1m
    options: {endpoints: [{name: endpoint-00, url: "http://127.0.0.1:9/"}]}
  - id: nightly
    kind: backup
    schedule: "0 3 * * *"
    options: {storage: "/tmp/opskeeper-bench-status"}
  - id: drill
    kind: restore_drill
    schedule: "0 6 * * *"
    options: {backup_job: nightly}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--interval", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opskeeper-bench-") as scratch:
        base = Path(scratch)
        ledger = SqliteLedger(base / "ledger.db")
        checks = fill(ledger, args.endpoints, args.interval)
        started = time.perf_counter()
        everything = ledger.checks(NOW - timedelta(days=DAYS))
        baseline = time.perf_counter() - started
        assert len(everything) == checks
        del everything
        ledger.close()
        (base / "jobs.yaml").write_text(CONFIG, encoding="utf-8")
        page = base / "status.html"
        code = ("import sys; from worker import cli; code = cli.main(sys.argv[1:]); "
                "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr); "
                "raise SystemExit(code)")  # fmt: skip
        env = {**os.environ, "OPSKEEPER_LEDGER": str(base / "ledger.db"), "OPSKEEPER_LOG_FORMAT": "json"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, "status", "--config", str(base / "jobs.yaml"), "--html",
                               str(page), "--now", NOW.isoformat()], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        wall = time.perf_counter() - started
        rss_mb = int(done.stderr.strip().splitlines()[-1]) / 1024
        print(json.dumps({
            "bench": "status", "endpoints": args.endpoints, "days": DAYS, "checks": checks,
            "page_s": round(wall, 2), "page_rss_mb": round(rss_mb, 1), "page_bytes": page.stat().st_size,
            "baseline_read_all_checks_s": round(baseline, 2),
            "speedup_vs_reading_checks": round(baseline / wall, 1),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
