"""The `opskeeper` command: run, validate, jobs, run-now, history.

Exit codes: 0 success; 2 invalid configuration or usage; `run-now` exits like a
monitoring plugin (0 ok, 1 warn, 2 fail, 3 error or timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from worker import registry
from worker.job import Status, TransientError
from worker.ledger import CHECKS_KEPT, Ledger, RunRecord, open_ledger
from worker.reporting.log import configure
from worker.reporting.redact import Redactor
from worker.reporting.sentry import SentryReporter
from worker.runner import Runner
from worker.schedule import ConfigError, JobSpec, ScheduleConfig, load_config
from worker.settings import Settings, SettingsError, load_settings, secret_env_values
from worker.timespec import describe, format_duration, parse_duration, upcoming
from worker.version import version

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
    deploys = command("deploys", "Recent deploys of the Render services, and the last known good one.", _deploys)
    deploys.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    deploys.add_argument("--json", action="store_true", help="print JSON")
    rollback = command("rollback", "Roll a Render service back to its last known good deploy.", _rollback)
    rollback.add_argument("service", metavar="SERVICE")
    rollback.add_argument("--to", metavar="DEPLOY_ID", help="roll back to this deploy instead")
    rollback.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rollback.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    rollback.add_argument("--disable-autodeploy", action="store_true",
                          help="also turn auto-deploy off, so the next push does not deploy again")  # fmt: skip
    report = command("report", "Build a review report now, from the ledger and the configured sources.", _report)
    report.add_argument("which", choices=["weekly"], help="which report")
    report.add_argument("--job", help="take the options of this weekly_review job (default: the schedule's first)")
    report.add_argument("--now", help="end the week at this ISO 8601 time instead of now")
    report.add_argument("--json", action="store_true", help="print (or write) the JSON report instead of Markdown")
    report.add_argument("--out", type=Path, metavar="FILE", help="write the report to FILE and print where it is")
    _backup_commands(sub)
    deps = command("deps", "Check local projects' dependencies, advisories and Node.js runtime now.", _deps,
                   config=False)  # fmt: skip
    deps.add_argument("paths", nargs="+", metavar="PATH", help="project folders (with package.json and a lockfile)")
    deps.add_argument("--registry", default=None, help="npm registry URL (default: the public registry)")
    deps.add_argument("--fail-on", default="high", choices=["info", "low", "moderate", "high", "critical"])
    deps.add_argument("--node-index", default=None, help="Node.js release index URL (index.json or index.tab)")
    deps.add_argument("--node-schedule", default=None, help="Node.js release schedule URL (schedule.json)")
    deps.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _backup_commands(sub: Any) -> None:
    """`backups list|verify|prune` and `restore`."""
    backups = sub.add_parser("backups", help="List, verify and prune MongoDB backups.",
                             description="List, verify and prune MongoDB backups.")  # fmt: skip
    backup_sub = backups.add_subparsers(dest="backups_command", required=True, metavar="ACTION")
    b_list = backup_sub.add_parser("list", help="complete backups, newest first")
    b_list.add_argument("--job", help="only this backup job's")
    b_list.add_argument("--json", action="store_true", help="print JSON")
    b_verify = backup_sub.add_parser("verify", help="check every frame, CRC and count of an archive")
    b_verify.add_argument("target", metavar="KEY_OR_PATH", help="a key in a backup job's storage, or a file")
    b_verify.add_argument("--json", action="store_true", help="print JSON")
    b_prune = backup_sub.add_parser("prune", help="apply each backup job's retention now")
    b_prune.add_argument("--job", help="only this backup job")
    b_prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    restore = sub.add_parser("restore", help="Restore a backup (or any mongodump archive) into a server.",
                             description="Restore a backup (or any mongodump archive) into a server. "
                                         "Refuses to touch a database that holds data unless --drop.")  # fmt: skip
    restore.add_argument("target", metavar="KEY_OR_PATH", help="a key in a backup job's storage, or a file")
    restore.add_argument("--to", required=True, metavar="URI", help="the server to restore into")
    restore.add_argument("--ns-from", metavar="PATTERN", help="rename namespaces: e.g. 'app.*'")
    restore.add_argument("--ns-to", metavar="PATTERN", help="... to e.g. 'app_restored.*'")
    restore.add_argument("--drop", action="store_true", help="drop target databases that hold data first")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.add_argument("--dry-run", action="store_true", help="say what would be restored where; change nothing")
    restore.add_argument("--config", type=Path, help="schedule file (default: $OPSKEEPER_CONFIG or config/jobs.yaml)")
    restore.set_defaults(handler=_restore)
    for p in (b_list, b_verify, b_prune):
        p.add_argument("--config", type=Path, help="schedule file (default: $OPSKEEPER_CONFIG or config/jobs.yaml)")
    b_list.set_defaults(handler=_backups_list)
    b_verify.set_defaults(handler=_backups_verify)
    b_prune.set_defaults(handler=_backups_prune)


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


def _redactor(settings: Settings, config: ScheduleConfig | None = None) -> Redactor:
    """Every secret this process knows of: settings, secret-named environment variables, the schedule's."""
    return Redactor([*settings.secret_values(), *secret_env_values(os.environ), *(config.secrets if config else ())])


