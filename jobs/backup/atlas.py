"""`atlas_backup`: check that MongoDB Atlas backs the cluster up daily, and did so recently.

FAIL means the cluster's cloud backup policy has no daily (or more frequent) item, or the
newest completed snapshot is older than `max_age` (or there is none).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from worker.job import JobContext, JobOptions, Outcome, Status
from worker.schedule import Duration
from worker.timespec import format_duration
from worker.vendors.atlas import ATLAS_API, AtlasAPI, AtlasAuth, Listing

_FREQUENT = ("hourly", "daily")


class AtlasBackupOptions(JobOptions):
    """Which cluster to check, and how old its newest snapshot may be."""

    group_id: str
    cluster: str
    max_age: Duration = timedelta(hours=26)
    api_url: str = ATLAS_API
    auth: AtlasAuth = "digest"
    """digest: ATLAS_PUBLIC_KEY / ATLAS_PRIVATE_KEY; service_account: ATLAS_CLIENT_ID / ATLAS_CLIENT_SECRET."""
    api_timeout: Duration = timedelta(seconds=30)


class AtlasBackupJob:
    """Read the backup schedule and snapshots of one cluster through the Atlas Admin API v2."""

    def __init__(self, options: AtlasBackupOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        opts = self.options
        with AtlasAPI(opts.api_url, opts.auth, opts.api_timeout) as api:
            schedule = api.get(f"/groups/{opts.group_id}/clusters/{opts.cluster}/backup/schedule", "2024-08-05")
            kind, listing = api.snapshots(opts.group_id, opts.cluster)
        return judge(opts.cluster, schedule, listing, datetime.now(UTC), opts.max_age, kind=kind)


def judge(cluster: str, schedule: Any, snapshots: Listing, now: datetime, max_age: timedelta, *,
          kind: str = "REPLICASET") -> Outcome:  # fmt: skip
    """The verdict from the schedule and the snapshots read. Pure.

    When the list was longer than the pages read, its newest snapshot may be among the rest: the age is then
    not judged (WARN, naming how many were read), and never reported as "no completed snapshot"."""
    items = [item for policy in schedule.get("policies", []) for item in policy.get("policyItems", [])]
    frequencies = sorted({item.get("frequencyType", "?") for item in items})
    completed = [s for s in snapshots.results if s.get("status") == "completed"]
    newest = max((datetime.fromisoformat(s["createdAt"].replace("Z", "+00:00")) for s in completed), default=None)
    details = {"cluster_type": kind, "frequencies": frequencies, "snapshots": len(snapshots.results),
               "completed": len(completed), "newest_completed": newest and newest.isoformat()}  # fmt: skip
    problems = []
    if not any(f in _FREQUENT for f in frequencies):
        problems.append(f"no daily backup in the policy (has: {', '.join(frequencies) or 'nothing'})")
    stale = newest is None or now - newest > max_age
    if not snapshots.complete:
        details["snapshots_read"] = f"{len(snapshots.results)} of {snapshots.total or 'more'}"
    elif newest is None:
        problems.append("no completed snapshot")
    elif stale:
        problems.append(f"newest completed snapshot is {_age(now - newest)} old "
                        f"(max {format_duration(max_age)})")  # fmt: skip
    if problems:
        return Outcome(Status.FAIL, f"{cluster}: " + "; ".join(problems), details)
    if not snapshots.complete and stale:
        return Outcome(Status.WARN, f"{cluster}: read {details['snapshots_read']} snapshots and none of them is "
                                    f"a completed one within {format_duration(max_age)}: the newest may be "
                                    "among the rest", details)  # fmt: skip
    age = _age(now - newest) if newest else "?"
    return Outcome(Status.OK, f"{cluster}: {', '.join(frequencies)} backups; newest snapshot {age} old", details)


def _age(delta: timedelta) -> str:
    """An age to the minute: seconds would only make messages differ from run to run."""
    return format_duration(timedelta(minutes=round(delta.total_seconds() / 60)))
