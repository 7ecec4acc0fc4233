"""What the deploys job remembers of each service: every deploy seen, and which were proven good."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

FAILED = frozenset({"build_failed", "update_failed", "pre_deploy_failed"})
IN_PROGRESS = frozenset({"created", "queued", "build_in_progress", "update_in_progress", "pre_deploy_in_progress"})
_KEPT_PER_SERVICE = 200


class RenderError(Exception):
    """A rollback or a deploys job cannot go ahead: no API key, no good deploy to go to."""


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
    guard: str = ""
    """What the deploy guard did about this deploy (`rolled back`, `alerted`), so it acts once per deploy."""

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


def live_since(deploy: DeployRecord, now: datetime) -> datetime:
    """When a deploy went live: its finish time (Render's `finishedAt`), else its creation, else now."""
    return datetime.fromisoformat(deploy.finished_at or deploy.created_at or now.isoformat())


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