def _reporting(settings: Settings, config: ScheduleConfig | None) -> tuple[Redactor, SentryReporter]:
    redactor = _redactor(settings, config)
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
        runner = Runner(ledger, sentry, redactor, config.timezone)
        runner.jobs = {j.id: j for j in config.jobs}
        record = runner.run(job)
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
    redactor = _redactor(settings)
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
    redactor = _redactor(settings)
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


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.review.markdown import to_markdown
    from jobs.review.weekly import WeeklyReviewOptions, build

    config = _config(args, settings)
    reviews = [j for j in config.jobs if j.kind == "weekly_review" and (args.job is None or j.id == args.job)]
    if args.job and not reviews:
        raise _CliError(f"no weekly_review job {args.job!r} in {config.path}")
    options = reviews[0].options if reviews else WeeklyReviewOptions()
    try:
        now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    except ValueError:
        raise _CliError(f"--now {args.now!r}: not an ISO 8601 time") from None
    if now.tzinfo is None:
        raise _CliError(f"--now {args.now!r}: give a UTC offset, e.g. {args.now}+00:00")
    redactor = _redactor(settings, config)
    ledger = _ledger(settings, redactor)
    try:
        report = redactor(build(options, ledger, {j.id: j for j in config.jobs}, now))
    finally:
        ledger.close()
    text = json.dumps(report, indent=2) + "\n" if args.json else to_markdown(report)
    if args.out is None:
        if not args.json and sys.stdout.isatty():
            # A chart is one long line of SVG: noise on a terminal, so only files get them.
            text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("<svg"))
            text += "\n(charts are left out on a terminal: use --out FILE for the report with its charts)\n"
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    need = len(report["needs_attention"])
    print(f"weekly report written to {args.out} ({need} item(s) need attention, {len(report['gaps'])} gap(s))")
    return 0


def _deploy_services(config: ScheduleConfig) -> list[tuple[JobSpec, Any]]:
    """(deploys job, service) for every service any deploys job follows."""
    return [(job, service) for job in config.jobs if job.kind == "deploys" for service in job.options.services]


