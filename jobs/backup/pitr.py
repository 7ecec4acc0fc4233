"""Point-in-time recovery: which archive and which slices reach a moment, and replaying them.

An archive joins the chain at `replay_from` (its manifest's majority time before the dump began)
and is consistent from `consistent_at` (the majority time once the dump was done). It can restore
any second T with `consistent_at <= T` if slices cover, without a hole, from `replay_from` to past
the end of T. `plan()` picks the newest such archive; `--at latest` replays everything the chain
holds. A moment it cannot reach is refused with the reason: the gap that broke the chain, or how
far the capture has come.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jobs.backup.catalog import BackupEntry
from jobs.backup.changes import END_OF_SECOND, Changes, Gap, Slice, Time, as_time, chain, events, time_text
from jobs.backup.replay import Replayed, Replayer
from worker.storage import Storage


class PointInTimeError(Exception):
    """The moment asked for cannot be restored; the message says why and what can be."""


@dataclass(frozen=True)
class Reach:
    """What one archive and the chain after it can restore."""

    archive: BackupEntry
    replay_from: Time
    consistent_at: Time
    slices: list[Slice]
    through: Time
    """Every change at or before this is in the slices."""

    @property
    def newest_second(self) -> int | None:
        """The last whole second it reaches (None before its first one)."""
        second = self.through[0] if self.through[1] >= END_OF_SECOND else self.through[0] - 1
        return second if second >= self.consistent_at[0] else None


@dataclass
class Plan:
    """An archive, the slices to replay on top of it, and up to when."""

    reach: Reach
    until: Time
    newest: Time
    """The newest point any archive's chain reaches (what `--at latest` would give)."""
    slices: list[Slice] = field(default_factory=list)

    @property
    def archive(self) -> BackupEntry:
        return self.reach.archive


def reaches(archives: list[BackupEntry], changes: Changes) -> list[Reach]:
    """Each archive that joins a chain, with how far its chain goes; newest archive first."""
    found = []
    for entry in archives:
        manifest = entry.manifest
        if not manifest.get("replay_from") or not manifest.get("consistent_at"):
            continue  # made by an older version, or from a server that keeps no cluster time
        start, consistent = as_time(manifest["replay_from"]), as_time(manifest["consistent_at"])
        slices, through = chain(changes.slices, start)
        found.append(Reach(entry, start, consistent, slices, through))
    found.sort(key=lambda r: r.consistent_at, reverse=True)
    return found


def plan(archives: list[BackupEntry], changes: Changes, at: datetime | None) -> Plan:
    """What restores `at` (a UTC moment, to the second; None for the newest point there is)."""
    options = [r for r in reaches(archives, changes) if r.through >= r.consistent_at]
    if not options:
        why = _why_none(archives, changes)
        raise PointInTimeError(f"no archive joins a chain of captured changes: {why}")
    newest = max(r.through for r in options)
    if at is None:
        best = max(options, key=lambda r: (r.through, r.consistent_at))
        return Plan(best, best.through, newest, _due(best, best.through))
    second = int(at.timestamp())
    until: Time = (second, END_OF_SECOND)
    for reach in options:  # newest archive first: the least to replay
        if reach.consistent_at <= until and reach.through >= (second + 1, 0):
            return Plan(reach, until, newest, _due(reach, until))
    raise PointInTimeError(_why_not(options, changes.gaps, second, newest))


def _due(reach: Reach, until: Time) -> list[Slice]:
    return [s for s in reach.slices if s.after < until]


def _why_none(archives: list[BackupEntry], changes: Changes) -> str:
    if not changes.slices:
        return "the capture job has stored no slice yet"
    if not archives:
        return "there is no complete backup"
    if not any(e.manifest.get("replay_from") for e in archives):
        return "no backup records the cluster time it joins at (made before change capture, or on a standalone)"
    return (f"the slices start at {time_text(changes.slices[0].after)}, after every backup's join point: the next "
            "backup joins")  # fmt: skip


def _why_not(options: list[Reach], gaps: list[Gap], second: int, newest: Time) -> str:
    moment = f"{datetime.fromtimestamp(second, UTC):%Y-%m-%dT%H:%M:%SZ}"
    oldest = min(r.consistent_at for r in options)
    if (second, END_OF_SECOND) < oldest:
        return f"{moment} is before the oldest point an archive reaches ({time_text(oldest)})"
    covering = [r for r in options if r.consistent_at <= (second, END_OF_SECOND)]
    reached = max(r.through for r in covering)
    gap = next((g for g in gaps if g.since >= reached), None)
    if gap is not None:
        return (f"{moment} is inside a gap in the captured changes: after {time_text(gap.since)}, {gap.reason}; "
                f"the newest point available is {time_text(newest)}")  # fmt: skip
    if newest > reached:
        return (f"{moment} is inside a hole in the captured changes after {time_text(reached)}; the newest point "
                f"available is {time_text(newest)}")  # fmt: skip
    return f"{moment} is after the newest point captured ({time_text(newest)})"


def replay(storage: Storage, chosen: Plan, resolve: Callable[[str, str], Any]) -> Replayed:
    """Apply the plan's slices in order through `resolve`, up to `chosen.until`, each slice's checksum proven
    before any of its events is applied."""
    replayer = Replayer(resolve, applied=chosen.reach.replay_from, until=chosen.until)
    for item in chosen.slices:
        if not replayer.feed(events(storage, item)):
            break
    replayer.flush()
    return replayer.done


def restore_at(storage: Storage, chosen: Plan, client: Any, rename: Any, *, replace: frozenset[str],
               parallel: int | None = None, staging: bool = True,
               ticks: Callable[[int, int], None] | None = None) -> tuple[Any, Replayed]:  # fmt: skip
    """Restore the plan's archive with restore()'s guards, its changes replayed into the staging copies
    before anything is swapped in."""
    from jobs.backup.changes import SliceError
    from jobs.backup.replay import ReplayError
    from jobs.backup.restore import RestoreError, restore

    done: list[Replayed] = []

    def replay_into(resolve: Callable[[str, str], Any]) -> None:
        try:
            done.append(replay(storage, chosen, resolve))
        except (ReplayError, SliceError) as exc:
            raise RestoreError(str(exc)) from None

    with storage.open(chosen.archive.key) as stream:
        report = restore(stream, client, rename, ticks, manifest=chosen.archive.manifest, replace=replace,
                         staging=staging, replay=replay_into,
                         **({"parallel": parallel} if parallel else {}))  # fmt: skip
    return report, done[0]
