"""Run history and per-job state: SQLite by default (embedded, survives restarts), MongoDB optional.

Both backends behave the same; `tests/test_ledger.py` runs one suite against each.
A run is written twice: when it starts (`running`) and when it ends. The end is written
only while the row is still `running`, so whoever records a final status first wins: a
run the daemon already marked `interrupted` cannot be overwritten by its late thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from worker.job import CheckRecord, Status


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
            "scheduled_at": _iso(self.scheduled_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
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


class Ledger(Protocol):
    """Where runs and job state are kept."""

    def start(self, record: RunRecord) -> None:
        """Record a run that has just begun (status `running`)."""

    def finish(
        self, run_id: str, status: Status, summary: str, details: Mapping[str, Any], finished_at: datetime
    ) -> bool:
        """Record how a run ended; False if it had already been given a final status."""

    def record(self, record: RunRecord) -> None:
        """Record a run that is already over (e.g. `missed`)."""

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

    def heartbeat(self, instance: str, now: datetime) -> None:
        """Say that this instance is alive (its runs are not orphans)."""

    def acquire_lease(self, owner: str, ttl: timedelta, now: datetime) -> int | None:
        """Take or renew the scheduler lease until now + ttl; its fencing token, or None if another holds it."""

    def release_lease(self, owner: str, token: int) -> None:
        """Give the lease up at once, if `owner` still holds it with `token`."""

    def lease_holder(self, now: datetime) -> Lease | None:
        """Who holds the lease now (None when nobody does)."""

    def get_state(self, job_id: str, key: str, default: Any = None) -> Any:
        """A job's remembered value, or `default`."""

    def set_state(self, job_id: str, key: str, value: Any) -> None:
        """Remember a JSON value for a job across runs and restarts."""

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

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class Lease:
    """The scheduler lease: one per ledger, so only one daemon schedules."""

    owner: str
    token: int
    expires_at: datetime


def next_token(held: Lease | None, owner: str, now: datetime) -> int | None:
    """The fencing token `owner` gets by asking for the lease at `now`, or None while another holds it. Pure.

    Renewing keeps the token; every new term (a take-over, or the same owner after expiry)
    gets a larger one, so a run records which term started it.
    """
    if held is None:
        return 1
    if held.expires_at > now:
        return held.token if held.owner == owner else None
    return held.token + 1


LEASE = "scheduler"
ORPHANED = "its daemon stopped before this run ended"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
    """The StateStore a job sees: its own slice of the ledger's state."""

    def __init__(self, ledger: Ledger, job_id: str) -> None:
        self._ledger = ledger
        self._job_id = job_id

    def get(self, key: str, default: Any = None) -> Any:
        return self._ledger.get_state(self._job_id, key, default)

    def set(self, key: str, value: Any) -> None:
        self._ledger.set_state(self._job_id, key, value)


def open_ledger(target: str) -> Ledger:
    """A MongoDB ledger for a mongodb:// or mongodb+srv:// URL, else SQLite at that path."""
    if target.startswith(("mongodb://", "mongodb+srv://")):
        return MongoLedger(target)
    return SqliteLedger(Path(target))


def describe_place(target: str, masks: Any) -> tuple[str, str]:
    """(kind, where) of a ledger target for the log: the SQLite file's full path, the URL without credentials."""
    if target.startswith(("mongodb://", "mongodb+srv://")):
        return "mongodb", str(masks.text(target))
    return "sqlite", str(Path(target).resolve())


