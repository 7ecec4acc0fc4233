"""`deploys`: follow the app's Render deploys, remember the last known good one, and guard against bad ones.

A live deploy becomes *good* once it has been live for `settle` while its health job's
endpoints stayed up. FAIL means the newest deploy failed (build, pre-deploy or update), or
the guard had to call a human; WARN means the live deploy is unproven past its settle window
or the app went DOWN after it went live. Every deploy seen is kept in the ledger, so
`opskeeper rollback` knows where to go; a service with `auto_rollback: true` goes there by
itself (`jobs.deploys.guard`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from jobs.deploys.guard import BEFORE, AutoRollback, Decision, Errors, Rollback, decide, roll_back, verify
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
from worker.http import HttpError, RejectedError
from worker.job import CheckRecord, JobContext, JobOptions, Notice, Outcome, Status
from worker.schedule import Duration
from worker.timespec import format_duration
from worker.vendors.github import GITHUB_API
from worker.vendors.render import RENDER_API, RenderAPI, pre_deploy_command

__all__ = ["FAILED", "IN_PROGRESS", "DeployRecord", "RenderError", "ServiceHistory", "rollback_target", "state_key"]


class Service(JobOptions):
    """One Render service and the health job that proves it works."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,49}$")]
    service_id: Annotated[str, Field(pattern=r"^srv-[A-Za-z0-9]+$")]
    health: str | None = None
    """Id of a `health` job whose endpoints must stay up while a deploy settles."""
    auto_rollback: bool = False
    """Roll back by itself when the app goes DOWN soon after a deploy (see the job's `auto_rollback`)."""
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")] | None = None
    """`owner/name` on GitHub: each deploy's commit gets an `opskeeper/last-good` status (GITHUB_TOKEN)."""

    @model_validator(mode="after")
    def _judged(self) -> Service:
        if self.auto_rollback and self.health is None:
            raise ValueError(f"service {self.name!r}: auto_rollback needs `health`, the health job that shows "
                             "a deploy broke the app")  # fmt: skip
        return self


class SentryReleases(JobOptions):
    """Write each good, failed or rolled-back deploy to Sentry's releases (token with project:releases)."""

    project: str
    """The Sentry project slug the releases belong to."""
    repository: str | None = None
    """The repository as Sentry knows it (e.g. `acme/app`): adds the commit as the release's ref."""
    org: str | None = None
    """Defaults to SENTRY_ORG."""
    environment: str | None = None
    """Defaults to SENTRY_ENVIRONMENT, then `production`."""
    api_url: str | None = None
    """Defaults to SENTRY_API_URL, then https://sentry.io."""


class DeploysOptions(JobOptions):
    """Which services to follow, and how long a live deploy must prove itself."""

    services: Annotated[tuple[Service, ...], Field(min_length=1)]
    settle: Duration = timedelta(minutes=10)
    api_url: str = RENDER_API
    api_key: str | None = None
    """Defaults to the RENDER_API_KEY environment variable."""
    page_size: Annotated[int, Field(ge=1, le=100)] = 100
    max_pages: Annotated[int, Field(ge=1)] = 5
    sentry_releases: SentryReleases | None = None
    auto_rollback: AutoRollback = AutoRollback()
    github_api_url: str = GITHUB_API

    @model_validator(mode="after")
    def _unique(self) -> DeploysOptions:
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError("service names must be unique")
        if self.auto_rollback.error_ratio is not None and self.sentry_releases is None:
            raise ValueError("auto_rollback.error_ratio needs sentry_releases (the releases whose errors it compares)")
        return self

    def follows(self) -> frozenset[str]:
        """The health jobs of the services that roll back by themselves: a DOWN runs this job at once."""
        return frozenset(s.health for s in self.services if s.auto_rollback and s.health)

    def key(self) -> str:
        """The API key, from the options or the environment; a clear error when there is none."""
        key = self.api_key or os.environ.get("RENDER_API_KEY", "")
        if not key:
            raise RenderError("no Render API key: set RENDER_API_KEY (or options.api_key)")
        return key

    def service(self, name: str) -> Service:
        """The service with this name; KeyError lists the names there are."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(f"no service {name!r}; services: {', '.join(s.name for s in self.services)}")


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
        return Outcome(status, summary[:500], details, alerted=True)

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


def _gap(call: Callable[[], object], refused: str, failed: str) -> str:
    """'' when `call` worked, else why not: `refused` when the credentials were rejected, `failed` otherwise."""
    try:
        call()
    except RejectedError as exc:
        return f"{refused}: {exc}"
    except HttpError as exc:
        return f"{failed}: {exc}"
    return ""


class CommitStatuses:
    """`opskeeper/last-good` on each deploy's commit: success once good, failure when it failed or was rolled back."""

    CONTEXT = "opskeeper/last-good"

    def __init__(self, api_url: str, log: Any) -> None:
        self.api_url, self.log = api_url, log
        self.gap = ""
        self._clients: dict[str, Any] = {}

    def from_notice(self, service: Service, notice: Notice) -> None:
        """A deploy proven good or failed gets its status (the notices are sent once per deploy)."""
        outcome = notice.fingerprint[-1]
        history = notice.context.get("deploy") or {}
        if outcome == "good":
            deploy = DeployRecord(notice.context.get("deploy_id", ""), "live", commit=notice.context.get("release", ""))
            self.post(service, deploy, "success", f"live on Render and healthy ({deploy.deploy_id})")
        elif outcome == "failed" and history:
            deploy = DeployRecord(history["deploy_id"], history["status"], commit=history.get("commit", ""))
            self.post(service, deploy, "failure", f"Render deploy {deploy.deploy_id} {deploy.status}")

    def post(self, service: Service, deploy: DeployRecord, state: str, description: str) -> None:
        """Set the status; a missing token or scope becomes the run's `github_gap`, never an error."""
        if not service.repo or not deploy.commit or self.gap:
            return
        token = os.environ.get("GITHUB_TOKEN", "")
        if not token:
            self.gap = "GITHUB_TOKEN is not set: no commit statuses"
            self.log("github.status_gap", reason=self.gap)
            return
        from worker.vendors.github import GitHub

        client = self._clients.get(service.repo)
        if client is None:
            client = self._clients[service.repo] = GitHub(service.repo, api_url=self.api_url, token=token,
                                                          timeout=timedelta(seconds=15))  # fmt: skip
        url = f"https://dashboard.render.com/web/{service.service_id}/deploys/{deploy.deploy_id}"
        self.gap = _gap(lambda: client.set_status(deploy.commit, state, self.CONTEXT, description, url),
                        "the token may not write commit statuses (it needs Commit statuses: write)",
                        "could not set the commit status")  # fmt: skip
        if self.gap:
            self.log("github.status_gap", reason=self.gap)
            return
        self.log("github.status", repo=service.repo, commit=deploy.commit, state=state, context=self.CONTEXT)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


