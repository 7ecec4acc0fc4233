"""Where the deploys job marks its verdicts outside opskeeper: a GitHub commit status on each deploy's commit, and
a Sentry release with a deploy marker. A missing token or scope is a gap the run names, never an error."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from jobs.deploys.history import DeployRecord
from jobs.deploys.options import SentryReleases, Service
from worker.http import HttpError, RejectedError
from worker.job import Notice


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
