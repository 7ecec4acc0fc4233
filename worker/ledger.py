"""Run history and per-job state: SQLite by default (embedded, survives restarts), MongoDB optional.

Both backends behave the same; `tests/test_ledger.py` runs one suite against each.
A run is written twice: when it starts (`running`) and when it ends. The end is written
only while the row is still `running`, so whoever records a final status first wins: a
run the daemon already marked `interrupted` cannot be overwritten by its late thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
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

    def runs(self, since: datetime, until: datetime, kinds: Sequence[str] = ()) -> list[RunRecord]:
        """Runs that started in [since, until), of these kinds (all when empty), oldest first.

        A review names its kinds: a health job's run every minute is 132,000 runs in 92 days.
        """

    def interrupt_stale(self, host: str, finished_at: datetime) -> int:
        """Mark this host's runs left `running` by a crash as `interrupted`; how many."""

    def get_state(self, job_id: str, key: str, default: Any = None) -> Any:
        """A job's remembered value, or `default`."""

    def set_state(self, job_id: str, key: str, value: Any) -> None:
        """Remember a JSON value for a job across runs and restarts."""

    def record_checks(self, checks: list[CheckRecord]) -> None:
        """Keep probe checks for uptime figures."""

    def checks(self, since: datetime, job_id: str | None = None, endpoint: str | None = None) -> list[CheckRecord]:
        """Checks at or after `since`, oldest first."""

    def endpoints(self, since: datetime) -> list[tuple[str, str]]:
        """The (job_id, endpoint) pairs with checks at or after `since`, sorted: a week is read one at a time."""

    def prune_checks(self, job_id: str, before: datetime) -> int:
        """Forget a job's checks older than `before` (past the longest uptime window); how many."""

    def close(self) -> None:
        """Release connections."""


#: The longest window `opskeeper uptime` reports; older checks are pruned.
CHECKS_KEPT = timedelta(days=31)


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
    version TEXT NOT NULL
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
CREATE TABLE IF NOT EXISTS job_state (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
"""
_CHECK_COLUMNS = "job_id, endpoint, at, verdict, state, status_code, latency_ms, reason"
_COLUMNS = "run_id, job_id, kind, status, scheduled_at, started_at, finished_at, summary, details, host, version"


class SqliteLedger:
    """The embedded default: one file, WAL mode, one connection guarded by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Runs finish on worker threads; the lock makes the shared connection safe.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def start(self, record: RunRecord) -> None:
        self._insert(replace(record, status=Status.RUNNING, finished_at=None))

    def record(self, record: RunRecord) -> None:
        self._insert(record)

    def _insert(self, r: RunRecord) -> None:
        row = (
            r.run_id, r.job_id, r.kind, r.status.value, _iso(r.scheduled_at), _iso(r.started_at),
            _iso(r.finished_at), r.summary, json.dumps(dict(r.details), default=str), r.host, r.version,
            r.duration_s,
        )  # fmt: skip
        with self._lock:
            placeholders = ",".join("?" * len(row))
            self._db.execute(f"INSERT INTO runs ({_COLUMNS}, duration_s) VALUES ({placeholders})", row)

    def finish(
        self, run_id: str, status: Status, summary: str, details: Mapping[str, Any], finished_at: datetime
    ) -> bool:
        ended = to_ms(finished_at)
        with self._lock:
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
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM runs {where} ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [self._row(row) for row in rows]

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else self._row(row)

    def runs(self, since: datetime, until: datetime, kinds: Sequence[str] = ()) -> list[RunRecord]:
        where, args = "started_at >= ? AND started_at < ?", [_iso(to_ms(since)), _iso(to_ms(until))]
        if kinds:
            where += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE {where} ORDER BY started_at, rowid", args
            ).fetchall()
        return [self._row(row) for row in rows]

    def interrupt_stale(self, host: str, finished_at: datetime) -> int:
        with self._lock:
            cur = self._db.execute(
                "UPDATE runs SET status='interrupted', summary='the daemon stopped before this run ended',"
                " finished_at=? WHERE host=? AND status='running'",
                (_iso(finished_at), host),
            )
            return cur.rowcount

    def get_state(self, job_id: str, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM job_state WHERE job_id=? AND key=?", (job_id, key)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_state(self, job_id: str, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO job_state (job_id, key, value, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT (job_id, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                (job_id, key, json.dumps(value), _iso(utc_now())),
            )

    def record_checks(self, checks: list[CheckRecord]) -> None:
        rows = [(c.job_id, c.endpoint, _iso(c.at), c.verdict, c.state, c.status_code, c.latency_ms, c.reason)
                for c in checks]  # fmt: skip
        with self._lock:
            self._db.executemany(f"INSERT INTO checks ({_CHECK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)

    def endpoints(self, since: datetime) -> list[tuple[str, str]]:
        with self._lock:
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
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_CHECK_COLUMNS} FROM checks WHERE {' AND '.join(where)} ORDER BY at, rowid", args
            ).fetchall()
        return [
            CheckRecord(job_id=r[0], endpoint=r[1], at=datetime.fromisoformat(r[2]), verdict=r[3], state=r[4],
                        status_code=r[5], latency_ms=r[6], reason=r[7])
            for r in rows
        ]  # fmt: skip

    def prune_checks(self, job_id: str, before: datetime) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM checks WHERE job_id=? AND at < ?", (job_id, _iso(before))).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _row(row: tuple[Any, ...]) -> RunRecord:
        run_id, job_id, kind, status, scheduled, started, finished, summary, details, host, version = row
        return RunRecord(
            run_id=run_id, job_id=job_id, kind=kind, status=Status(status), scheduled_at=_parse(scheduled),
            started_at=_parse(started) or utc_now(), finished_at=_parse(finished), summary=summary,
            details=json.loads(details), host=host, version=version,
        )  # fmt: skip


