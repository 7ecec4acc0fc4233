"""What a deploys job is told: the services it follows, their health jobs, and where it reports releases."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Annotated

from pydantic import Field, model_validator

from jobs.deploys.guard import AutoRollback
from jobs.deploys.history import RenderError
from worker.job import JobOptions
from worker.schedule import Duration
from worker.vendors.github import GITHUB_API
from worker.vendors.render import RENDER_API


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
