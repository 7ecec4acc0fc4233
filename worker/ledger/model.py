"""What every ledger promises: the records it keeps, the `Ledger` protocol, and the views a job sees.

Both stores (`sqlite.py`, `mongo.py`) keep exactly these; `tests/test_ledger.py` runs one suite
against each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from worker.job import CheckRecord, Status
from worker.ledger.lease import Lease


def utc_now() -> datetime:
    """Now, in UTC, to the millisecond (what both backends can store exactly)."""
    return to_ms(datetime.now(UTC))


def to_ms(moment: datetime) -> datetime:
    """`moment` in UTC, cut to whole milliseconds."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class RunRecord:
    """One run of one job, as the ledger keeps it."""

    run_id: str
    job_id: str
    kind: str
    status: Status
    started_at: datetime
    scheduled_at: datetime | None = None
    finished_at: datetime | None = None
    summary: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    host: str = ""
    version: str = ""
    instance: str = ""
    """The daemon (or command) that ran it: runs are closed as orphans by instance, never by host."""
    token: int | None = None
    """The lease's fencing token while the run started (None outside the daemon)."""
    check_in: str | None = None
    """Its Sentry Crons check-in id: a re-run after a deploy closes this same slot."""

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end, once the run has ended."""
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    def public(self) -> dict[str, Any]:
        """The JSON form `opskeeper history --json` prints."""
        return {
            "run_id": self.run_id,
            "job_id": self.job_id,
            "kind": self.kind,
            "status": self.status.value,
            "scheduled_at": iso(self.scheduled_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_s": self.duration_s,
            "summary": self.summary,
        }


@dataclass(frozen=True)
class DayOfChecks:
    """One endpoint's checks on one UTC day, as the status page draws them."""

    job_id: str
    endpoint: str
    day: str  # YYYY-MM-DD, UTC
    checks: int
    failures: int
    degraded: int
    latency_avg_ms: float | None
    latency_max_ms: float | None
    """Both over the checks that did not fail."""


@dataclass(frozen=True)
class Instance:
    """A daemon (or command) heard from lately, and how far its clock is from the ledger's."""

    name: str
    seen_at: datetime
    """By the ledger's clock."""
    clock_offset_s: float | None
    """Its clock minus the ledger's at its last heartbeat (network delay included); None when unknown."""


#: How far an instance's clock may be from the ledger's before `status` says so. The lease does not depend
#: on it (the ledger's clock judges it), but the schedule's times and the runs' records do.
CLOCK_MARGIN = timedelta(seconds=2)


class Ledger(Protocol):
    """Where runs and job state are kept."""

    def start(self, record: RunRecord) -> None:
        """Record a run that has just begun (status `running`).

        A record stamped with a token (`instance`, `token`) is written only while that term holds the lease by
        the ledger's clock; otherwise `Fenced` is raised and nothing is written. The same for `record`.
        """

    def finish(
        self, run_id: str, status: Status, summary: str, details: Mapping[str, Any], finished_at: datetime
    ) -> bool:
        """Record how a run ended; False if it had already been given a final status."""

    def record(self, record: RunRecord, fenced: bool = True) -> None:
        """Record a run that is already over (e.g. `missed`); `fenced=False` keeps a stamped record whatever the
        lease says (a history entry of something that already happened)."""

    def recent(self, job_id: str | None = None, limit: int = 20) -> list[RunRecord]:
        """The newest runs first, of one job or of all."""

    def get(self, run_id: str) -> RunRecord | None:
        """One run by id."""

    def runs(self, since: datetime, until: datetime, kinds: Sequence[str] = (),
             statuses: Sequence[str] = ()) -> list[RunRecord]:  # fmt: skip
        """Runs that started in [since, until), of these kinds and statuses (all when empty), oldest first.

        A review names its kinds or statuses: a health job's run every minute is 132,000 runs in 92 days.
        """

    def interrupt_orphans(self, now: datetime, alive: timedelta) -> int:
        """Mark `running` runs as `interrupted` when their instance has not been seen for `alive`; how many."""

    def interrupt_term(self, token: int, now: datetime, summary: str) -> int:
        """Mark `running` runs stamped with a token below `token` as `interrupted`: a new term began, so the old
        term's runs have stopped or are stopping (their instance can no longer prove its lease); how many."""

    def heartbeat(self, instance: str, now: datetime) -> None:
        """Say that this instance is alive (its runs are not orphans); `now` is its own clock, kept to compare."""

    def instances(self, alive: timedelta) -> list[Instance]:
        """The instances heard from within `alive`, by name."""

    def acquire_lease(self, owner: str, ttl: timedelta, now: datetime) -> int | None:
        """Take or renew the scheduler lease for `ttl`; its fencing token, or None if another holds it.

        Expiry is judged by the ledger's clock: a server's own (MongoDB), or the one machine's (SQLite, which
        takes the caller's `now`).
        """

    def fence(self, owner: str, token: int) -> None:
        """Raise `Fenced` unless `owner` holds the lease with `token` now, by the ledger's clock."""

    def release_lease(self, owner: str, token: int) -> None:
        """Give the lease up at once, if `owner` still holds it with `token`."""

    def lease_holder(self, now: datetime) -> Lease | None:
        """Who holds the lease now (None when nobody does)."""

    def get_state(self, job_id: str, key: str, default: Any = None) -> Any:
        """A job's remembered value, or `default`."""

    def set_state(self, job_id: str, key: str, value: Any, fence: tuple[str, int] | None = None) -> None:
        """Remember a JSON value for a job across runs and restarts; with `fence` (instance, token), only while
        that term holds the lease (else `Fenced`)."""

    def record_checks(self, checks: list[CheckRecord]) -> None:
        """Keep probe checks for uptime figures."""

    def last_success(self, job_id: str) -> RunRecord | None:
        """The job's newest run that ended ok or warn."""

    def check_days(self, since: datetime) -> list[DayOfChecks]:
        """Per endpoint and UTC day since `since`: counts and latency, aggregated where the checks are kept."""

    def checks(self, since: datetime, job_id: str | None = None, endpoint: str | None = None) -> list[CheckRecord]:
        """Checks at or after `since`, oldest first."""

    def endpoints(self, since: datetime) -> list[tuple[str, str]]:
        """The (job_id, endpoint) pairs with checks at or after `since`, sorted: a week is read one at a time."""

    def prune_checks(self, job_id: str, before: datetime) -> int:
        """Forget a job's checks older than `before` (past the longest uptime window); how many."""

    def damage(self) -> str | None:
        """What is wrong with the store itself (SQLite's `quick_check` finding corrupt pages), or None; the daemon
        refuses to start on a damaged ledger rather than run blind, recording nothing."""

    def close(self) -> None:
        """Release connections."""