def _deploys(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.deploys import ServiceHistory, state_key

    config = _config(args, settings)
    pairs = [(j, s) for j, s in _deploy_services(config) if args.service in (None, s.name)]
    if not pairs:
        raise _CliError(f"no deploys job in {config.path} follows {args.service or 'any service'}")
    ledger = _ledger(settings, _redactor(settings))
    try:
        histories = [(s.name, ServiceHistory.load(ledger.get_state(j.id, state_key(s.name)))) for j, s in pairs]
    finally:
        ledger.close()
    rows = [
        {"service": name, "deploy_id": d.deploy_id, "commit": d.commit, "message": d.message, "status": d.status,
         "finished_at": d.finished_at, "good": d.good}
        for name, history in histories for d in history.deploys
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for name, history in histories:
        good = history.last_good()
        print(f"{name}: last known good: {good.label() if good else 'none yet'}")
        for d in history.deploys[:20]:
            mark = "good" if d.good else ""
            print(f"    {d.deploy_id:<24} {d.status:<20} {d.commit[:7]:<8} {mark:<5} {d.message[:60]}")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.deploys import DeployRecord, RenderAPI, RenderError, ServiceHistory, rollback_target, state_key

    config = _config(args, settings)
    found = [(j, s) for j, s in _deploy_services(config) if s.name == args.service]
    if not found:
        known = ", ".join(s.name for _, s in _deploy_services(config)) or "none"
        raise _CliError(f"no service {args.service!r} in {config.path}; services: {known}")
    job, service = found[0]
    redactor, _sentry = _reporting(settings, config)
    try:
        api = RenderAPI(job.options.api_url, job.options.key())
    except RenderError as exc:
        raise _CliError(str(exc)) from None
    ledger = _ledger(settings, redactor)
    try:
        history = ServiceHistory.load(ledger.get_state(job.id, state_key(service.name)))
        try:
            live = next((DeployRecord.from_api(d) for d in api.deploys(service.service_id, 20, 1)
                         if d.get("status") == "live"), None)  # fmt: skip
            target = rollback_target(history, live, args.to)
        except (RenderError, TransientError) as exc:
            raise _CliError(f"{service.name}: {redactor.text(str(exc))}", 3) from None
        current = live.label() if live else "no live deploy"
        print(f"Roll back {service.name} ({service.service_id})\n  from {current}\n  to   {target.label()}")
        if args.dry_run:
            print("dry run: nothing was sent")
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                raise _CliError("refusing to roll back without confirmation: stdin is not a terminal; pass --yes")
            if input("Proceed? [y/N] ").strip().lower() not in ("y", "yes"):
                print("cancelled")
                return 1
        try:
            started = datetime.now(UTC)
            new_deploy = api.rollback(service.service_id, target.deploy_id)
            if args.disable_autodeploy:
                api.disable_autodeploy(service.service_id)
        except (RenderError, TransientError) as exc:
            raise _CliError(redactor.text(str(exc)), 3) from None
        summary = f"rolled back {service.name} from {live.deploy_id if live else '-'} to {target.deploy_id}"
        ledger.record(RunRecord(
            run_id=uuid.uuid4().hex, job_id=job.id, kind="rollback", status=Status.OK, started_at=started,
            finished_at=datetime.now(UTC), summary=summary, host=socket.gethostname(), version=version(),
            details={"service": service.name, "from": live and live.deploy_id, "to": target.deploy_id,
                     "new_deploy": new_deploy.get("id"), "autodeploy_disabled": args.disable_autodeploy},
        ))  # fmt: skip
        print(f"{summary}; Render started deploy {new_deploy.get('id', '(id not returned)')}")
        if not args.disable_autodeploy:
            print("note: auto-deploy is still on: the next push to the branch deploys again "
                  "(use --disable-autodeploy to turn it off)")  # fmt: skip
        return 0
    finally:
        api.close()
        ledger.close()


def _backup_jobs(config: ScheduleConfig, only: str | None = None) -> list[JobSpec]:
    jobs = [j for j in config.jobs if j.kind == "backup" and only in (None, j.id)]
    if not jobs:
        raise _CliError(f"no backup job {only!r} in {config.path}" if only else f"no backup job in {config.path}")
    return jobs


def _backups_list(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.backup.catalog import list_backups

    config = _config(args, settings)
    entries = [e for job in _backup_jobs(config, args.job) for e in list_backups(job.options.open_storage(), job.id)]
    entries.sort(key=lambda e: e.created_at, reverse=True)
    if args.json:
        print(json.dumps([e.public() for e in entries], indent=2))
        return 0
    if not entries:
        print("no complete backups yet")
    for e in entries:
        mark = "verified" if e.verified else ""
        print(f"{e.created_at:%Y-%m-%d %H:%M:%S}  {e.job_id:<16} {e.size_bytes / 1e6:9.2f} MB  {e.compression:<5} "
              f"{e.collections:3d} coll {e.documents:10d} docs  {mark:<8} {e.key}")  # fmt: skip
    return 0


class _Progress:
    """A one-line progress display on a terminal (bytes, docs/s); silent otherwise."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, stored_bytes: int, documents: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.25:
            return
        self._last = now
        rate = documents / max(now - self.started, 1e-6)
        print(f"\r  {stored_bytes / 1e6:10.1f} MB read  {documents:12d} docs  {rate:10.0f} docs/s",
              end="", file=sys.stderr, flush=True)  # fmt: skip

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


@contextlib.contextmanager
def _open_archive(args: argparse.Namespace, settings: Settings) -> Iterator[tuple[BinaryIO, dict[str, Any] | None]]:
    """An archive by local path or by key in a backup job's storage, with its manifest if any."""
    from jobs.backup.catalog import MANIFEST, base_of

    path = Path(args.target)
    if path.is_file():
        sibling = path.with_name(Path(base_of(path.name)).name + MANIFEST)
        manifest = json.loads(sibling.read_text(encoding="utf-8")) if sibling.is_file() else None
        with path.open("rb") as stream:
            yield stream, manifest
        return
    config = _config(args, settings)
    storage = next((s for s in (j.options.open_storage() for j in _backup_jobs(config)) if s.exists(args.target)),
                   None)  # fmt: skip
    if storage is None:
        raise _CliError(f"{args.target}: no such file, nor a key in any backup job's storage")
    manifest_key = base_of(args.target) + MANIFEST
    manifest = None
    if storage.exists(manifest_key):
        with storage.open(manifest_key) as stream:
            manifest = json.loads(stream.read())
    with storage.open(args.target) as stream:
        yield stream, manifest


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from pymongo import MongoClient

    from jobs.backup.archive import ArchiveReader
    from jobs.backup.catalog import HashingReader, decompressed
    from jobs.backup.restore import RestoreError, ns_mapper, restore

    try:
        rename = ns_mapper(args.ns_from, args.ns_to)
    except ValueError as exc:
        raise _CliError(str(exc)) from None
    redactor = _redactor(settings)
    target_display = redactor.text(args.to)
    with _open_archive(args, settings) as (stream, _manifest):
        reader = ArchiveReader(decompressed(HashingReader(stream)))
        try:
            reader.read_prelude()
        except Exception as exc:  # noqa: BLE001 - any unreadable archive: one clear line
            raise _CliError(f"{args.target}: {exc}") from None
    plan = [(p.ns, *rename(p.db, p.collection), p.type or "collection") for p in reader.preludes if p.db]
    _print_plan(args.target, target_display, plan, _manifest)
    client: Any = MongoClient(args.to, appname="opskeeper-restore", serverSelectionTimeoutMS=10_000)
    try:
        targets = sorted({db for _, db, _, _ in plan})
        occupied = [db for db in targets if _holds_data(client, db)]
        if args.dry_run:
            note = f"; {', '.join(occupied)} already hold data (needs --drop)" if occupied else ""
            print(f"dry run: nothing was restored{note}")
            return 0
        if not _may_drop(args, occupied, target_display):
            print("cancelled: nothing was changed")
            return 1
        for db in occupied:
            client.drop_database(db)
        progress = _Progress()
        started = datetime.now(UTC)
        with _open_archive(args, settings) as (stream, _):
            try:
                report = restore(stream, client, rename, progress)
            except RestoreError as exc:
                raise _CliError(f"restore failed: {redactor.text(str(exc))}", 3) from None
        progress.done()
    finally:
        client.close()
    summary = f"restored {report.documents} documents into {len(targets)} database(s) from {args.target}"
    ledger = _ledger(settings, redactor)
    try:
        ledger.record(RunRecord(
            run_id=uuid.uuid4().hex, job_id="(restore)", kind="restore", status=Status.OK, started_at=started,
            finished_at=datetime.now(UTC), summary=summary, host=socket.gethostname(), version=version(),
            details={"source": args.target, "target": target_display, "dropped": occupied,
                     "namespaces": {n.source: n.documents for n in report.namespaces},
                     "skipped": {n.source: n.skipped for n in report.namespaces if n.skipped}},
        ))  # fmt: skip
    finally:
        ledger.close()
    print(summary + "".join(f"\n    skipped {n.source}: {n.skipped}" for n in report.namespaces if n.skipped))
    return 0


def _print_plan(source: str, target: str, plan: list[tuple[str, str, str, str]], manifest: Any) -> None:
    counts = {n["ns"]: n for n in (manifest or {}).get("namespaces", [])}
    print(f"Restore {source} into {target}:")
    for ns, db, coll, kind in plan:
        known = counts.get(ns)
        size = f"{known['documents']} documents, {known['bytes'] / 1e6:.1f} MB" if known else "size unknown"
        print(f"    {ns} -> {db}.{coll}  ({kind}; {size})")


def _may_drop(args: argparse.Namespace, occupied: list[str], target: str) -> bool:
    """Whether databases that hold data may be replaced: --drop, then typed names or --yes."""
    if not occupied:
        return True
    if not args.drop:
        raise _CliError(f"refusing to restore: {', '.join(occupied)} already hold data on {target}; "
                        "pass --drop to replace them")  # fmt: skip
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise _CliError("refusing to drop without confirmation: stdin is not a terminal; pass --yes")
    return all(input(f"Type the database name to drop and replace it ({db}): ").strip() == db for db in occupied)


def _holds_data(client: Any, db: str) -> bool:
    """Whether a database exists and any of its collections holds a document."""
    if db not in client.list_database_names():
        return False
    database = client[db]
    return any(database[name].find_one({}, {"_id": 1}) is not None for name in database.list_collection_names()
               if not name.startswith("system."))  # fmt: skip


def _backups_verify(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.backup.catalog import verify

    progress = _Progress()
    with _open_archive(args, settings) as (stream, manifest):
        report = verify(stream, manifest, progress)
    progress.done()
    if args.json:
        print(json.dumps(report.public(), indent=2))
    else:
        for ns in report.namespaces:
            print(f"{'ok ' if ns['crc_ok'] else 'BAD'} {ns['ns']}: {ns['documents']} documents")
        for problem in report.problems:
            print(f"problem: {problem}")
        print("OK" if report.ok else f"FAILED: {len(report.problems)} problem(s)")
    return 0 if report.ok else EXIT_CONFIG


def _backups_prune(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.backup.catalog import prune

    config = _config(args, settings)
    redactor = _redactor(settings)
    ledger = None if args.dry_run else _ledger(settings, redactor)
    try:
        for job in _backup_jobs(config, args.job):
            started = datetime.now(UTC)
            gone = prune(job.options.open_storage(), job.id, job.options.retention, dry_run=args.dry_run)
            verb = "would delete" if args.dry_run else "deleted"
            print(f"{job.id}: {verb} {len(gone)} backup(s)")
            for entry in gone:
                print(f"    {entry.key}")
            if ledger is not None:
                ledger.record(RunRecord(
                    run_id=uuid.uuid4().hex, job_id=job.id, kind="prune", status=Status.OK, started_at=started,
                    finished_at=datetime.now(UTC), summary=f"pruned {len(gone)} backup(s)", host=socket.gethostname(),
                    version=version(), details={"deleted": [e.key for e in gone]},
                ))  # fmt: skip
    finally:
        if ledger is not None:
            ledger.close()
    return 0


def _deps(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from jobs.dependencies.job import (
        NODE_INDEX,
        NODE_SCHEDULE,
        NPM_REGISTRY,
        DependenciesOptions,
        Project,
        check_projects,
        verdict,
    )  # fmt: skip
    from jobs.dependencies.registry import RegistryError

    options = DependenciesOptions(
        projects=tuple(Project(name=Path(p).resolve().name, path=str(Path(p).resolve())) for p in args.paths),
        registry=args.registry or NPM_REGISTRY, fail_on_severity=args.fail_on,
        node_index=args.node_index or NODE_INDEX, node_schedule=args.node_schedule or NODE_SCHEDULE,
    )  # fmt: skip
    redactor = _redactor(settings)
    ledger = _ledger(settings, redactor)
    today = datetime.now(UTC).date()
    try:
        # The ETag cache lives in the ledger, so the next check asks the registry only for what changed.
        cache = ledger.get_state("(deps)", "registry_cache", {}) or {}
        try:
            reports = asyncio.run(check_projects(options, Path.cwd(), cache, today, os.environ.get("NPM_TOKEN")))
        except RegistryError as exc:
            raise _CliError(redactor.text(str(exc)), 3) from None
        ledger.set_state("(deps)", "registry_cache", cache)
    finally:
        ledger.close()
    status, summary = verdict(reports, options, today)
    if args.json:
        print(json.dumps({"status": status.value, "projects": [r.public() for r in reports]}, indent=2, default=str))
        return status.exit_code
    _print_deps(reports)
    print(f"{status.value.upper()}: {summary}")
    return status.exit_code


def _print_deps(reports: list[Any]) -> None:
    """The readable table `opskeeper deps` prints on a terminal."""
    for report in reports:
        print(f"{report.name} ({report.path}), lockfile {report.lockfile_version}, {report.resolved_count} packages")
        for problem in report.problems:
            print(f"    problem: {problem}")
        for d in report.direct:
            if d["update"] != "none" or d["deprecated"]:
                note = f"  DEPRECATED: {d['deprecated']}" if d["deprecated"] else ""
                print(f"    {d['name']:<32} {d['locked']:>12} wanted {d['wanted'] or '-':>12} "
                      f"latest {d['latest'] or '-':>12}  {d['update']}{note}")  # fmt: skip
        for a in report.advisories:
            via = ", ".join(" > ".join(chain) for chain in a["via"][:2]) or a["package"]
            fix = f", fixed in {a['fixed_in']}" if a["fixed_in"] else ""
            head = f"    {a['severity'].upper():<9} {a['package']}@{a['version']}"
            print(f"{head}: {a['title']} ({a['url']}){fix}; via {via}")
        if report.node:
            n = report.node
            print(f"    Node.js {n['declared']}: {n['status']}, end of life {n['eol_date']}, "
                  f"latest LTS {n['latest_lts']}" + (f", security release {n['security_release']}"
                                                     if n["security_release"] else ""))  # fmt: skip
