"""`opskeeper deploys` and `opskeeper rollback`: the deploys kind's commands."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from worker import commands
from worker.commands import EXIT_ERROR, CliError, Commands

if TYPE_CHECKING:
    from worker.schedule import JobSpec, ScheduleConfig
    from worker.settings import Settings


def register(cli: Commands) -> None:
    """Add `deploys [SERVICE]` and `rollback SERVICE`."""
    deploys = cli.add("deploys", "Recent deploys of the Render services, and the last known good one.", _deploys)
    deploys.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    deploys.add_argument("--json", action="store_true", help="print JSON")
    rollback = cli.add("rollback", "Roll a Render service back to its last known good deploy.", _rollback)
    rollback.add_argument("service", metavar="SERVICE")
    rollback.add_argument("--to", metavar="DEPLOY_ID", help="roll back to this deploy instead")
    rollback.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rollback.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    rollback.add_argument("--disable-autodeploy", action="store_true",
                          help="also turn auto-deploy off, so the next push does not deploy again")  # fmt: skip


def _services(config: ScheduleConfig) -> list[tuple[JobSpec, Any]]:
    """(deploys job, service) for every service any deploys job follows."""
    return [(job, service) for job in config.jobs if job.kind == "deploys" for service in job.options.services]


def _deploys(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.deploys.job import ServiceHistory, state_key

    config = commands.schedule(args, settings)
    pairs = [(j, s) for j, s in _services(config) if args.service in (None, s.name)]
    if not pairs:
        raise CliError(f"no deploys job in {config.path} follows {args.service or 'any service'}")
    ledger = commands.ledger(settings, commands.redactor(settings))
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


def _release_rollback(options: Any, service: str, target: Any, *, new_deploy: Any, live: Any, started: datetime,
                      masks: Any) -> None:  # fmt: skip
    """Mark the rollback in Sentry's releases when the deploys job writes them; a gap is said, not raised."""
    from jobs.deploys.marks import Releases

    releases = Releases.open(options, lambda event, **fields: None)
    try:
        releases.record(
            service,
            target.commit,
            str(new_deploy.get("id", target.deploy_id)),
            f"rollback from {live.deploy_id if live else '-'}",
            started=started.isoformat(),
            finished=None,
        )
    finally:
        releases.close()
    if releases.gap:
        print(f"note: Sentry release not written: {masks.text(releases.gap)}", file=sys.stderr)


def _status_rollback(api_url: str, service: Any, live: Any, target: Any, masks: Any) -> None:
    """A failure status on the commit rolled back from, when the service names its GitHub repo."""
    from jobs.deploys.marks import CommitStatuses

    statuses = CommitStatuses(api_url, lambda event, **fields: None)
    try:
        statuses.post(service, live, "failure", f"rolled back by hand to {target.deploy_id}")
    finally:
        statuses.close()
    if statuses.gap and service.repo:
        print(f"note: commit status not set: {masks.text(statuses.gap)}", file=sys.stderr)


def _send(api: Any, service_id: str, target: Any, disable_autodeploy: bool) -> tuple[str, dict[str, Any]]:
    """Roll back (or deploy the target's commit anew when its build is gone); returns (method, new deploy)."""
    method, new_deploy = "rollback", api.rollback(service_id, target.deploy_id)
    if new_deploy is None:
        if not target.commit:
            raise CliError(f"Render no longer keeps the build of {target.deploy_id}, and its commit is "
                           "unknown: deploy the commit by hand", EXIT_ERROR)  # fmt: skip
        print(f"note: Render no longer keeps the build of {target.deploy_id}: deploying its commit "
              f"{target.commit[:7]} anew")  # fmt: skip
        method, new_deploy = "deploy", api.deploy_commit(service_id, target.commit)
    if disable_autodeploy:
        api.disable_autodeploy(service_id)
    return method, new_deploy


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.deploys.job import DeployRecord, RenderError, ServiceHistory, rollback_target, state_key
    from worker.http import HttpError
    from worker.vendors.render import RenderAPI

    config = commands.schedule(args, settings)
    found = [(j, s) for j, s in _services(config) if s.name == args.service]
    if not found:
        known = ", ".join(s.name for _, s in _services(config)) or "none"
        raise CliError(f"no service {args.service!r} in {config.path}; services: {known}")
    job, service = found[0]
    masks, _sentry = commands.reporting(settings, config)
    try:
        api = RenderAPI(job.options.api_url, job.options.key())
    except RenderError as exc:
        raise CliError(str(exc)) from None
    ledger = commands.ledger(settings, masks)
    try:
        history = ServiceHistory.load(ledger.get_state(job.id, state_key(service.name)))
        try:
            live = next((DeployRecord.from_api(d) for d in api.deploys(service.service_id, 20, 1)
                         if d.get("status") == "live"), None)  # fmt: skip
            target = rollback_target(history, live, args.to)
        except (RenderError, HttpError) as exc:
            raise CliError(f"{service.name}: {masks.text(str(exc))}", EXIT_ERROR) from None
        current = live.label() if live else "no live deploy"
        print(f"Roll back {service.name} ({service.service_id})\n  from {current}\n  to   {target.label()}")
        if args.dry_run:
            print("dry run: nothing was sent")
            return 0
        if not args.yes:
            answer = commands.confirm("Proceed? [y/N] ", "refusing to roll back without confirmation: "
                                                         "stdin is not a terminal; pass --yes")  # fmt: skip
            if answer.lower() not in ("y", "yes"):
                print("cancelled")
                return 1
        try:
            started = datetime.now(UTC)
            method, new_deploy = _send(api, service.service_id, target, args.disable_autodeploy)
        except HttpError as exc:
            raise CliError(masks.text(str(exc)), EXIT_ERROR) from None
        summary = f"rolled back {service.name} from {live.deploy_id if live else '-'} to {target.deploy_id}"
        commands.record(ledger, job_id=job.id, kind="rollback", started=started, summary=summary, details={
            "service": service.name, "from": live and live.deploy_id, "to": target.deploy_id,
            "new_deploy": new_deploy.get("id"), "autodeploy_disabled": args.disable_autodeploy, "method": method,
            "automatic": False,
        })  # fmt: skip
        print(f"{summary}; Render started deploy {new_deploy.get('id', '(id not returned)')}")
        if live is not None:
            _status_rollback(job.options.github_api_url, service, live, target, masks)
        _release_rollback(job.options.sentry_releases, service.name, target, new_deploy=new_deploy, live=live,
                          started=started, masks=masks)  # fmt: skip
        if not args.disable_autodeploy:
            print("note: auto-deploy is still on: the next push to the branch deploys again "
                  "(use --disable-autodeploy to turn it off)")  # fmt: skip
        return 0
    finally:
        api.close()
        ledger.close()
