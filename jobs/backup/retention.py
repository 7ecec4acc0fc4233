"""Grandfather-father-son retention, as a pure function of the backups that exist."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import Field

from worker.job import JobOptions


class Retention(JobOptions):
    """How many backups to keep: the newest N, then one per day, ISO week, month and year."""

    # A negative count would act as 0 (keep none of that kind): say so at `validate` instead.
    keep_last: Annotated[int, Field(ge=0)] = 3
    daily: Annotated[int, Field(ge=0)] = 7
    weekly: Annotated[int, Field(ge=0)] = 4
    monthly: Annotated[int, Field(ge=0)] = 6
    yearly: Annotated[int, Field(ge=0)] = 1


@dataclass(frozen=True)
class BackupInfo:
    """What retention needs to know about one complete backup."""

    key: str
    created_at: datetime
    verified: bool = False


_PERIODS: tuple[tuple[str, Callable[[datetime], Hashable]], ...] = (
    ("daily", lambda t: t.date()),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
)


FUTURE_TOLERANCE = timedelta(minutes=5)
"""Clock skew allowed between the host that made a backup and this one."""


def is_future(created_at: datetime, now: datetime) -> bool:
    """Dated later than now can be (a skewed clock, a folder copied in): suspect."""
    return created_at > now + FUTURE_TOLERANCE


def plan_retention(
    backups: list[BackupInfo], policy: Retention, now: datetime
) -> tuple[list[BackupInfo], list[BackupInfo]]:
    """(keep, delete), newest first. Never deletes the newest backup nor the newest verified one.

    Each period rule keeps the newest backup of each of its N most recent periods that have
    a backup (restic's and borg's meaning), so gaps in the history do not shorten it.
    Future-dated backups are kept and counted for nothing: they never push out today's.
    """
    future = [b for b in backups if is_future(b.created_at, now)]
    ordered = sorted((b for b in backups if not is_future(b.created_at, now)), key=lambda b: b.created_at, reverse=True)
    keep = {b.key for b in ordered[: policy.keep_last]}
    for name, period_of in _PERIODS:
        wanted: int = getattr(policy, name)
        seen: set[Hashable] = set()
        for backup in ordered:
            if len(seen) >= wanted:
                break
            period = period_of(backup.created_at)
            if period not in seen:
                seen.add(period)
                keep.add(backup.key)
    if ordered:
        keep.add(ordered[0].key)
    newest_verified = next((b for b in ordered if b.verified), None)
    if newest_verified is not None:
        keep.add(newest_verified.key)
    keep.update(b.key for b in future)
    everything = sorted(backups, key=lambda b: b.created_at, reverse=True)
    return [b for b in everything if b.key in keep], [b for b in ordered if b.key not in keep]