def dump_state(value: Any) -> str:
    """A job's state as JSON text, the same in both backends. By orjson: a dependencies check keeps megabytes of
    registry documents there, which the standard library took 0.05 s to write and as long to read on a
    102-importer workspace (orjson: a fifth of that). A non-string key is written as a string, as json.dumps
    writes it."""
    import orjson

    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def load_state(text: str) -> Any:
    """The value dump_state() wrote; also what json.dumps wrote before it, NaN and Infinity included."""
    import orjson

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def iso(moment: datetime | None) -> str | None:
    """`moment` as ISO 8601 in UTC, to the millisecond: how both stores and `history --json` write times."""
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="milliseconds")


ORPHANED = "its daemon stopped before this run ended"

#: The longest window `opskeeper uptime` reports; older checks are pruned.
CHECKS_KEPT = timedelta(days=31)
#: How long each endpoint's per-day figures (the status page's 90-day bars) are kept: a year and a bit.
DAYS_KEPT = timedelta(days=400)


def fold_days(checks: list[CheckRecord]) -> dict[tuple[str, str, str], list[Any]]:
    """(job, endpoint, UTC day) -> [checks, failures, degraded, latency sum, latency count, latency max]. Pure."""
    days: dict[tuple[str, str, str], list[Any]] = {}
    for c in checks:
        row = days.setdefault((c.job_id, c.endpoint, c.at.astimezone(UTC).date().isoformat()), [0, 0, 0, 0.0, 0, None])
        row[0] += 1
        if c.verdict == "fail":
            row[1] += 1
            continue
        row[2] += c.verdict == "degraded"
        if c.latency_ms is not None:
            row[3] += c.latency_ms
            row[4] += 1
            row[5] = c.latency_ms if row[5] is None else max(row[5], c.latency_ms)
    return days


class JobChecks:
    """The CheckLog a job sees: records its checks and keeps the table bounded."""

    def __init__(self, ledger: Ledger, job_id: str) -> None:
        self._ledger = ledger
        self._job_id = job_id

    def record(self, checks: list[CheckRecord]) -> None:
        if not checks:
            return
        self._ledger.record_checks(checks)
        self._ledger.prune_checks(self._job_id, max(c.at for c in checks) - CHECKS_KEPT)

    def read(self, job_id: str, since: datetime) -> list[CheckRecord]:
        return self._ledger.checks(since, job_id)


class JobState:
    """The StateStore a job sees: its own slice of the ledger's state, written under its run's term."""

    def __init__(self, ledger: Ledger, job_id: str, fence: tuple[str, int] | None = None) -> None:
        self._ledger = ledger
        self._job_id = job_id
        self._fence = fence

    def get(self, key: str, default: Any = None) -> Any:
        return self._ledger.get_state(self._job_id, key, default)

    def set(self, key: str, value: Any) -> None:
        self._ledger.set_state(self._job_id, key, value, self._fence)


class LedgerError(Exception):
    """The ledger cannot be trusted any more; the message says why and what to do."""