RELEASES_GAP = "sentry_releases_gap"
"""State key: why the last attempt to write a Sentry release failed (None once one succeeds)."""


class Releases:
    """Sentry releases and deploy markers for the deploys this job judges; a missing scope is a gap, not an error."""

    def __init__(self, options: SentryReleases | None, api: Any, environment: str, log: Any) -> None:
        self.options, self.api, self.environment, self.log = options, api, environment, log
        self.written = 0
        self.gap = "" if api is not None or options is None else "SENTRY_AUTH_TOKEN or SENTRY_ORG is not set"

    @classmethod
    def open(cls, options: SentryReleases | None, log: Any) -> Releases:
        """A writer for these options, with the token and organization from the environment."""
        if options is None:
            return cls(None, None, "", log)
        token, org = os.environ.get("SENTRY_AUTH_TOKEN", ""), options.org or os.environ.get("SENTRY_ORG", "")
        environment = options.environment or os.environ.get("SENTRY_ENVIRONMENT") or "production"
        if not token or not org:
            return cls(options, None, environment, log)
        from worker.vendors.sentry_api import SentryAPI

        url = options.api_url or os.environ.get("SENTRY_API_URL") or "https://sentry.io"
        return cls(options, SentryAPI(url, org, token, (options.project,), timedelta(seconds=15)), environment, log)

    def from_notice(self, service: str, notice: Notice) -> None:
        """A good deploy becomes the release of its commit with a deploy marker; a failed or bad one is marked too."""
        deploy = notice.context.get("deploy") or {}
        commit = notice.context.get("release") or deploy.get("commit")
        if commit:
            self.record(service, commit, notice.context.get("deploy_id") or deploy.get("deploy_id", ""),
                        notice.fingerprint[-1], started=deploy.get("created_at"),
                        finished=deploy.get("finished_at"))  # fmt: skip

    def record(self, service: str, commit: str, deploy_id: str, outcome: str, *, started: str | None,
               finished: str | None) -> None:  # fmt: skip
        """Create (or update) the release `commit` and add a deploy of it named after the service and outcome."""
        if self.api is None or self.gap or self.options is None:
            return
        name = f"{service} {deploy_id}" + ("" if outcome == "good" else f" ({outcome})")
        refs = [{"repository": self.options.repository, "commit": commit}] if self.options.repository else []
        api, project = self.api, self.options.project

        def write() -> None:
            api.create_release(commit, [project], refs)
            api.create_deploy(commit, self.environment, name=name, started=started, finished=finished)

        self.gap = _gap(write, "the token may not write releases (it needs project:releases)",
                        "could not write the release")  # fmt: skip
        if self.gap:
            self.log("sentry.releases_gap", reason=self.gap)
            return
        self.written += 1
        self.log("sentry.release", service=service, release=commit, deploy=name, environment=self.environment)

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
