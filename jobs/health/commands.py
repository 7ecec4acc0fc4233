"""`opskeeper uptime`: the health kind's command."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from worker import commands
from worker.commands import CliError, Commands

if TYPE_CHECKING:
    from worker.settings import Settings


def register(cli: Commands) -> None:
    """Add `uptime`."""
    uptime = cli.add("uptime", "Uptime, latency and outages of health endpoints over a window.", _uptime,
                     config=False)  # fmt: skip
    uptime.add_argument("--job", help="only this job's endpoints")
    uptime.add_argument("--endpoint", help="only this endpoint")
    uptime.add_argument("--window", default="24h", help="how far back: 24h, 7d, 30d, ... (default 24h)")
    uptime.add_argument("--json", action="store_true", help="print JSON")


def _uptime(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.health.job import uptime_report
    from worker.ledger import CHECKS_KEPT
    from worker.timespec import format_duration, parse_duration

    try:
        window = parse_duration(args.window)
    except ValueError as exc:
        raise CliError(f"--window: {exc}") from None
    if window > CHECKS_KEPT:
        raise CliError(f"--window {args.window}: checks are kept for {CHECKS_KEPT.days} days at most")
    now = datetime.now(UTC)
    ledger = commands.ledger(settings, commands.redactor(settings))
    try:
        checks = ledger.checks(now - window, args.job, args.endpoint)
    finally:
        ledger.close()
    report = uptime_report(checks, args.window, now)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report:
        print(f"no health checks recorded in the last {args.window}")
    for row in report:
        lat = row["latency_ms"]
        print(f"{row['job_id']}/{row['endpoint']}: {row['uptime_pct']:.3f}% up over {row['window']} — "
              f"{row['checks']} checks, {row['failures']} failed, {row['degraded']} degraded; "
              f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms")  # fmt: skip
        for outage in row["outages"]:
            end = outage["end"] or "ongoing"
            print(f"    outage {outage['start']} → {end} ({format_duration(timedelta(seconds=outage['duration_s']))})")
    return 0