class MongoLedger:
    """The same ledger in MongoDB (Atlas or self-hosted): collections `runs` and `job_state`."""

    def __init__(self, url: str) -> None:
        from pymongo import ASCENDING, DESCENDING, MongoClient

        # An operator's serverSelectionTimeoutMS in the URL wins; otherwise fail in 10 s, not 30.
        options: dict[str, Any] = {"tz_aware": True, "appname": "opskeeper"}
        if "serverselectiontimeoutms" not in url.lower():
            options["serverSelectionTimeoutMS"] = 10_000
        self._client: Any = MongoClient(url, **options)
        name = urlsplit(url).path.lstrip("/") or "opskeeper"
        db = self._client[name]
        self._runs = db["runs"]
        self._state = db["job_state"]
        self._checks = db["checks"]
        self._checks.create_index([("job_id", ASCENDING), ("at", ASCENDING)])
        self._checks.create_index([("job_id", ASCENDING), ("endpoint", ASCENDING), ("at", ASCENDING)])
        self._checks.create_index([("at", ASCENDING)])
        self._runs.create_index([("job_id", ASCENDING), ("started_at", DESCENDING)])
        self._runs.create_index([("started_at", DESCENDING)])
        self._runs.create_index([("kind", ASCENDING), ("started_at", ASCENDING)])
        self._runs.create_index([("host", ASCENDING), ("status", ASCENDING)])

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

    def runs(self, since: datetime, until: datetime, kinds: Sequence[str] = ()) -> list[RunRecord]:
        query: dict[str, Any] = {"started_at": {"$gte": to_ms(since), "$lt": to_ms(until)}}
        if kinds:
            query["kind"] = {"$in": list(kinds)}
        return [self._record(doc) for doc in self._runs.find(query).sort([("started_at", 1), ("_id", 1)])]

    def interrupt_stale(self, host: str, finished_at: datetime) -> int:
        result = self._runs.update_many(
            {"host": host, "status": Status.RUNNING.value},
            {"$set": {"status": Status.INTERRUPTED.value, "finished_at": to_ms(finished_at),
                      "summary": "the daemon stopped before this run ended"}},
        )  # fmt: skip
        return int(result.modified_count)

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
        self._checks.insert_many([{**c.__dict__, "at": to_ms(c.at)} for c in checks], ordered=False)

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

    def prune_checks(self, job_id: str, before: datetime) -> int:
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
        }  # fmt: skip

    @staticmethod
    def _record(doc: Mapping[str, Any]) -> RunRecord:
        return RunRecord(
            run_id=doc["_id"], job_id=doc["job_id"], kind=doc["kind"], status=Status(doc["status"]),
            scheduled_at=doc.get("scheduled_at"), started_at=doc["started_at"], finished_at=doc.get("finished_at"),
            summary=doc.get("summary", ""), details=doc.get("details") or {}, host=doc.get("host", ""),
            version=doc.get("version", ""),
        )  # fmt: skip


def _jsonable(details: Mapping[str, Any]) -> Any:
    """Details as plain JSON types, exactly as SQLite would give them back."""
    return json.loads(json.dumps(dict(details), default=str))