def lost_on_deploy(target: str, environ: Mapping[str, str]) -> str | None:
    """Why this ledger will not survive a Render deploy, or None.

    On Render (`RENDER=true`) a service's file system is wiped on every deploy except under a
    persistent disk, which is a mount of its own: a SQLite file with no mount point above it
    (other than /) is lost, and with it the deploy history, health states and dedupe.
    """
    if environ.get("RENDER") != "true" or target.startswith(("mongodb://", "mongodb+srv://")):
        return None
    path = Path(target).resolve()
    if any(parent != Path("/") and parent.is_mount() for parent in path.parents):
        return None
    return (f"the SQLite ledger {path} is not on a persistent disk: Render wipes it on every deploy, and with it "
            "the last good deploy, health states and advisory dedupe; set OPSKEEPER_LEDGER to a mongodb+srv:// URL "
            "or mount a disk there (see render.yaml)")  # fmt: skip


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    scheduled_at TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    duration_s REAL,
    summary TEXT NOT NULL,
    details TEXT NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    instance TEXT NOT NULL DEFAULT '',
    token INTEGER,
    check_in TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job_id, started_at);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_by_kind ON runs (kind, started_at);
CREATE TABLE IF NOT EXISTS checks (
    job_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    at TEXT NOT NULL,
    verdict TEXT NOT NULL,
    state TEXT NOT NULL,
    status_code INTEGER,
    latency_ms REAL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checks_by_job ON checks (job_id, at);
CREATE INDEX IF NOT EXISTS checks_by_endpoint ON checks (job_id, endpoint, at);
CREATE INDEX IF NOT EXISTS checks_by_time ON checks (at);
CREATE TABLE IF NOT EXISTS check_days (
    job_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    day TEXT NOT NULL,
    checks INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    degraded INTEGER NOT NULL,
    latency_sum REAL NOT NULL,
    latency_n INTEGER NOT NULL,
    latency_max REAL,
    PRIMARY KEY (job_id, endpoint, day)
);
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    instance TEXT PRIMARY KEY,
    seen_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_state (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
"""
_CHECK_COLUMNS = "job_id, endpoint, at, verdict, state, status_code, latency_ms, reason"
# A day's figures grow with each batch of checks: the page reads ~90 rows per endpoint, never the checks.
_FOLD_DAY = """
INSERT INTO check_days (job_id, endpoint, day, checks, failures, degraded, latency_sum, latency_n, latency_max)
VALUES (?,?,?,?,?,?,?,?,?)
ON CONFLICT (job_id, endpoint, day) DO UPDATE SET
    checks = checks + excluded.checks, failures = failures + excluded.failures,
    degraded = degraded + excluded.degraded, latency_sum = latency_sum + excluded.latency_sum,
    latency_n = latency_n + excluded.latency_n,
    latency_max = CASE WHEN latency_max IS NULL OR excluded.latency_max > latency_max
                       THEN coalesce(excluded.latency_max, latency_max) ELSE latency_max END
"""
_COLUMNS = (
    "run_id, job_id, kind, status, scheduled_at, started_at, finished_at, summary, details, host, version,"
    " instance, token, check_in"
)
#: Columns added after the first release: an older ledger file gains them when opened.
_ADDED = {"instance": "TEXT NOT NULL DEFAULT ''", "token": "INTEGER", "check_in": "TEXT"}


class LedgerError(Exception):
    """The ledger cannot be trusted any more; the message says why and what to do."""


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class SqliteLedger:
    """The embedded default: one file, WAL mode, one connection guarded by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        # Runs finish on worker threads; the lock makes the shared connection safe.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._identity = _identity(path)
        # Daemons started together (a test, a scale-up) race to switch a new file to WAL, and SQLite answers
        # that race with an immediate "database is locked", without its busy handler: try again, for 10 s at most.
        for attempt in range(100):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.1)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        for column, kind in _ADDED.items():
            if column not in present:
                # Another instance opening the same old file may add it first: that is as good.
                with contextlib.suppress(sqlite3.OperationalError):
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        self._db.execute("CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, instance)")
        # A ledger from before the per-day figures: fold the checks it still holds, once.
        if self._db.execute("SELECT 1 FROM check_days LIMIT 1").fetchone() is None:
            self._db.execute(
                "INSERT OR IGNORE INTO check_days SELECT job_id, endpoint, substr(at, 1, 10), COUNT(*),"
                " SUM(verdict = 'fail'), SUM(verdict = 'degraded'),"
                " coalesce(SUM(CASE WHEN verdict != 'fail' THEN latency_ms END), 0),"
                " COUNT(CASE WHEN verdict != 'fail' THEN latency_ms END),"
                " MAX(CASE WHEN verdict != 'fail' THEN latency_ms END) FROM checks GROUP BY 1, 2, 3"
            )

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """The lock, after checking the file is still the one opened (a deleted or swapped file forks history)."""
        with self._lock:
            now = _identity(self._path)
            if now != self._identity:
                what = "was deleted" if now is None else "was replaced by another file"
                raise LedgerError(f"the ledger {self._path} {what} while opskeeper had it open; its writes would "
                                  "be lost: restore the file, or restart opskeeper to start a new one")  # fmt: skip
            yield

    def start(self, record: RunRecord) -> None:
        self._insert(replace(record, status=Status.RUNNING, finished_at=None))

    def record(self, record: RunRecord) -> None:
        self._insert(record)

    def _insert(self, r: RunRecord) -> None:
        row = (
            r.run_id, r.job_id, r.kind, r.status.value, _iso(r.scheduled_at), _iso(r.started_at),
            _iso(r.finished_at), r.summary, json.dumps(dict(r.details), default=str), r.host, r.version,
            r.instance, r.token, r.check_in, r.duration_s,
        )  # fmt: skip
        with self._guard():
            placeholders = ",".join("?" * len(row))
            self._db.execute(f"INSERT INTO runs ({_COLUMNS}, duration_s) VALUES ({placeholders})", row)

    def finish(
        self, run_id: str, status: Status, summary: str, details: Mapping[str, Any], finished_at: datetime
    ) -> bool:
        ended = to_ms(finished_at)
        with self._guard():
            row = self._db.execute("SELECT started_at FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                return False
            duration = round((ended - datetime.fromisoformat(row[0])).total_seconds(), 3)
            cur = self._db.execute(
                "UPDATE runs SET status=?, summary=?, details=?, finished_at=?, duration_s=?"
                " WHERE run_id=? AND status='running'",
                (status.value, summary, json.dumps(dict(details), default=str), _iso(ended), duration, run_id),
            )
            return cur.rowcount == 1

    def recent(self, job_id: str | None = None, limit: int = 20) -> list[RunRecord]:
        where, args = ("WHERE job_id=?", [job_id]) if job_id else ("", [])
        with self._guard():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM runs {where} ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [self._row(row) for row in rows]

    def get(self, run_id: str) -> RunRecord | None:
        with self._guard():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else self._row(row)

    def runs(self, since: datetime, until: datetime, kinds: Sequence[str] = (),
             statuses: Sequence[str] = ()) -> list[RunRecord]:  # fmt: skip
        where, args = "started_at >= ? AND started_at < ?", [_iso(to_ms(since)), _iso(to_ms(until))]
        for column, values in (("kind", kinds), ("status", statuses)):
            if values:
                where += f" AND {column} IN ({','.join('?' * len(values))})"
                args += list(values)
        with self._guard():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE {where} ORDER BY started_at, rowid", args
            ).fetchall()
        return [self._row(row) for row in rows]

    def interrupt_orphans(self, now: datetime, alive: timedelta) -> int:
        with self._guard():
            cur = self._db.execute(
                "UPDATE runs SET status='interrupted', summary=?, finished_at=? WHERE status='running'"
                " AND instance NOT IN (SELECT instance FROM instances WHERE seen_at >= ?)",
                (ORPHANED, _iso(to_ms(now)), _iso(to_ms(now - alive))),
            )
            return cur.rowcount

    def heartbeat(self, instance: str, now: datetime) -> None:
        with self._guard():
            self._db.execute("INSERT INTO instances (instance, seen_at) VALUES (?, ?) ON CONFLICT (instance)"
                             " DO UPDATE SET seen_at=excluded.seen_at", (instance, _iso(to_ms(now))))  # fmt: skip

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One step for every process on this file (IMMEDIATE: the write lock from the start), under the guard."""
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def acquire_lease(self, owner: str, ttl: timedelta, now: datetime) -> int | None:
        with self._transaction():  # the read and the write
            token = next_token(self._lease(), owner, now)
            if token is not None:
                self._db.execute(
                    "INSERT INTO lease (name, owner, token, expires_at) VALUES (?,?,?,?) ON CONFLICT (name)"
                    " DO UPDATE SET owner=excluded.owner, token=excluded.token, expires_at=excluded.expires_at",
                    (LEASE, owner, token, _iso(to_ms(now + ttl))),
                )  # fmt: skip
        return token

    def release_lease(self, owner: str, token: int) -> None:
        with self._guard():
            self._db.execute("UPDATE lease SET expires_at=? WHERE name=? AND owner=? AND token=?",
                             (_iso(_EPOCH), LEASE, owner, token))  # fmt: skip

    def lease_holder(self, now: datetime) -> Lease | None:
        with self._guard():
            held = self._lease()
        return held if held is not None and held.expires_at > now else None

    def _lease(self) -> Lease | None:
        row = self._db.execute("SELECT owner, token, expires_at FROM lease WHERE name=?", (LEASE,)).fetchone()
        return None if row is None else Lease(row[0], row[1], datetime.fromisoformat(row[2]))

    def get_state(self, job_id: str, key: str, default: Any = None) -> Any:
        with self._guard():
            row = self._db.execute("SELECT value FROM job_state WHERE job_id=? AND key=?", (job_id, key)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_state(self, job_id: str, key: str, value: Any) -> None:
        with self._guard():
            self._db.execute(
                "INSERT INTO job_state (job_id, key, value, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT (job_id, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                (job_id, key, json.dumps(value), _iso(utc_now())),
            )

    def record_checks(self, checks: list[CheckRecord]) -> None:
        rows = [(c.job_id, c.endpoint, _iso(c.at), c.verdict, c.state, c.status_code, c.latency_ms, c.reason)
                for c in checks]  # fmt: skip
        days = [(*key, *row) for key, row in fold_days(checks).items()]
        with self._transaction():  # the checks and their days' figures together, or neither
            self._db.executemany(f"INSERT INTO checks ({_CHECK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)
            self._db.executemany(_FOLD_DAY, days)

    def endpoints(self, since: datetime) -> list[tuple[str, str]]:
        with self._guard():
            rows = self._db.execute(
                "SELECT DISTINCT job_id, endpoint FROM checks WHERE at >= ? ORDER BY job_id, endpoint", (_iso(since),)
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def checks(self, since: datetime, job_id: str | None = None, endpoint: str | None = None) -> list[CheckRecord]:
        where, args = ["at >= ?"], [_iso(since)]
        for column, value in (("job_id", job_id), ("endpoint", endpoint)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        with self._guard():
            rows = self._db.execute(
                f"SELECT {_CHECK_COLUMNS} FROM checks WHERE {' AND '.join(where)} ORDER BY at, rowid", args
            ).fetchall()
        return [
            CheckRecord(job_id=r[0], endpoint=r[1], at=datetime.fromisoformat(r[2]), verdict=r[3], state=r[4],
                        status_code=r[5], latency_ms=r[6], reason=r[7])
            for r in rows
        ]  # fmt: skip

    def last_success(self, job_id: str) -> RunRecord | None:
        with self._guard():
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE job_id=? AND status IN ('ok', 'warn')"
                " ORDER BY started_at DESC, rowid DESC LIMIT 1",
                (job_id,),
            ).fetchone()
        return None if row is None else self._row(row)

    def check_days(self, since: datetime) -> list[DayOfChecks]:
        with self._guard():
            rows = self._db.execute(
                "SELECT job_id, endpoint, day, checks, failures, degraded, latency_sum, latency_n, latency_max"
                " FROM check_days WHERE day >= ? ORDER BY job_id, endpoint, day",
                (since.astimezone(UTC).date().isoformat(),),
            ).fetchall()
        return [DayOfChecks(r[0], r[1], r[2], r[3], r[4], r[5], r[6] / r[7] if r[7] else None, r[8]) for r in rows]

    def prune_checks(self, job_id: str, before: datetime) -> int:
        oldest_day = (before + CHECKS_KEPT - DAYS_KEPT).astimezone(UTC).date().isoformat()
        with self._guard():
            self._db.execute("DELETE FROM check_days WHERE job_id=? AND day < ?", (job_id, oldest_day))
            return self._db.execute("DELETE FROM checks WHERE job_id=? AND at < ?", (job_id, _iso(before))).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _row(row: tuple[Any, ...]) -> RunRecord:
        run_id, job_id, kind, status, scheduled, started, finished, summary, details, host, version, *fence = row
        instance, token, check_in = fence
        return RunRecord(
            run_id=run_id, job_id=job_id, kind=kind, status=Status(status), scheduled_at=_parse(scheduled),
            started_at=_parse(started) or utc_now(), finished_at=_parse(finished), summary=summary,
            details=json.loads(details), host=host, version=version, instance=instance or "", token=token,
            check_in=check_in,
        )  # fmt: skip


class MongoLedger:
    """The same ledger in MongoDB (Atlas or self-hosted): collections `runs` and `job_state`."""

    def __init__(self, url: str) -> None:
        from pymongo import ASCENDING, DESCENDING, MongoClient, WriteConcern

        # An operator's serverSelectionTimeoutMS in the URL wins; otherwise fail in 10 s, not 30.
        options: dict[str, Any] = {"tz_aware": True, "appname": "opskeeper"}
        if "serverselectiontimeoutms" not in url.lower():
            options["serverSelectionTimeoutMS"] = 10_000
        if "sockettimeoutms" not in url.lower():
            # A server that stops answering mid-call must not hold the daemon (and its lease step) forever.
            options["socketTimeoutMS"] = 20_000
        self._client: Any = MongoClient(url, **options)
        name = urlsplit(url).path.lstrip("/") or "opskeeper"
        db = self._client[name]
        self._runs = db["runs"]
        # The lease must survive a primary's failover: an acknowledged write of it is a majority's.
        self._lease = db.get_collection("lease", write_concern=WriteConcern("majority"))
        self._instances = db["instances"]
        self._state = db["job_state"]
        self._checks = db["checks"]
        self._days = db["check_days"]
        self._checks.create_index([("job_id", ASCENDING), ("at", ASCENDING)])
        self._checks.create_index([("job_id", ASCENDING), ("endpoint", ASCENDING), ("at", ASCENDING)])
        self._checks.create_index([("at", ASCENDING)])
        self._runs.create_index([("job_id", ASCENDING), ("started_at", DESCENDING)])
        self._runs.create_index([("started_at", DESCENDING)])
        self._runs.create_index([("kind", ASCENDING), ("started_at", ASCENDING)])
        self._runs.create_index([("status", ASCENDING), ("instance", ASCENDING)])

    def start(self, record: RunRecord) -> None:
        self._runs.insert_one(self._doc(replace(record, status=Status.RUNNING, finished_at=None)))

    def record(self, record: RunRecord) -> None:
        self._runs.insert_one(self._doc(record))

    def finish(
        self, run_id: str, status: Status, summary: str, details: Mapping[str, Any], finished_at: datetime
    ) -> bool:
        current = self._runs.find_one({"_id": run_id}, {"started_at": 1})
        if current is None:
            return False
        ended = to_ms(finished_at)
        duration = round((ended - current["started_at"]).total_seconds(), 3)
        result = self._runs.update_one(
            {"_id": run_id, "status": Status.RUNNING.value},
            {"$set": {"status": status.value, "summary": summary, "details": _jsonable(details),
                      "finished_at": ended, "duration_s": duration}},
        )  # fmt: skip
        return bool(result.modified_count == 1)

    def recent(self, job_id: str | None = None, limit: int = 20) -> list[RunRecord]:
        query = {"job_id": job_id} if job_id else {}
        cursor = self._runs.find(query).sort([("started_at", -1), ("_id", -1)]).limit(limit)
        return [self._record(doc) for doc in cursor]

    def get(self, run_id: str) -> RunRecord | None:
        doc = self._runs.find_one({"_id": run_id})
        return None if doc is None else self._record(doc)

    def runs(self, since: datetime, until: datetime, kinds: Sequence[str] = (),
             statuses: Sequence[str] = ()) -> list[RunRecord]:  # fmt: skip
        query: dict[str, Any] = {"started_at": {"$gte": to_ms(since), "$lt": to_ms(until)}}
        if kinds:
            query["kind"] = {"$in": list(kinds)}
        if statuses:
            query["status"] = {"$in": list(statuses)}
        return [self._record(doc) for doc in self._runs.find(query).sort([("started_at", 1), ("_id", 1)])]

    def interrupt_orphans(self, now: datetime, alive: timedelta) -> int:
        living = [d["_id"] for d in self._instances.find({"seen_at": {"$gte": to_ms(now - alive)}}, {"_id": 1})]
        result = self._runs.update_many(
            {"status": Status.RUNNING.value, "instance": {"$nin": living}},
            {"$set": {"status": Status.INTERRUPTED.value, "finished_at": to_ms(now), "summary": ORPHANED}},
        )  # fmt: skip
        return int(result.modified_count)

    def heartbeat(self, instance: str, now: datetime) -> None:
        self._instances.update_one({"_id": instance}, {"$set": {"seen_at": to_ms(now)}}, upsert=True)

    def acquire_lease(self, owner: str, ttl: timedelta, now: datetime) -> int | None:
        from pymongo import ReturnDocument
        from pymongo.errors import DuplicateKeyError

        until = to_ms(now + ttl)
        # Renew: the same term, so the same token.
        renewed = self._lease.find_one_and_update(
            {"_id": LEASE, "owner": owner, "expires_at": {"$gt": to_ms(now)}}, {"$set": {"expires_at": until}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        if renewed is not None:
            return int(renewed["token"])
        # Take over an expired lease: a new term, a larger token.
        taken = self._lease.find_one_and_update(
            {"_id": LEASE, "expires_at": {"$lte": to_ms(now)}},
            {"$set": {"owner": owner, "expires_at": until}, "$inc": {"token": 1}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        if taken is not None:
            return int(taken["token"])
        try:
            self._lease.insert_one({"_id": LEASE, "owner": owner, "token": 1, "expires_at": until})
        except DuplicateKeyError:
            return None  # held by another instance, unexpired
        return 1

    def release_lease(self, owner: str, token: int) -> None:
        self._lease.update_one({"_id": LEASE, "owner": owner, "token": token}, {"$set": {"expires_at": _EPOCH}})

    def lease_holder(self, now: datetime) -> Lease | None:
        doc = self._lease.find_one({"_id": LEASE, "expires_at": {"$gt": to_ms(now)}})
        return None if doc is None else Lease(doc["owner"], int(doc["token"]), doc["expires_at"])

    def get_state(self, job_id: str, key: str, default: Any = None) -> Any:
        doc = self._state.find_one({"_id": f"{job_id}\x1f{key}"})
        return default if doc is None else json.loads(doc["value"])

    def set_state(self, job_id: str, key: str, value: Any) -> None:
        # Stored as JSON text so both backends round-trip exactly the same values.
        self._state.update_one(
            {"_id": f"{job_id}\x1f{key}"},
            {"$set": {"job_id": job_id, "key": key, "value": json.dumps(value), "updated_at": utc_now()}},
            upsert=True,
        )

    def record_checks(self, checks: list[CheckRecord]) -> None:
        from pymongo import UpdateOne

        self._checks.insert_many([{**c.__dict__, "at": to_ms(c.at)} for c in checks], ordered=False)
        folds = []
        for (job_id, endpoint, day), (n, failures, degraded, total, counted, high) in fold_days(checks).items():
            update: dict[str, Any] = {"$inc": {"checks": n, "failures": failures, "degraded": degraded,
                                               "latency_sum": total, "latency_n": counted},
                                      "$setOnInsert": {"job_id": job_id, "endpoint": endpoint, "day": day}}  # fmt: skip
            if high is not None:
                update["$max"] = {"latency_max": high}
            folds.append(UpdateOne({"_id": f"{job_id}\x00{endpoint}\x00{day}"}, update, upsert=True))
        if folds:
            self._days.bulk_write(folds, ordered=False)

    def endpoints(self, since: datetime) -> list[tuple[str, str]]:
        pipeline: list[dict[str, Any]] = [{"$match": {"at": {"$gte": to_ms(since)}}},
                    {"$group": {"_id": {"job_id": "$job_id", "endpoint": "$endpoint"}}}]  # fmt: skip
        return sorted((d["_id"]["job_id"], d["_id"]["endpoint"]) for d in self._checks.aggregate(pipeline))

    def checks(self, since: datetime, job_id: str | None = None, endpoint: str | None = None) -> list[CheckRecord]:
        query: dict[str, Any] = {"at": {"$gte": to_ms(since)}}
        if job_id is not None:
            query["job_id"] = job_id
        if endpoint is not None:
            query["endpoint"] = endpoint
        cursor = self._checks.find(query, {"_id": 0}).sort([("at", 1), ("_id", 1)])
        return [CheckRecord(**doc) for doc in cursor]

    def last_success(self, job_id: str) -> RunRecord | None:
        doc = self._runs.find_one({"job_id": job_id, "status": {"$in": ["ok", "warn"]}},
                                  sort=[("started_at", -1), ("_id", -1)])  # fmt: skip
        return None if doc is None else self._record(doc)

    def check_days(self, since: datetime) -> list[DayOfChecks]:
        cursor = self._days.find({"day": {"$gte": since.astimezone(UTC).date().isoformat()}})
        rows = sorted(cursor, key=lambda d: (d["job_id"], d["endpoint"], d["day"]))
        return [DayOfChecks(d["job_id"], d["endpoint"], d["day"], d["checks"], d["failures"], d["degraded"],
                            d["latency_sum"] / d["latency_n"] if d["latency_n"] else None, d.get("latency_max"))
                for d in rows]  # fmt: skip

    def prune_checks(self, job_id: str, before: datetime) -> int:
        oldest_day = (before + CHECKS_KEPT - DAYS_KEPT).astimezone(UTC).date().isoformat()
        self._days.delete_many({"job_id": job_id, "day": {"$lt": oldest_day}})
        return int(self._checks.delete_many({"job_id": job_id, "at": {"$lt": to_ms(before)}}).deleted_count)

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _doc(r: RunRecord) -> dict[str, Any]:
        return {
            "_id": r.run_id, "job_id": r.job_id, "kind": r.kind, "status": r.status.value,
            "scheduled_at": r.scheduled_at and to_ms(r.scheduled_at), "started_at": to_ms(r.started_at),
            "finished_at": r.finished_at and to_ms(r.finished_at), "duration_s": r.duration_s,
            "summary": r.summary, "details": _jsonable(r.details), "host": r.host, "version": r.version,
            "instance": r.instance, "token": r.token, "check_in": r.check_in,
        }  # fmt: skip

    @staticmethod
    def _record(doc: Mapping[str, Any]) -> RunRecord:
        return RunRecord(
            run_id=doc["_id"], job_id=doc["job_id"], kind=doc["kind"], status=Status(doc["status"]),
            scheduled_at=doc.get("scheduled_at"), started_at=doc["started_at"], finished_at=doc.get("finished_at"),
            summary=doc.get("summary", ""), details=doc.get("details") or {}, host=doc.get("host", ""),
            version=doc.get("version", ""), instance=doc.get("instance", ""), token=doc.get("token"),
            check_in=doc.get("check_in"),
        )  # fmt: skip


def _jsonable(details: Mapping[str, Any]) -> Any:
    """Details as plain JSON types, exactly as SQLite would give them back."""
    return json.loads(json.dumps(dict(details), default=str))
