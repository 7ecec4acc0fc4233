"""The `opskeeper` command: run, validate, jobs, run-now, history.

Exit codes: 0 success; 2 invalid configuration or usage; `run-now` exits like a
monitoring plugin (0 ok, 1 warn, 2 fail, 3 error or timeout).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker import registry
from worker.ledger import CHECKS_KEPT, Ledger, open_ledger
from worker.reporting.log import configure
from worker.reporting.redact import Redactor
from worker.reporting.sentry import SentryReporter
from worker.runner import Runner, version
from worker.schedule import ConfigError, ScheduleConfig, load_config
from worker.settings import Settings, SettingsError, load_settings
from worker.timespec import describe, format_duration, parse_duration, upcoming

EXIT_CONFIG = 2


class _CliError(Exception):
    """A message for stderr and the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and `python -m worker`."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        return int(args.handler(args, settings))
    except (SettingsError, _CliError) as exc:
        print(f"opskeeper: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, _CliError) else EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opskeeper", description="Runs your app's operations plan.")
    parser.add_argument("--version", action="version", version=f"opskeeper {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: Any, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("--config", type=Path, help="schedule file (default: $OPSKEEPER_CONFIG or config/jobs.yaml)")
        p.set_defaults(handler=handler)
        return p

    run = command("run", "Run the daemon: schedule every job until SIGTERM.", _run)
    run.add_argument("--for", dest="run_for", metavar="DURATION", help="stop by itself after this long, e.g. 30s")
    command("validate", "Check the schedule file; print every problem.", _validate)
    jobs = command("jobs", "List the jobs, their schedules in words and their next runs.", _jobs)
    jobs.add_argument("--now", help="compute next runs from this ISO 8601 time instead of now")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    run_now = command("run-now", "Run one job once in the foreground and record it.", _run_now)
    run_now.add_argument("job_id", metavar="JOB_ID")
    run_now.add_argument("--json", action="store_true", help="print JSON")
    history = command("history", "Show recent runs, newest first.", _history, config=False)
    history.add_argument("--job", help="only this job's runs")
    history.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    history.add_argument("--json", action="store_true", help="print JSON")
    uptime = command("uptime", "Uptime, latency and outages of health endpoints over a window.", _uptime,
                     config=False)  # fmt: skip
    uptime.add_argument("--job", help="only this job's endpoints")
    uptime.add_argument("--endpoint", help="only this endpoint")
    uptime.add_argument("--window", default="24h", help="how far back: 24h, 7d, 30d, ... (default 24h)")
    uptime.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _config(args: argparse.Namespace, settings: Settings) -> ScheduleConfig:
    path = args.config or settings.config_path
    try:
        return load_config(path, registry.OPTIONS)
    except ConfigError as exc:
        raise _CliError(f"{len(exc.problems)} problem(s) in {path}:\n{exc}") from None


def _ledger(settings: Settings, redactor: Redactor) -> Ledger:
    target = settings.ledger.get_secret_value()
    try:
        return open_ledger(target)
    except Exception as exc:  # noqa: BLE001 - any driver error: say where and why, without secrets
        reason = redactor.text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
        raise _CliError(f"cannot open the ledger {redactor.text(target)}: {reason}", 3) from None


def _reporting(settings: Settings, config: ScheduleConfig | None) -> tuple[Redactor, SentryReporter]:
    redactor = Redactor([*settings.secret_values(), *(config.secrets if config else ())])
    configure(settings.log_format, redactor)
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None
    sentry = SentryReporter(
        dsn, environment=settings.sentry_environment, release=settings.sentry_release,
        traces_sample_rate=settings.sentry_traces_sample_rate, redactor=redactor,
    )  # fmt: skip
    return redactor, sentry


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    config = _config(args, settings)
    print(f"OK: {len(config.jobs)} jobs")
    return 0


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    config = _config(args, settings)
    now = datetime.now(UTC)
    if args.now:
        try:
            now = datetime.fromisoformat(args.now)
        except ValueError:
            raise _CliError(f"--now {args.now!r}: not an ISO 8601 time like 2026-03-28T12:00:00+01:00") from None
        if now.tzinfo is None:
            now = now.replace(tzinfo=config.timezone)
    rows: list[dict[str, Any]] = [
        {
            "id": job.id,
            "kind": job.kind,
            "schedule": job.schedule.text,
            "description": describe(job.schedule),
            "timezone": config.timezone.key,
            "enabled": job.enabled,
            "next_runs": [t.isoformat() for t in upcoming(job.schedule, config.timezone, now, 3)]
            if job.enabled
            else [],
        }
        for job in config.jobs
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for job, row in zip(config.jobs, rows, strict=True):
        state = "" if job.enabled else "  (disabled)"
        print(f"{job.id}  [{job.kind}]  {job.schedule.text} — {row['description']} ({config.timezone.key}){state}")
        for moment in row["next_runs"]:
            print(f"    next: {moment}")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.scheduler import Daemon  # the daemon's imports are only needed here

    config = _config(args, settings)
    run_for = None
    if args.run_for:
        try:
            run_for = parse_duration(args.run_for)
        except ValueError as exc:
            raise _CliError(f"--for: {exc}") from None
    redactor, sentry = _reporting(settings, config)
    ledger = _ledger(settings, redactor)
    daemon = Daemon(config, ledger, sentry, redactor, grace=settings.shutdown_grace, poll=settings.reload_poll)
    daemon.install_signal_handlers()
    try:
        daemon.serve(run_for)
    finally:
        ledger.close()
    return 0


def _run_now(args: argparse.Namespace, settings: Settings) -> int:
    config = _config(args, settings)
    try:
        job = config.job(args.job_id)
    except KeyError as exc:
        raise _CliError(str(exc.args[0])) from None
    redactor, sentry = _reporting(settings, config)
    ledger = _ledger(settings, redactor)
    try:
        record = Runner(ledger, sentry, redactor, config.timezone).run(job)
    finally:
        sentry.flush()
        ledger.close()
    result = {
        "run_id": record.run_id,
        "job_id": record.job_id,
        "status": record.status.value,
        "summary": record.summary,
        "details": dict(record.details),
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"{record.status.value.upper()}: {record.job_id}: {record.summary}")
    return record.status.exit_code


def _history(args: argparse.Namespace, settings: Settings) -> int:
    redactor = Redactor(settings.secret_values())
    ledger = _ledger(settings, redactor)
    try:
        records = ledger.recent(args.job, max(1, args.limit))
    finally:
        ledger.close()
    if args.json:
        print(json.dumps([r.public() for r in records], indent=2))
        return 0
    if not records:
        print("no runs recorded yet")
    for r in records:
        local = r.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        took = "" if r.duration_s is None else f"{r.duration_s:7.2f}s"
        print(f"{local}  {r.status.value:<11} {took:>8}  {r.job_id:<24} {r.summary}")
    return 0


def _uptime(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.health import uptime_report

    try:
        window = parse_duration(args.window)
    except ValueError as exc:
        raise _CliError(f"--window: {exc}") from None
    if window > CHECKS_KEPT:
        raise _CliError(f"--window {args.window}: checks are kept for {CHECKS_KEPT.days} days at most")
    now = datetime.now(UTC)
    redactor = Redactor(settings.secret_values())
    ledger = _ledger(settings, redactor)
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
