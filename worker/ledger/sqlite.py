"""The embedded default ledger: one SQLite file in WAL mode, shared safely by the daemons on one disk."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker.job import CheckRecord, Status
from worker.ledger.lease import EPOCH, LEASE, Fenced, Lease, holds, next_token
from worker.ledger.model import (
    CHECKS_KEPT,
    DAYS_KEPT,
    ORPHANED,
    DayOfChecks,
    Instance,
    LedgerError,
    RunRecord,
    dump_state,
    fold_days,
    iso,
    load_state,
    to_ms,
    utc_now,
)


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
        self._insert(replace(record, status=Status.RUNNING, finished_at=None), True)

    def record(self, record: RunRecord, fenced: bool = True) -> None:
        self._insert(record, fenced)

    def _insert(self, r: RunRecord, fenced: bool) -> None:
        row = (
            r.run_id, r.job_id, r.kind, r.status.value, iso(r.scheduled_at), iso(r.started_at),
            iso(r.finished_at), r.summary, json.dumps(dict(r.details), default=str), r.host, r.version,
            r.instance, r.token, r.check_in, r.duration_s,
        )  # fmt: skip
        placeholders = ",".join("?" * len(row))
        if r.token is None or not fenced:
            with self._guard():
                self._db.execute(f"INSERT INTO runs ({_COLUMNS}, duration_s) VALUES ({placeholders})", row)
            return
        with self._transaction():  # the lease's check and the write, one step for every process on the file
            self._fence(r.instance, r.token)
            self._db.execute(f"INSERT INTO runs ({_COLUMNS}, duration_s) VALUES ({placeholders})", row)

    def fence(self, owner: str, token: int) -> None:
        with self._guard():
            self._fence(owner, token)

    def _fence(self, owner: str, token: int) -> None:
        """Inside a transaction: refuse a write of a term that no longer holds the lease (this machine's clock)."""
        held, now = self._lease(), utc_now()
        if not holds(held, owner, token, now):
            raise Fenced(owner, token, held if held is not None and held.expires_at > now else None)

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
                (status.value, summary, json.dumps(dict(details), default=str), iso(ended), duration, run_id),
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
        where, args = "started_at >= ? AND started_at < ?", [iso(to_ms(since)), iso(to_ms(until))]
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
                (ORPHANED, iso(to_ms(now)), iso(to_ms(now - alive))),
            )
            return cur.rowcount

    def interrupt_term(self, token: int, now: datetime, summary: str) -> int:
        with self._guard():
            cur = self._db.execute(
                "UPDATE runs SET status='interrupted', summary=?, finished_at=? WHERE status='running'"
                " AND token IS NOT NULL AND token < ?", (summary, iso(to_ms(now)), token),
            )  # fmt: skip
            return cur.rowcount

    def heartbeat(self, instance: str, now: datetime) -> None:
        with self._guard():
            self._db.execute("INSERT INTO instances (instance, seen_at) VALUES (?, ?) ON CONFLICT (instance)"
                             " DO UPDATE SET seen_at=excluded.seen_at", (instance, iso(to_ms(now))))  # fmt: skip

    def instances(self, alive: timedelta) -> list[Instance]:
        # One machine, one clock: every instance on this file shares the ledger's clock.
        with self._guard():
            rows = self._db.execute("SELECT instance, seen_at FROM instances WHERE seen_at >= ? ORDER BY instance",
                                    (iso(utc_now() - alive),)).fetchall()  # fmt: skip
        return [Instance(name, datetime.fromisoformat(seen), 0.0) for name, seen in rows]

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
                    (LEASE, owner, token, iso(to_ms(now + ttl))),
                )  # fmt: skip
        return token

    def release_lease(self, owner: str, token: int) -> None:
        with self._guard():
            self._db.execute("UPDATE lease SET expires_at=? WHERE name=? AND owner=? AND token=?",
                             (iso(EPOCH), LEASE, owner, token))  # fmt: skip

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
        return default if row is None else load_state(row[0])

    def set_state(self, job_id: str, key: str, value: Any, fence: tuple[str, int] | None = None) -> None:
        with self._transaction() if fence is not None else self._guard():
            if fence is not None:
                self._fence(*fence)
            self._db.execute(
                "INSERT INTO job_state (job_id, key, value, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT (job_id, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                (job_id, key, dump_state(value), iso(utc_now())),
            )

    def record_checks(self, checks: list[CheckRecord]) -> None:
        rows = [(c.job_id, c.endpoint, iso(c.at), c.verdict, c.state, c.status_code, c.latency_ms, c.reason)
                for c in checks]  # fmt: skip
        days = [(*key, *row) for key, row in fold_days(checks).items()]
        with self._transaction():  # the checks and their days' figures together, or neither
            self._db.executemany(f"INSERT INTO checks ({_CHECK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)
            self._db.executemany(_FOLD_DAY, days)

    def endpoints(self, since: datetime) -> list[tuple[str, str]]:
        with self._guard():
            rows = self._db.execute(
                "SELECT DISTINCT job_id, endpoint FROM checks WHERE at >= ? ORDER BY job_id, endpoint", (iso(since),)
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def checks(self, since: datetime, job_id: str | None = None, endpoint: str | None = None) -> list[CheckRecord]:
        where, args = ["at >= ?"], [iso(since)]
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
            return self._db.execute("DELETE FROM checks WHERE job_id=? AND at < ?", (job_id, iso(before))).rowcount

    def damage(self) -> str | None:
        try:
            with self._lock:
                found = [str(row[0]) for row in self._db.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            found = [str(exc)]
        return None if found == ["ok"] else " ".join("; ".join(found).split())  # one line: SQLite's has several

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
