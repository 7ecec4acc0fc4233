"""What every opskeeper command shares: exit codes, the schedule, the ledger, redaction, the run log.

Each kind's commands live beside its code (`jobs/<kind>/commands.py`, a `register` function)
and are listed in `worker.cli.COMMANDS`; this module is all of the core they use.

Exit codes, the same for every command:

| code | meaning |
| ---- | ------- |
| 0    | success (`run-now`: the job was OK) |
| 1    | `run-now`: WARN; a confirmation was declined |
| 2    | `run-now`: FAIL; `backups verify`: the archive is bad |
| 3    | `run-now`: ERROR or timeout; an outside system failed (ledger, vendor, server) |
| 64   | usage: an unknown option, job, service or file |
| 78   | the schedule file is invalid |
| 130  | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    # Only named here. Each helper imports what it uses when called, so that `--version`, `--help` and a
    # command that needs none of them do not pay for pydantic, sentry_sdk, structlog or the drivers
    # (tests/test_cli.py pins what `--version` loads).
    from worker.ledger import Ledger
    from worker.reporting.redact import Redactor
    from worker.reporting.sentry import SentryReporter
    from worker.schedule import ScheduleConfig
    from worker.scheduler import Daemon
    from worker.settings import Settings

EXIT_BAD = 2
EXIT_ERROR = 3
EXIT_USAGE = 64
EXIT_CONFIG = 78

Handler = Callable[[argparse.Namespace, "Settings"], int]
DaemonHook = Callable[["Daemon", "Settings"], None]
"""Called by `opskeeper run` with the daemon before it starts serving."""


class CliError(Exception):
    """A message for stderr and the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (argparse's own 2 is a job's FAIL here)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but an unknown option is reported by the subcommand it was given to, with that
        subcommand's usage (argparse leaves it to the top level, whose usage says nothing of the subcommand's)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            owner: argparse.ArgumentParser = getattr(parsed, "_parser", self)
            owner.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


class Commands:
    """The table of subcommands; each kind's `register(commands)` adds its own, and its daemon hooks."""

    def __init__(self, sub: Any, daemon_hooks: list[DaemonHook] | None = None) -> None:
        self._sub = sub
        #: What each kind adds to the daemon (the review kind's status page publisher), in registration order.
        self.daemon_hooks: list[DaemonHook] = [] if daemon_hooks is None else daemon_hooks

    def on_daemon(self, hook: DaemonHook) -> None:
        """Have `opskeeper run` call `hook(daemon, settings)` before serving: how a kind adds to the daemon
        without the core importing its internals."""
        self.daemon_hooks.append(hook)

    def add(self, name: str, help_text: str, handler: Handler, *, config: bool = True) -> argparse.ArgumentParser:
        """A subcommand calling `handler(args, settings)`; `config` adds --config."""
        parser: argparse.ArgumentParser = self._sub.add_parser(name, help=help_text, description=help_text)
        if config:
            add_config_option(parser)
        parser.set_defaults(handler=handler, _parser=parser)
        return parser

    def group(self, name: str, help_text: str) -> Commands:
        """A subcommand with actions of its own (`backups list`, `backups verify`, ...)."""
        parser = self._sub.add_parser(name, help=help_text, description=help_text)
        return Commands(parser.add_subparsers(dest=f"{name}_action", required=True, metavar="ACTION"),
                        self.daemon_hooks)  # fmt: skip


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """--config, as every command that reads the schedule takes it."""
    parser.add_argument("--config", type=Path, help="schedule file (default: $OPSKEEPER_CONFIG or config/jobs.yaml)")


def schedule(args: argparse.Namespace, settings: Settings) -> ScheduleConfig:
    """The validated schedule; a missing file is a usage error, an invalid one a configuration error."""
    from worker import registry  # the kinds, imported when a command needs the schedule
    from worker.schedule import ConfigError, load_config

    path: Path = getattr(args, "config", None) or settings.config_path
    try:
        return load_config(path, registry.OPTIONS)
    except ConfigError as exc:
        code = EXIT_CONFIG if path.exists() else EXIT_USAGE  # a wrong path is a usage slip, not a bad schedule
        raise CliError(f"{len(exc.problems)} problem(s) in {path}:\n{exc}", code) from None


