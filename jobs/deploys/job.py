"""`deploys`: follow the app's Render deploys, remember the last known good one, and guard against bad ones.

A live deploy becomes *good* once it has been live for `settle` while its health job's
endpoints stayed up. FAIL means the newest deploy failed (build, pre-deploy or update), or
the guard had to call a human; WARN means the live deploy is unproven past its settle window
or the app went DOWN after it went live. Every deploy seen is kept in the ledger, so
`opskeeper rollback` knows where to go; a service with `auto_rollback: true` goes there by
itself (`jobs.deploys.guard`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from jobs.deploys.guard import BEFORE, Decision, Errors, Rollback, decide, roll_back, verify
from jobs.deploys.history import (
    FAILED,
    IN_PROGRESS,
    DeployRecord,
    RenderError,
    ServiceHistory,
    live_since,
    rollback_target,
    state_key,
)
from jobs.deploys.marks import RELEASES_GAP, CommitStatuses, Releases
from jobs.deploys.options import DeploysOptions, Service
from worker.http import HttpError
from worker.job import CheckRecord, JobContext, Notice, Outcome, Status
from worker.timespec import format_duration
from worker.vendors.render import RenderAPI, pre_deploy_command

__all__ = ["FAILED", "IN_PROGRESS", "DeployRecord", "RenderError", "ServiceHistory", "rollback_target", "state_key"]


# --- judging a service ------------------------------------------------------------------


@dataclass
class Verdict:
    """What one service looks like now."""

    status: Status
    summary: str
    notices: list[Notice] = field(default_factory=list)


def assess(
    service: str, history: ServiceHistory, checks: list[CheckRecord] | None, now: datetime, settle: timedelta
) -> Verdict:
    """Judge a service from its deploy history and its health checks. Pure; marks deploys good.

    `checks` are the health job's checks since the live deploy went live (None when the
    service names no health job, so time alone proves a deploy).
    """
    if not history.deploys:
        return Verdict(Status.WARN, f"{service}: no deploys found")
    newest = history.deploys[0]
    previous_good = history.last_good(excluding=newest.deploy_id)
    fallback = f"; last good: {previous_good.label()}" if previous_good else "; no earlier good deploy known"
    if newest.status in FAILED:
        verdict = Verdict(Status.FAIL, f"{service}: newest deploy {newest.label()} {newest.status}{fallback}")
        if newest.notified != "failed":
            newest.notified = "failed"
            verdict.notices.append(Notice("error", verdict.summary, ("deploys", service, newest.deploy_id, "failed"),
                                          {"service": service, "deploy": asdict(newest)}))  # fmt: skip
        return verdict
    live = history.live()
    if live is None:
        in_progress = " (a deploy is in progress)" if newest.status in IN_PROGRESS else ""
        return Verdict(Status.WARN, f"{service}: no live deploy{in_progress}")
    if live.good:
        return Verdict(Status.OK, f"{service}: live deploy {live.label()} is good")
    live_since = datetime.fromisoformat(live.finished_at or live.created_at or now.isoformat())
    window_end = live_since + settle
    down = [c for c in checks or [] if live_since <= c.at <= max(now, window_end) and c.state == "DOWN"]
    if down:
        first = min(c.at for c in down)
        verdict = Verdict(Status.WARN, f"{service}: app DOWN since {first.isoformat()} after {live.label()} "
                                       f"went live{fallback}")  # fmt: skip
        if live.notified != "down":
            live.notified = "down"
            verdict.notices.append(Notice("warning", verdict.summary, ("deploys", service, live.deploy_id, "down"),
                                          {"service": service, "deploy": asdict(live)}))  # fmt: skip
        return verdict
    if now < window_end:
        done = format_duration(now - live_since)
        return Verdict(Status.OK, f"{service}: {live.label()} settling ({done} of {format_duration(settle)})")
    in_window = [c for c in checks or [] if live_since <= c.at <= now]
    if checks is not None and not in_window:
        return Verdict(Status.WARN, f"{service}: {live.label()} unproven: no health checks since it went live")
    live.good, live.good_at, live.notified = True, now.isoformat(), "good"
    release = Notice("info", f"{service}: deploy {live.label()} is good; release {live.commit}",
                     ("deploys", service, "good"), {"service": service, "release": live.commit,
                                                    "deploy_id": live.deploy_id})  # fmt: skip
    return Verdict(Status.OK, f"{service}: live deploy {live.label()} is good", [release])


# --- the job -------------------------------------------------------------------------


def guard_key(service: str) -> str:
    """Where a service's newest automatic rollback lives in the deploys job's state."""
    return f"rollback:{service}"


@dataclass
class _Scene:
    """One service in one run, as the deploy guard sees it."""

    api: RenderAPI
    service: Service
    history: ServiceHistory
    checks: list[CheckRecord]
    now: datetime
    ctx: JobContext
    releases: Releases
    statuses: CommitStatuses


def _worst(*statuses: Status) -> Status:
    return max(statuses, key=[Status.OK, Status.WARN, Status.FAIL].index)


class DeploysJob:
    """Record every deploy; mark good ones; FAIL when the newest deploy failed; roll back bad ones if asked."""

    def __init__(self, options: DeploysOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        api = RenderAPI(self.options.api_url, self.options.key())
        releases = Releases.open(self.options.sentry_releases, ctx.log)
        statuses = CommitStatuses(self.options.github_api_url, ctx.log)
        try:
            verdicts = [self._service(api, service, ctx, releases, statuses) for service in self.options.services]
        finally:
            api.close()
            releases.close()
            statuses.close()
        status = _worst(*(v.status for v in verdicts))
        summary = "; ".join(v.summary for v in verdicts)
        details: dict[str, Any] = {"services": [v.summary for v in verdicts]}
        if releases.gap:
            details[RELEASES_GAP] = releases.gap
        if statuses.gap:
            details["github_gap"] = statuses.gap
        if releases.gap or releases.written:
            ctx.state.set(RELEASES_GAP, releases.gap or None)  # the weekly review names a standing gap
        return Outcome(status, summary, details, alerted=True)

    def _service(self, api: RenderAPI, service: Service, ctx: JobContext, releases: Releases,
                 statuses: CommitStatuses) -> Verdict:  # fmt: skip
        history = ServiceHistory.load(ctx.state.get(state_key(service.name)))
        known = {d.deploy_id: d for d in history.deploys}
        seen: list[DeployRecord] = []
        for raw in api.deploys(service.service_id, self.options.page_size, self.options.max_pages):
            record = DeployRecord.from_api(raw)
            seen.append(record)
            old = known.get(record.deploy_id)
            if old is not None and old.status == record.status and record.status not in IN_PROGRESS:
                break  # everything older is already recorded
        for new in history.merge(seen):
            ctx.log("deploy.seen", service=service.name, deploy_id=new.deploy_id, status=new.status,
                    commit=new.commit, message=new.message)  # fmt: skip
        now = datetime.now(UTC)
        raw_pending = ctx.state.get(guard_key(service.name))
        last = Rollback(**raw_pending) if raw_pending else None
        checks = None
        if service.health is not None and ctx.checks is not None:
            live = history.live()
            since = live_since(live, now) if live else now
            # From before the deploy went live (was the app already down?), and since a rollback still being
            # verified; never since an older rollback, which would read more checks every run.
            start = since - BEFORE
            if last is not None and last.outcome == "verifying":
                start = min(start, datetime.fromisoformat(last.at))
            checks = ctx.checks.read(service.health, start)
        verdict = assess(service.name, history, checks, now, self.options.settle)
        for notice in verdict.notices:
            if "release" in notice.context:
                ctx.log("release.good", service=service.name, release=notice.context["release"],
                        deploy_id=notice.context["deploy_id"])  # fmt: skip
            releases.from_notice(service.name, notice)
            statuses.from_notice(service, notice)
            ctx.notify(notice)
        if service.auto_rollback:
            scene = _Scene(api, service, history, checks or [], now, ctx, releases, statuses)
            verdict = self._guard(scene, last, verdict)
        ctx.state.set(state_key(service.name), history.dump())
        return verdict

    # --- the deploy guard -------------------------------------------------------------

    def _guard(self, scene: _Scene, last: Rollback | None, verdict: Verdict) -> Verdict:
        """Verify a rollback in progress, or decide about the live deploy and act on it."""
        api, service, history, checks, now, ctx = scene.api, scene.service, scene.history, scene.checks, scene.now, \
            scene.ctx  # fmt: skip
        releases, statuses = scene.releases, scene.statuses
        policy = self.options.auto_rollback
        if last is not None and last.outcome == "verifying":
            return self._verify(scene, last, verdict)
        pending = asdict(last) if last else None
        errors = self._errors(history, now, releases, ctx)
        decision = decide(history, checks, now, policy, last=pending, pre_deploy="", errors=errors)
        if decision.action == "rollback" and policy.skip_if_pre_deploy:
            try:  # asked only now: a pre-deploy command is what may stop a rollback that is otherwise due
                command: str | None = pre_deploy_command(api.service(service.service_id))
            except HttpError as exc:
                ctx.log("deploy.service_unreadable", service=service.name, error=str(exc))
                command = None
            decision = decide(history, checks, now, policy, last=pending, pre_deploy=command, errors=errors)
        live = history.live()
        if decision.action == "none" or live is None:
            if decision.reason and verdict.status is not Status.OK:
                return Verdict(verdict.status, f"{verdict.summary}; not rolled back: {decision.reason}",
                               verdict.notices)  # fmt: skip
            return verdict
        target = decision.target
        if decision.action == "alert" or target is None:
            return self._call_human(scene, live, decision.reason, verdict, decision)
        requested = datetime.now(UTC)
        try:
            ctx.fence()  # two instances must never both roll back: only the lease's holder, by the ledger's clock
            method, started, note = roll_back(api, service.service_id, target)
        except HttpError as exc:
            reason = f"{decision.reason}; the automatic rollback to {target.deploy_id} failed: {exc}"
            return self._call_human(scene, live, reason, verdict, decision)
        live.guard = "rolled back"
        new_id = started.get("id") if isinstance(started.get("id"), str) else None
        how = "rolled back" if method == "rollback" else \
            f"deployed its commit {target.commit[:7]} anew (build not retained)"  # fmt: skip
        summary = (f"{service.name}: rolled back automatically from {live.deploy_id} to {target.deploy_id} "
                   f"({how}): {decision.reason}")  # fmt: skip
        figures = dict(decision.figures)
        if "down_at" in figures:
            figures["requested_after_down_s"] = round((requested - datetime.fromisoformat(figures["down_at"]))
                                                      .total_seconds(), 3)  # fmt: skip
        rollback = Rollback(
            at=requested.isoformat(), from_deploy=live.deploy_id, to=target.deploy_id, to_commit=target.commit,
            method=method, new_deploy=new_id, reason=decision.reason, signal=decision.signal,
            verify_by=(requested + self.options.auto_rollback.verify).isoformat(), figures=figures, note=note,
        )  # fmt: skip
        rollback.run_id = ctx.record("rollback", Status.OK, summary, {
            "automatic": True, "service": service.name, "from": live.deploy_id, "to": target.deploy_id,
            "method": method, "new_deploy": new_id, "signal": decision.signal, "reason": decision.reason,
            "autodeploy_disabled": not note, **figures,
        })  # fmt: skip
        ctx.state.set(guard_key(service.name), asdict(rollback))
        ctx.log("deploy.rollback", service=service.name, automatic=True, from_deploy=live.deploy_id,
                to=target.deploy_id, method=method, new_deploy=new_id, autodeploy_disabled=not note,
                **figures)  # fmt: skip
        message = summary + (f"; {note}" if note else "; auto-deploy turned off") + "; verifying"
        ctx.notify(Notice("warning", message, ("deploys", service.name, live.deploy_id, "rollback"),
                          {"service": service.name, "rollback": asdict(rollback)}))  # fmt: skip
        statuses.post(service, live, "failure", f"rolled back by opskeeper to {target.deploy_id}: {decision.reason}")
        releases.record(service.name, target.commit, new_id or target.deploy_id, f"rollback from {live.deploy_id}",
                        started=requested.isoformat(), finished=None)  # fmt: skip
        return Verdict(_worst(verdict.status, Status.WARN), message, verdict.notices)

    @staticmethod
    def _verify(scene: _Scene, last: Rollback, verdict: Verdict) -> Verdict:
        service, ctx = scene.service, scene.ctx
        result = verify(last, scene.history, scene.checks, scene.now)
        if result is None:
            until = datetime.fromisoformat(last.verify_by).strftime("%H:%M:%S UTC")
            return Verdict(_worst(verdict.status, Status.WARN), f"{service.name}: rolled back automatically from "
                           f"{last.from_deploy} to {last.to}; verifying until {until}", verdict.notices)  # fmt: skip
        outcome, reason = result
        last.outcome, last.note = outcome, reason
        ctx.state.set(guard_key(service.name), asdict(last))
        healed = outcome == "self-healed"
        summary = (f"{service.name}: the automatic rollback from {last.from_deploy} to {last.to} "
                   + ("self-healed the app" if healed else "needs a human now" if outcome == "needs a human"
                      else "was superseded") + f": {reason}")  # fmt: skip
        ctx.record("rollback_outcome", Status.FAIL if outcome == "needs a human" else Status.OK, summary, {
            "automatic": True, "service": service.name, "rollback": last.run_id, "outcome": outcome,
            "reason": reason, "from": last.from_deploy, "to": last.to,
        })  # fmt: skip
        ctx.log("deploy.rollback_verified", service=service.name, outcome=outcome, reason=reason)
        rollback_issue = ("deploys", service.name, last.from_deploy, "rollback")
        if healed:
            ctx.notify(Notice("info", summary, ("deploys", service.name, last.from_deploy, "healed"),
                              {"service": service.name, "outcome": outcome}, resolves=rollback_issue))  # fmt: skip
            return Verdict(verdict.status, summary, verdict.notices)
        level: Literal["info", "error"] = "error" if outcome == "needs a human" else "info"
        ctx.notify(Notice(level, summary, ("deploys", service.name, last.from_deploy, "needs-human"),
                          {"service": service.name, "outcome": outcome}))  # fmt: skip
        return Verdict(Status.FAIL if level == "error" else verdict.status, summary, verdict.notices)

    @staticmethod
    def _call_human(scene: _Scene, live: DeployRecord, reason: str, verdict: Verdict, decision: Decision) -> Verdict:
        service, ctx = scene.service, scene.ctx
        live.guard = "alerted"
        summary = f"{service.name}: needs a human now: {reason}"
        ctx.log("deploy.rollback_withheld", service=service.name, deploy_id=live.deploy_id, reason=reason,
                **decision.figures)  # fmt: skip
        ctx.notify(Notice("error", summary, ("deploys", service.name, live.deploy_id, "needs-human"),
                          {"service": service.name, "deploy": asdict(live), **decision.figures}))  # fmt: skip
        return Verdict(Status.FAIL, summary, verdict.notices)

    def _errors(self, history: ServiceHistory, now: datetime, releases: Releases, ctx: JobContext) -> Errors | None:
        """The second signal: Sentry's errors of the live release against the last good one's, when asked for."""
        policy = self.options.auto_rollback
        live = history.live()
        if (policy.error_ratio is None or releases.api is None or releases.options is None or live is None
                or live.good or live.guard):  # fmt: skip
            return None  # not asked for, or already decided: no Sentry calls
        since = live_since(live, now)
        good = history.last_good(excluding=live.deploy_id)
        if good is None or now - since > policy.watch or not live.commit or not good.commit:
            return None
        window = now - since
        good_since = live_since(good, now)
        try:
            new = releases.api.error_count(live.commit, releases.options.project, since, now)
            previous = releases.api.error_count(good.commit, releases.options.project, good_since, good_since + window)
        except HttpError as exc:
            ctx.log("sentry.errors_unreadable", error=str(exc))
            return None
        return Errors(new, previous, window)
