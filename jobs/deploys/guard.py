"""The deploy guard: roll a service back by itself when a new deploy breaks the app, then prove it healed.

Two pure functions decide: `decide` whether the live deploy is rolled back (or a human is
called instead, naming the guard that stopped it), and `verify` how a rollback in progress
has turned out. `roll_back` is the one side effect: the Render calls, in the order Render's
own dashboard makes them (roll back, then turn auto-deploy off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field

from jobs.deploys.history import FAILED, DeployRecord, ServiceHistory, live_since
from worker.http import HttpError
from worker.job import CheckRecord, JobOptions
from worker.schedule import Duration
from worker.timespec import format_duration
from worker.vendors.render import RenderAPI

#: How far before a deploy went live the health checks are read, to tell "broke the app" from "was already down".
BEFORE = timedelta(hours=1)
_UP = frozenset({"UP", "DEGRADED"})


class AutoRollback(JobOptions):
    """When a service with `auto_rollback: true` is rolled back without a human."""

    watch: Duration = timedelta(minutes=15)
    """A deploy is rolled back only for an outage that began within this long after it went live."""
    cooldown: Duration = timedelta(hours=6)
    """At most one automatic rollback per service in this long; a second outage calls a human."""
    skip_if_pre_deploy: bool = True
    """Call a human instead when the service runs a pre-deploy command (migrations): a rollback cannot undo one."""
    verify: Duration = timedelta(minutes=15)
    """How long the rolled-back deploy has to go live and the health job to see the app UP again."""
    error_ratio: Annotated[float, Field(gt=1)] | None = None
    """With `sentry_releases`: also roll back when the new release has this many times the errors the previous
    good release had in the same time after it went live (and at least `min_errors`)."""
    min_errors: Annotated[int, Field(ge=1)] = 20


@dataclass(frozen=True)
class Errors:
    """Sentry's error counts of the new release and of the last good one, over the same time after going live."""

    new: int
    previous: int
    window: timedelta


@dataclass(frozen=True)
class Decision:
    """What the guard does about the live deploy: nothing, roll back, or call a human (`alert`)."""

    action: Literal["none", "rollback", "alert"]
    reason: str = ""
    target: DeployRecord | None = None
    signal: str = ""
    """What showed the deploy is bad: `health` (the app went DOWN) or `errors` (Sentry)."""
    figures: Mapping[str, Any] = field(default_factory=dict)


def _health_signal(
    checks: Sequence[CheckRecord], since: datetime, watch: timedelta
) -> tuple[str, dict[str, Any] | None]:
    """(reason, figures) when the health checks show the deploy broke the app; (why not, None) otherwise."""
    why_not = ""
    for endpoint in sorted({c.endpoint for c in checks}):
        mine = [c for c in checks if c.endpoint == endpoint]
        after = [c for c in mine if c.at >= since]
        if not after or after[-1].state != "DOWN":
            continue  # not DOWN now: nothing to heal
        earlier = [c for c in mine if c.at < since]
        if earlier and earlier[-1].state == "DOWN":
            why_not = why_not or f"{endpoint} was already DOWN before the deploy went live (the deploy may be the fix)"
            continue
        first = next(c.at for c in after if c.state == "DOWN")
        took = first - since
        if took > watch:
            why_not = (f"{endpoint} went DOWN {format_duration(took)} after the deploy went live, past the "
                       f"{format_duration(watch)} watch")  # fmt: skip
            continue
        figures = {"endpoint": endpoint, "down_at": first.isoformat(), "down_after_s": round(took.total_seconds(), 3)}
        return f"{endpoint} DOWN {format_duration(took)} after it went live", figures
    return why_not, None


def _error_signal(errors: Errors | None, policy: AutoRollback) -> tuple[str, dict[str, Any]] | None:
    """(reason, figures) when Sentry's counts show an error spike past the policy's limit."""
    if errors is None or policy.error_ratio is None:
        return None
    limit = max(policy.min_errors, policy.error_ratio * errors.previous)
    if errors.new < limit:
        return None
    reason = (f"{errors.new} errors in Sentry in its first {format_duration(errors.window)} against "
              f"{errors.previous} for the last good release in the same time (limit {limit:g})")  # fmt: skip
    return reason, {"errors_new": errors.new, "errors_previous": errors.previous,
                    "window_s": errors.window.total_seconds(), "limit": limit}  # fmt: skip


