"""Every job kind opskeeper knows: kind name -> (options model, job class). One explicit dict."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jobs.backup.atlas import AtlasBackupJob, AtlasBackupOptions
from jobs.backup.capture import CaptureOptions, ChangeCaptureJob
from jobs.backup.drill import DrillJob, DrillOptions
from jobs.backup.job import BackupJob
from jobs.backup.source import BackupOptions
from jobs.command import CommandJob, CommandOptions
from jobs.dependencies.job import DependenciesJob
from jobs.dependencies.options import DependenciesOptions
from jobs.deploys.job import DeploysJob
from jobs.deploys.options import DeploysOptions
from jobs.health.job import HealthJob, HealthOptions
from jobs.platform.job import PlatformNoticesJob, PlatformNoticesOptions
from jobs.review.docs import DocsReviewJob, DocsReviewOptions
from jobs.review.security import SecurityReviewJob, SecurityReviewOptions
from jobs.review.weekly import WeeklyReviewJob, WeeklyReviewOptions
from jobs.updates.job import DependencyUpdatesJob, DependencyUpdatesOptions
from worker.job import Job, JobOptions

KINDS: Mapping[str, tuple[type[JobOptions], Callable[[Any], Job]]] = {
    "command": (CommandOptions, CommandJob),
    "health": (HealthOptions, HealthJob),
    "deploys": (DeploysOptions, DeploysJob),
    "backup": (BackupOptions, BackupJob),
    "atlas_backup": (AtlasBackupOptions, AtlasBackupJob),
    "change_capture": (CaptureOptions, ChangeCaptureJob),
    "restore_drill": (DrillOptions, DrillJob),
    "dependencies": (DependenciesOptions, DependenciesJob),
    "weekly_review": (WeeklyReviewOptions, WeeklyReviewJob),
    "docs_review": (DocsReviewOptions, DocsReviewJob),
    "security_review": (SecurityReviewOptions, SecurityReviewJob),
    "platform_notices": (PlatformNoticesOptions, PlatformNoticesJob),
    "dependency_updates": (DependencyUpdatesOptions, DependencyUpdatesJob),
}

#: Kinds whose run a deploy interrupted is run again by the next leader at once: repeating them
#: changes nothing but the time (a backup, a drill, a check, a review). A command may not be.
SAFE_TO_REPEAT = frozenset({"backup", "change_capture", "restore_drill", "dependencies", "weekly_review", "docs_review",
                            "security_review", "platform_notices", "dependency_updates"})  # fmt: skip

#: The options model of each kind, which is all the schedule validator needs.
OPTIONS: Mapping[str, type[JobOptions]] = {name: model for name, (model, _) in KINDS.items()}


def build(kind: str, options: JobOptions) -> Job:
    """A ready-to-run job of this kind."""
    return KINDS[kind][1](options)
