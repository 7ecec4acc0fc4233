"""Sentry items per day for the shipped schedule plus an `every 1m` health job, before and after sampling.

Each job of config/jobs.yaml, and an `every 1m` health job, is run through the real runner and
the real SDK into a local envelope receiver, as a `command` job running `true` with the job's
own schedule, monitor and sampling settings (what a job does inside does not change what is
sent for it). Frequent jobs are run as many times as they fire in a day; a weekly or quarterly
job is run once and counted at its daily share. "before" sends a transaction for every run
(the old default, SENTRY_TRACES_SAMPLE_RATE=1.0); "after" uses the per-job default. Prints one
JSON line: items per day by type, per job and in all.

Usage: python bench/sentry_volume.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import zoneinfo
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY = timedelta(days=1)


def runs_per_day(job: Any) -> float:
    """How often the job fires in an average day (a weekly job: 1/7)."""
    from worker.timespec import CronSchedule, next_fire

    if not isinstance(job.schedule, CronSchedule):
        return DAY / job.schedule.every
    start = moment = datetime(2026, 1, 1, tzinfo=UTC)
    fires = 0
    while (moment := next_fire(job.schedule, moment, UTC) or start + 400 * DAY) < start + 364 * DAY:
        fires += 1
    return fires / 364


def measure(jobs: list[Any], rate: float | None) -> dict[str, Any]:
    """Items per day by type for each job, with the process default sampling rate `rate`."""
    import sentry_sdk

    from jobs.command import CommandOptions
    from tests.conftest import SentryReceiver  # the tests' envelope receiver: real ingest over HTTP
    from worker.ledger import SqliteLedger
    from worker.reporting.redact import Redactor
    from worker.reporting.sentry import SentryReporter
    from worker.runner import Runner

    per_job: dict[str, dict[str, float]] = {}
    for job in jobs:
        receiver = SentryReceiver()
        sentry = SentryReporter(receiver.dsn, environment="bench", release=None, traces_sample_rate=rate,
                                redactor=Redactor())  # fmt: skip
        runner = Runner(SqliteLedger(Path(tempfile.mkdtemp()) / "l.db"), sentry, Redactor(), zoneinfo.ZoneInfo("UTC"))
        stand_in = job.model_copy(update={"kind": "command", "options": CommandOptions(argv=("true",))})
        daily = runs_per_day(job)
        runs = max(1, round(daily))
        for n in range(runs):
            runner.run(stand_in)
            if n % 20 == 19:
                sentry_sdk.flush(timeout=10)  # the SDK's queue holds 100 items: a day in seconds would overflow it
        sentry_sdk.get_client().close(timeout=10)
        receiver.close()
        counts = Counter(header.get("type", "?") for envelope in receiver.envelopes for header, _ in envelope.items)
        per_job[job.id] = {kind: round(count * daily / runs, 2) for kind, count in sorted(counts.items())}
    total: Counter[str] = Counter()
    for counts in per_job.values():
        total.update(counts)
    return {"per_job": per_job, "total": {k: round(v, 1) for k, v in sorted(total.items())},
            "all_items": round(sum(total.values()), 1)}  # fmt: skip


def main() -> None:
    from worker.registry import OPTIONS
    from worker.schedule import JobSpec, load_config
    from worker.timespec import parse_schedule

    config = load_config(ROOT / "config" / "jobs.yaml", OPTIONS, env={})
    health = JobSpec(id="api-health", kind="health", schedule=parse_schedule("every 1m"))
    jobs = [*config.jobs, health]
    before, after = measure(jobs, 1.0), measure(jobs, None)
    print(json.dumps({"bench": "sentry_volume", "jobs": {j.id: round(runs_per_day(j), 3) for j in jobs},
                      "items_per_day_before": before, "items_per_day_after": after,
                      "ratio_after_to_before": round(after["all_items"] / before["all_items"], 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