def decide(
    history: ServiceHistory, checks: Sequence[CheckRecord], now: datetime, policy: AutoRollback, *,
    last: Mapping[str, Any] | None, pre_deploy: str | None, errors: Errors | None = None,
) -> Decision:  # fmt: skip
    """Whether the live deploy is rolled back. Pure.

    `checks` are the service's health checks from `BEFORE` ahead of the deploy going live;
    `last` is the newest automatic rollback of the service; `pre_deploy` its pre-deploy command
    ('' for none, None when Render could not be asked).
    """
    live = history.live()
    if live is None or live.good or live.guard:
        return Decision("none")
    if last and (last.get("new_deploy") == live.deploy_id or last.get("outcome") == "verifying"):
        return Decision("none")  # the rollback in progress is judged by `verify`, never rolled back itself
    since = live_since(live, now)
    reason, health = _health_signal(checks, since, policy.watch)
    spike = _error_signal(errors, policy) if health is None and now - since <= policy.watch else None
    if health is not None:
        signal, figures = "health", health
    elif spike is not None:
        signal, (reason, figures) = "errors", spike
    else:
        return Decision("none", reason)
    at = f"{live.label()}: {reason}"
    if last and last.get("at") and now - datetime.fromisoformat(last["at"]) < policy.cooldown:
        when = datetime.fromisoformat(last["at"])
        return Decision("alert", f"{at}; not rolled back: an automatic rollback already ran "
                                 f"{format_duration(now - when)} ago (cooldown {format_duration(policy.cooldown)})",
                        signal=signal, figures=figures)  # fmt: skip
    target = history.last_good(excluding=live.deploy_id)
    if target is None:
        return Decision("alert", f"{at}; not rolled back: no deploy was ever proven good to go back to",
                        signal=signal, figures=figures)  # fmt: skip
    if policy.skip_if_pre_deploy and pre_deploy is None:
        return Decision("alert", f"{at}; not rolled back: could not ask Render whether the service runs a "
                                 "pre-deploy command (a rollback does not undo a migration)",
                        target, signal, figures)  # fmt: skip
    if policy.skip_if_pre_deploy and pre_deploy:
        return Decision("alert", f"{at}; not rolled back: the service runs a pre-deploy command, where migrations "
                                 f"usually run, and a rollback does not undo a migration (roll back to "
                                 f"{target.deploy_id} by hand once the data is safe)",
                        target, signal, figures)  # fmt: skip
    return Decision("rollback", at, target, signal, figures)


# --- doing it -----------------------------------------------------------------------


@dataclass
class Rollback:
    """One automatic rollback, as the job's state keeps it until it is verified."""

    at: str
    from_deploy: str
    to: str
    to_commit: str
    method: Literal["rollback", "deploy"]
    """`rollback` reused the retained build; `deploy` built the good commit again (its build was not retained)."""
    new_deploy: str | None
    reason: str
    signal: str
    verify_by: str
    outcome: str = "verifying"
    """verifying | self-healed | needs a human | superseded"""
    run_id: str = ""
    """The history entry of kind `rollback`."""
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    """Why auto-deploy is still on (its PATCH failed), then how the verification ended."""


def roll_back(api: RenderAPI, service_id: str, target: DeployRecord) -> tuple[Literal["rollback", "deploy"],
                                                                             dict[str, Any], str]:  # fmt: skip
    """Roll back to `target` (its commit deployed anew when Render no longer keeps its build), then turn
    auto-deploy off. Returns (method, the new deploy, a note when auto-deploy could not be turned off)."""
    method: Literal["rollback", "deploy"] = "rollback"
    started = api.rollback(service_id, target.deploy_id)
    if started is None:
        if not target.commit:
            raise HttpError("Render API", "POST", f"/services/{service_id}/rollback",
                            f"{target.deploy_id}'s build is not retained and its commit is unknown")  # fmt: skip
        method, started = "deploy", api.deploy_commit(service_id, target.commit)
    try:
        api.disable_autodeploy(service_id)
    except HttpError as exc:
        return method, started, f"auto-deploy is still on: {exc}"
    return method, started, ""


def verify(pending: Rollback, history: ServiceHistory, checks: Sequence[CheckRecord], now: datetime,
           ) -> tuple[str, str] | None:  # fmt: skip
    """(outcome, reason) once the rollback has healed the app or cannot any more; None while it may. Pure."""
    at = datetime.fromisoformat(pending.at)
    deploy = next((d for d in history.deploys if d.deploy_id == pending.new_deploy), None) if pending.new_deploy \
        else None  # fmt: skip
    if deploy is None:  # Render answered 202 without the deploy: the first deploy of the commit since
        deploy = next((d for d in reversed(history.deploys) if d.commit == pending.to_commit and d.created_at
                       and datetime.fromisoformat(d.created_at) >= at - timedelta(seconds=5)), None)  # fmt: skip
    label = deploy.deploy_id if deploy else pending.new_deploy or "the new deploy"
    if deploy is not None and (deploy.status in FAILED or deploy.status == "canceled"):
        return "needs a human", f"the rollback deploy {label} ended {deploy.status}"
    if deploy is not None and deploy.status == "deactivated":
        return "superseded", f"a newer deploy replaced the rollback deploy {label} before it was verified"
    if deploy is not None and deploy.status == "live":
        since = live_since(deploy, now)
        latest: dict[str, CheckRecord] = {}
        for check in checks:
            if check.at >= since:
                latest[check.endpoint] = check
        if latest and all(c.state in _UP for c in latest.values()):
            took = format_duration(max(c.at for c in latest.values()) - at)
            return "self-healed", f"{label} is live and the health job sees the app UP {took} after the rollback"
    if now >= datetime.fromisoformat(pending.verify_by):
        took = format_duration(now - at)
        if deploy is None or deploy.status != "live":
            state = deploy.status if deploy else "not seen"
            return "needs a human", f"the rollback deploy {label} is not live after {took} ({state})"
        return "needs a human", f"{label} is live but the app is not UP {took} after the rollback"
    return None
