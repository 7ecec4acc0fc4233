"""`deploys`: follow the app's Render deploys and remember the last known good one.

A live deploy becomes *good* once it has been live for `settle` while its health job's
endpoints stayed up. FAIL means the newest deploy failed (build, pre-deploy or update);
WARN means the live deploy is unproven past its settle window or the app went DOWN after it
went live. Every deploy seen is kept in the ledger, so `opskeeper rollback` knows where to go.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import Field, model_validator

from worker.http import HttpError, RejectedError
from worker.job import CheckRecord, JobContext, JobOptions, Notice, Outcome, Status
from worker.schedule import Duration
from worker.timespec import format_duration
from worker.vendors.render import RENDER_API, RenderAPI

FAILED = frozenset({"build_failed", "update_failed", "pre_deploy_failed"})
IN_PROGRESS = frozenset({"created", "queued", "build_in_progress", "update_in_progress", "pre_deploy_in_progress"})
_KEPT_PER_SERVICE = 200


class Service(JobOptions):
    """One Render service and the health job that proves it works."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,49}$")]
    service_id: Annotated[str, Field(pattern=r"^srv-[A-Za-z0-9]+$")]
    health: str | None = None
    """Id of a `health` job whose endpoints must stay up while a deploy settles."""


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

    @model_validator(mode="after")
    def _unique(self) -> DeploysOptions:
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError("service names must be unique")
        return self

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


class RenderError(Exception):
    """A rollback or a deploys job cannot go ahead: no API key, no good deploy to go to."""


# --- what the ledger remembers ------------------------------------------------------


@dataclass
class DeployRecord:
    """A deploy as opskeeper keeps it."""

    deploy_id: str
    status: str
    commit: str = ""
    message: str = ""
    trigger: str = ""
    created_at: str | None = None
    finished_at: str | None = None
    good: bool = False
    good_at: str | None = None
    notified: str = ""
    """The last condition a notice was sent for (failed, down, good), so each is sent once."""

    @classmethod
    def from_api(cls, deploy: Mapping[str, Any]) -> DeployRecord:
        commit = deploy.get("commit") or {}
        return cls(
            deploy_id=deploy["id"], status=deploy.get("status", ""), commit=commit.get("id", ""),
            message=(commit.get("message") or "").splitlines()[0][:200] if commit.get("message") else "",
            trigger=deploy.get("trigger", ""), created_at=deploy.get("createdAt"),
            finished_at=deploy.get("finishedAt"),
        )  # fmt: skip

    def label(self) -> str:
        """`dep-x (commit abc1234 "message")` for messages."""
        return f'{self.deploy_id} (commit {self.commit[:7]} "{self.message}")'


@dataclass
class ServiceHistory:
    """Every deploy seen for one service, newest first."""

    deploys: list[DeployRecord] = field(default_factory=list)

    @classmethod
    def load(cls, raw: Any) -> ServiceHistory:
        return cls([DeployRecord(**d) for d in (raw or {}).get("deploys", [])])

    def dump(self) -> dict[str, Any]:
        return {"deploys": [asdict(d) for d in self.deploys[:_KEPT_PER_SERVICE]]}

    def merge(self, seen: list[DeployRecord]) -> list[DeployRecord]:
        """Add new deploys and update statuses; returns the deploys not seen before."""
        known = {d.deploy_id: d for d in self.deploys}
        new = []
        for deploy in seen:
            if deploy.deploy_id in known:
                old = known[deploy.deploy_id]
                old.status, old.finished_at = deploy.status, deploy.finished_at or old.finished_at
            else:
                known[deploy.deploy_id] = deploy
                new.append(deploy)
        self.deploys = sorted(known.values(), key=lambda d: d.created_at or "", reverse=True)
        return new

    def last_good(self, excluding: str | None = None) -> DeployRecord | None:
        """The newest good deploy, other than `excluding`."""
        return next((d for d in self.deploys if d.good and d.deploy_id != excluding), None)

    def live(self) -> DeployRecord | None:
        """The deploy serving now."""
        return next((d for d in self.deploys if d.status == "live"), None)


def rollback_target(history: ServiceHistory, live: DeployRecord | None, to: str | None) -> DeployRecord:
    """Where a rollback goes: `to` if given, else the newest good deploy that is not live."""
    if to:
        return next((d for d in history.deploys if d.deploy_id == to), DeployRecord(to, "unknown"))
    target = history.last_good(excluding=live.deploy_id if live else None)
    if target is None:
        raise RenderError("no known good deploy other than the live one; pass --to DEPLOY_ID")
    if live is not None and live.deploy_id == target.deploy_id:
        raise RenderError(f"{target.deploy_id} is already live")
    return target


def state_key(service: str) -> str:
    """Where a service's history lives in the deploys job's state."""
    return f"service:{service}"


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


class DeploysJob:
    """Record every deploy; mark good ones; FAIL when the newest deploy failed."""

    def __init__(self, options: DeploysOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        api = RenderAPI(self.options.api_url, self.options.key())
        releases = Releases.open(self.options.sentry_releases, ctx.log)
        try:
            verdicts = [self._service(api, service, ctx, releases) for service in self.options.services]
        finally:
            api.close()
            releases.close()
        status = max((v.status for v in verdicts), key=[Status.OK, Status.WARN, Status.FAIL].index)
        summary = "; ".join(v.summary for v in verdicts)
        details: dict[str, Any] = {"services": [v.summary for v in verdicts]}
        if releases.gap:
            details[RELEASES_GAP] = releases.gap
        if releases.gap or releases.written:
            ctx.state.set(RELEASES_GAP, releases.gap or None)  # the weekly review names a standing gap
        return Outcome(status, summary[:500], details, alerted=True)

    def _service(self, api: RenderAPI, service: Service, ctx: JobContext, releases: Releases) -> Verdict:
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
        checks = None
        if service.health is not None and ctx.checks is not None:
            live = history.live()
            since = datetime.fromisoformat(live.finished_at or live.created_at or now.isoformat()) if live else now
            checks = ctx.checks.read(service.health, since)
        verdict = assess(service.name, history, checks, now, self.options.settle)
        for notice in verdict.notices:
            if "release" in notice.context:
                ctx.log("release.good", service=service.name, release=notice.context["release"],
                        deploy_id=notice.context["deploy_id"])  # fmt: skip
            releases.from_notice(service.name, notice)
            ctx.notify(notice)
        ctx.state.set(state_key(service.name), history.dump())
        return verdict


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
        try:
            self.api.create_release(commit, [self.options.project], refs)
            self.api.create_deploy(commit, self.environment, name=name, started=started, finished=finished)
        except RejectedError as exc:
            self.gap = f"the token may not write releases (it needs project:releases): {exc}"
        except HttpError as exc:
            self.gap = f"could not write the release: {exc}"
        if self.gap:
            self.log("sentry.releases_gap", reason=self.gap)
            return
        self.written += 1
        self.log("sentry.release", service=service, release=commit, deploy=name, environment=self.environment)

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
