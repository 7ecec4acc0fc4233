"""The `opskeeper` command: the core commands and the composition of every kind's own.

The core keeps `run`, `validate`, `jobs`, `run-now` and `history`; each kind adds its commands
through the `register` function of its `commands` module, listed in `COMMANDS`, and what it adds
to the daemon through `Commands.on_daemon`. This module imports nothing else of a kind. Exit
codes are in `worker.commands`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jobs.backup import commands as backup_commands
from jobs.dependencies import commands as dependencies_commands
from jobs.deploys import commands as deploys_commands
from jobs.health import commands as health_commands
from jobs.review import commands as review_commands
from worker import commands
from worker.commands import EXIT_CONFIG, EXIT_ERROR, CliError, Commands, Parser, add_config_option

if TYPE_CHECKING:
    from worker.settings import Settings

# Nothing else is imported here at start: each command imports what it uses when it runs, so
# `--version` and `--help` answer at once (tests/test_cli.py pins what `--version` may load).

#: Every kind's commands, in the order `opskeeper --help` lists them after the core's.
COMMANDS: tuple[Callable[[Commands], None], ...] = (
    health_commands.register,
    deploys_commands.register,
    review_commands.register,
    backup_commands.register,
    dependencies_commands.register,
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and `python -m worker`."""
    args = parser().parse_args(argv)
    from worker.reporting.log import configure
    from worker.settings import SettingsError, load_settings

    settings: Settings | None = None
    try:
        settings = load_settings()
        # Until a command sets up its own: log lines (a retry, say) go to stderr, never into a result.
        configure(settings.log_format, commands.redactor(settings), sys.stderr)
        code = int(args.handler(args, settings))
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return code
    except SettingsError as exc:
        print(f"opskeeper: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CliError as exc:
        print(f"opskeeper: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`opskeeper jobs | head`): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool a pipe ended
    except Exception as exc:
        if commands.is_http_config_error(exc):
            print(f"opskeeper: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        said = commands.outside_failure(exc)
        if said is None:
            raise
        # Only a handler meets an outside system, so the settings (and the secrets to mask) are loaded by now.
        print(f"opskeeper: {commands.redactor(settings).text(said) if settings else said}", file=sys.stderr)
        return EXIT_ERROR


def parser() -> argparse.ArgumentParser:
    """The whole command line: the core commands, then each kind's."""
    top = Parser(prog="opskeeper", description="Runs your app's operations plan.")
    top.add_argument("--version", action=_Version, nargs=0, help="show opskeeper's version and exit")
    cli = Commands(top.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    run = cli.add("run", "Run the daemon: schedule every job until SIGTERM.", _run)
    run.add_argument("--for", dest="run_for", metavar="DURATION", help="stop by itself after this long, e.g. 30s")
    cli.add("validate", "Check the schedule file; print every problem.", _validate)
    jobs = cli.add("jobs", "List the jobs, their schedules in words and their next runs.", _jobs)
    jobs.add_argument("--now", help="compute next runs from this ISO 8601 time instead of now")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    run_now = cli.add("run-now", "Run one job once in the foreground and record it.", _run_now)
    run_now.add_argument("job_id", metavar="JOB_ID")
    run_now.add_argument("--json", action="store_true", help="print the outcome as one JSON document")
    history = cli.add("history", "Show recent runs, newest first.", _history, config=False)
    history.add_argument("--job", help="only this job's runs")
    history.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    history.add_argument("--json", action="store_true", help="print JSON")
    add_config_option(history)
    for register in COMMANDS:
        register(cli)
    run.set_defaults(daemon_hooks=tuple(cli.daemon_hooks))
    return top


class _Version(argparse.Action):
    """--version, looked up when asked for: reading the installed distribution's metadata costs every other
    command its start-up."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from worker.version import version

        print(f"opskeeper {version()}")
        parser.exit()


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    from worker.job import JobOptions

    config = commands.schedule(args, settings)
    if any(job.monitor.team_slug for job in config.jobs):  # only then is Sentry's web API asked
        from worker.reporting.sentry import resolve_owners

        web = commands.sentry_web(settings)
        try:
            _, problems = resolve_owners(config.jobs, web)
        finally:
            if web is not None:
                web.close()
        if problems:
            raise CliError(f"{len(problems)} problem(s) in {config.path}:\n" + "\n".join(problems), EXIT_CONFIG)
    print(f"OK: {len(config.jobs)} jobs")
    if not config.jobs:
        print(f"WARNING: {config.path} has no jobs: the daemon would run nothing, and a running daemon keeps its "
              "schedule rather than reload an empty one", file=sys.stderr)  # fmt: skip
    # A missing tool is a warning, not a failed deploy: which tool a project needs is only known when its
    # lockfile is read, at run time.
    for job in config.jobs:
        for line in job.options.missing() if job.enabled and isinstance(job.options, JobOptions) else []:
            print(f"WARNING: job {job.id!r} ({job.kind}): {line}", file=sys.stderr)
    return 0


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    from worker.timespec import describe, upcoming

    config = commands.schedule(args, settings)
    now = datetime.now(UTC)
    if args.now:
        try:
            now = datetime.fromisoformat(args.now)
        except ValueError:
            raise CliError(f"--now {args.now!r}: not an ISO 8601 time like 2026-03-28T12:00:00+01:00") from None
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
    from worker.ledger import describe_place, lost_on_deploy
    from worker.reporting.log import get_logger
    from worker.scheduler import Daemon  # the daemon's imports are only needed here
    from worker.timespec import parse_duration

    config = commands.schedule(args, settings)
    run_for = None
    if args.run_for:
        try:
            run_for = parse_duration(args.run_for)
        except ValueError as exc:
            raise CliError(f"--for: {exc}") from None
    masks, sentry = commands.reporting(settings, config, daemon=True)
    ledger = commands.ledger(settings, masks)
    damage = ledger.damage()
    if damage is not None:
        ledger.close()
        where = describe_place(settings.ledger.get_secret_value(), masks)[1]
        raise CliError(f"the ledger {where} is damaged ({damage}): refusing to run, as nothing could be recorded; "
                       f"move it aside (mv {where} {where}.damaged) and start again with an empty one, or set "
                       "OPSKEEPER_LEDGER to a mongodb+srv:// URL, the durable choice (see render.yaml)",
                       EXIT_ERROR)  # fmt: skip
    daemon = Daemon(config, ledger, sentry, masks, grace=settings.shutdown_grace, poll=settings.reload_poll,
                    lease_ttl=settings.lease_ttl, lease_renew=settings.lease_renew)  # fmt: skip
    for hook in args.daemon_hooks:
        hook(daemon, settings)
    daemon.install_signal_handlers()
    target = settings.ledger.get_secret_value()
    kind, where = describe_place(target, masks)
    lost = lost_on_deploy(target, os.environ)
    if lost:
        get_logger().warning("ledger.not_durable", ledger=where, summary=lost)
        sentry.problem(f"opskeeper: {lost}", "ledger-not-durable", "warning", ledger=where)
    try:
        daemon.serve(run_for, ledger=kind, ledger_at=where)
    finally:
        ledger.close()
    return 0


def _run_now(args: argparse.Namespace, settings: Settings) -> int:
    from worker import children
    from worker.leadership import Presence, instance_id
    from worker.reporting.log import get_logger
    from worker.runner import Runner

    config = commands.schedule(args, settings)
    try:
        job = config.job(args.job_id)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    masks, sentry = commands.reporting(settings, config)
    ledger = commands.ledger(settings, masks)
    # Heartbeat like a daemon, so the leader does not take this run for a dead daemon's orphan.
    presence = Presence(ledger, instance_id(), settings.lease_renew)
    presence.start()
    try:
        runner = Runner(ledger, sentry, masks, config.timezone)
        runner.jobs = {j.id: j for j in config.jobs}
        runner.instance = presence.instance
        from worker.reporting.progress import ProgressReport

        # On a terminal, live bars; elsewhere, progress as log lines beside the run's other ones.
        runner.progress = ProgressReport(log=None if sys.stderr.isatty() else get_logger().info)
        succeeded = False
        try:
            record = runner.run(job)
            succeeded = record.status.is_success
        finally:
            runner.progress.close(finish=succeeded)
    finally:
        # A run that timed out may have left a program running: its whole process group goes.
        children.kill_all()
        presence.stop()
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
    ledger = commands.ledger(settings, commands.redactor(settings))
    try:
        records = ledger.recent(args.job, max(1, args.limit))
    finally:
        ledger.close()
    if args.job and not records:
        _known_job(args, settings)
    if args.json:
        print(json.dumps([r.public() for r in records], indent=2))
        return 0
    if not records:
        print(f"no runs of {args.job} recorded yet" if args.job else "no runs recorded yet")
    for r in records:
        local = r.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        took = "" if r.duration_s is None else f"{r.duration_s:7.2f}s"
        print(f"{local}  {r.status.value:<11} {took:>8}  {r.job_id:<24} {r.summary}")
    return 0


def _known_job(args: argparse.Namespace, settings: Settings) -> None:
    """A job with no runs must at least be in the schedule: a typo is a usage error, not an empty history."""
    try:
        config = commands.schedule(args, settings)
    except CliError as exc:
        raise CliError(f"no runs recorded for job {args.job!r}, and the schedule cannot say whether it exists: "
                       f"{str(exc).splitlines()[0]}") from None  # fmt: skip
    if args.job not in {j.id for j in config.jobs}:
        ids = ", ".join(j.id for j in config.jobs) or "none"
        raise CliError(f"no job {args.job!r} in {config.path} and no runs recorded for it; jobs: {ids}")