def redactor(settings: Settings, config: ScheduleConfig | None = None) -> Redactor:
    """Every secret this process knows of: settings, secret-named environment variables, the schedule's."""
    from worker.reporting.redact import Redactor
    from worker.settings import secret_env_values

    return Redactor([*settings.secret_values(), *secret_env_values(os.environ), *(config.secrets if config else ())])


def ledger(settings: Settings, masks: Redactor) -> Ledger:
    """The ledger the settings name; failing to open it is an outside failure (3), said without secrets."""
    from worker.ledger import open_ledger

    target = settings.ledger.get_secret_value()
    try:
        return open_ledger(target)
    except Exception as exc:  # noqa: BLE001 - any driver error: say where and why, without secrets
        reason = masks.text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
        raise CliError(f"cannot open the ledger {masks.text(target)}: {reason}", EXIT_ERROR) from None


def reporting(
    settings: Settings, config: ScheduleConfig | None, *, daemon: bool = False
) -> tuple[Redactor, SentryReporter]:
    """Logging and Sentry for a command that runs jobs.

    The daemon's output is its log, so it logs to stdout; any other command keeps stdout for
    its result (one JSON document with --json) and logs to stderr.
    """
    from worker.reporting.log import configure
    from worker.reporting.sentry import SentryReporter

    masks = redactor(settings, config)
    configure(settings.log_format, masks, sys.stdout if daemon else sys.stderr)
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None
    web = sentry_web(settings)
    owners: dict[str, str] = {}
    if dsn and config is not None:
        from worker.reporting.log import get_logger
        from worker.reporting.sentry import resolve_owners

        owners, problems = resolve_owners(config.jobs, web)
        for problem in problems:  # `validate` refuses these; a running daemon sends such monitors no owner
            get_logger().warning("sentry.owner_unresolved", problem=masks.text(problem))
    sentry = SentryReporter(
        dsn, environment=settings.sentry_environment, release=settings.sentry_release,
        traces_sample_rate=settings.sentry_traces_sample_rate, redactor=masks, web=web, owners=owners,
    )  # fmt: skip
    return masks, sentry


def sentry_web(settings: Settings) -> Any:
    """Sentry's web API for this organization when SENTRY_ORG and SENTRY_AUTH_TOKEN are both set; else None."""
    if not settings.sentry_org or settings.sentry_auth_token is None:
        return None
    from worker.vendors.sentry_api import SentryAPI

    return SentryAPI(settings.sentry_api_url, settings.sentry_org, settings.sentry_auth_token.get_secret_value(),
                     (), timedelta(seconds=10))  # fmt: skip


def record(store: Ledger, *, job_id: str, kind: str, started: datetime, summary: str, details: dict[str, Any]) -> None:
    """Keep a command's own action (a restore, a prune, a rollback) in the run history, as OK."""
    from worker.job import Status
    from worker.ledger import RunRecord
    from worker.version import version

    store.record(RunRecord(
        run_id=uuid.uuid4().hex, job_id=job_id, kind=kind, status=Status.OK, started_at=started,
        finished_at=datetime.now(UTC), summary=summary, host=socket.gethostname(), version=version(),
        details=details,
    ))  # fmt: skip


def confirm(prompt: str, refusal: str) -> str:
    """Ask on the terminal; without one, refuse with `refusal` (which should name --yes)."""
    if not sys.stdin.isatty():
        raise CliError(refusal)
    return input(prompt).strip()


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time from an option such as --now; it must carry a UTC offset."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option} {text!r}: not an ISO 8601 time like 2026-03-28T12:00:00+01:00") from None
    if moment.tzinfo is None:
        raise CliError(f"{option} {text!r}: give a UTC offset, e.g. {text}+00:00")
    return moment


def is_http_config_error(exc: BaseException) -> bool:
    """Whether `exc` is an HTTP set-up error (a bad proxy or CA bundle setting): a configuration error, 78.

    Looked up only if worker.http was imported: a command that made no HTTP request cannot have raised one,
    and importing httpx to find out would cost every command its start-up.
    """
    http = sys.modules.get("worker.http")
    return http is not None and isinstance(exc, http.HttpConfigError)


def outside_failure(exc: BaseException) -> str | None:
    """One sentence for an outside system's failure that reached a command (S3, MongoDB), or None for anything
    else, which stays a bug with its traceback. Exit code 3."""
    if type(exc).__module__.startswith("pymongo"):
        from worker.mongodb import unreachable

        return unreachable(exc)
    if type(exc).__module__.startswith("botocore"):
        from worker.storage.s3 import failure

        return failure(exc)
    return None
