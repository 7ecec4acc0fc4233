"""Weekly review figures, printed as one JSON line.

A SQLite ledger holds a busy week: `--endpoints` health endpoints checked every
`--interval` seconds (10 endpoints every minute: 100,800 checks), the health job's runs
every minute for 92 days (132,480 runs), and a backup a day. The
weekly report is built from it (JSON, then Markdown with its three SVG charts), in this
process, and compared with the baseline of only reading that week's checks out of the
ledger in one query, which any report over them must do; and reading every run of the
lookback shows what the review avoids by naming the kinds it reads. Peak RSS is measured after the
report and before the baseline (which holds every check at once). The issue sets no
target; the figure to watch is that a report fits a 512 MB worker whatever the number of
endpoints.

Usage: python bench/review.py [--endpoints 10] [--interval 60]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobs.review.markdown import to_markdown
from jobs.review.weekly import WeeklyReviewOptions, build
from worker.job import CheckRecord, Status
from worker.ledger import RunRecord, SqliteLedger

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def fill(ledger: SqliteLedger, endpoints: int, interval: int) -> int:
    since = NOW - timedelta(days=7)
    total = 0
    for e in range(endpoints):
        batch = []
        for i in range(int(7 * 86400 / interval)):
            at = since + timedelta(seconds=i * interval)
            down = e == 0 and 3000 <= i < 3010
            batch.append(CheckRecord("api-health", f"endpoint-{e}", at, "fail" if down else "ok",
                                     "DOWN" if down and i > 3001 else "UP", None if down else 200,
                                     None if down else 40.0 + (i % 50), "HTTP 503" if down else ""))  # fmt: skip
        ledger.record_checks(batch)
        total += len(batch)
    # The runs table as a real one looks: the health job's run every minute for the 92 days a
    # review looks back over, each with its details, which the review must not load.
    for minute in range(92 * 1440):
        at = since + timedelta(days=7) - timedelta(minutes=minute)
        ledger.record(RunRecord(run_id=f"h{minute}", job_id="api-health", kind="health", status=Status.OK,
                                started_at=at, finished_at=at, summary=f"{endpoints} endpoints up",
                                details={"endpoints": [{"name": f"endpoint-{e}", "state": "UP", "latency_ms": 41.5}
                                                       for e in range(endpoints)]}))  # fmt: skip
    for day in range(7):
        at = since + timedelta(days=day, hours=18)
        ledger.record(RunRecord(run_id=f"b{day}", job_id="nightly", kind="backup", status=Status.OK, started_at=at,
                                finished_at=at, details={"stored_bytes": 50_000_000 + day * 100_000}))  # fmt: skip
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--interval", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = SqliteLedger(Path(tmp) / "ledger.db")
        checks = fill(ledger, args.endpoints, args.interval)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        started = time.perf_counter()
        report = build(WeeklyReviewOptions(), ledger, {}, NOW)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        markdown = to_markdown(report)
        markdown_s = time.perf_counter() - started
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        started = time.perf_counter()
        read = ledger.checks(NOW - timedelta(days=7))
        baseline_s = time.perf_counter() - started
        baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        del read

        # What reading every run of the lookback (not only the reviewed kinds) would cost.
        started = time.perf_counter()
        every_run = ledger.runs(NOW - timedelta(days=99), NOW)
        all_runs_s = time.perf_counter() - started
        runs_count = len(every_run)
        del every_run
        ledger.close()
    print(json.dumps({
        "bench": "review", "endpoints": args.endpoints, "checks": checks,
        "read_checks_s": round(baseline_s, 3), "build_report_s": round(build_s, 3),
        "build_vs_read": round(build_s / baseline_s, 2), "markdown_s": round(markdown_s, 3),
        "markdown_kb": round(len(markdown.encode()) / 1024, 1), "json_kb": round(len(json.dumps(report)) / 1024, 1),
        "rss_after_fill_mb": round(rss_before, 1), "report_peak_rss_mb": round(peak_rss, 1),
        "all_checks_at_once_peak_rss_mb": round(baseline_rss, 1),
        "runs_in_ledger": runs_count, "reading_every_run_s": round(all_runs_s, 3),
        "needs_attention": len(report["needs_attention"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
