"""The ledger in MongoDB (Atlas or self-hosted): what several instances on different machines share."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from worker.job import CheckRecord, Status
from worker.ledger.lease import EPOCH, LEASE, Fenced, Lease
from worker.ledger.model import (
    CHECKS_KEPT,
    DAYS_KEPT,
    ORPHANED,
    DayOfChecks,
    Instance,
    RunRecord,
    dump_state,
    fold_days,
    load_state,
    to_ms,
    utc_now,
)
from worker.mongodb import connect

# Time is judged by the server's clock, `$$NOW`, never the caller's: instances on different machines disagree
# about the time, the server is one. Dates are compared as epoch milliseconds (`$toLong`), which MongoDB defines
# for every date; SecantusDB compares a stored date with `$$NOW` wrongly, and millisecond numbers rightly.
_NOW_MS: dict[str, Any] = {"$toLong": "$$NOW"}


def _ms(field: str) -> dict[str, Any]:
    return {"$toLong": f"${field}"}


#: The lease is live: it expires after the server's now.
_LIVE: dict[str, Any] = {"$gt": [_ms("expires_at"), _NOW_MS]}


def _heard_within(alive: timedelta) -> dict[str, Any]:
    """Instances whose heartbeat the server stamped within `alive` of its now."""
    return {"$expr": {"$gte": [_ms("seen_at"), {"$subtract": [_NOW_MS, int(alive.total_seconds() * 1000)]}]}}


class MongoLedger:
    """The same ledger in MongoDB (Atlas or self-hosted): collections `runs` and `job_state`."""

    def __init__(self, url: str) -> None:
        from pymongo import ASCENDING, DESCENDING, WriteConcern

        # The URL's own options win (worker.mongodb.connect). A server that stops answering mid-call must not hold
        # the daemon (and its lease step) forever: 20 s a call unless the URL says otherwise.
        self._client: Any = connect(url, "opskeeper", tz_aware=True, socketTimeoutMS=20_000)
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
        if record.token is not None:
            self.fence(record.instance, record.token)
        self._runs.insert_one(self._doc(replace(record, status=Status.RUNNING, finished_at=None)))

    def record(self, record: RunRecord, fenced: bool = True) -> None:
        if fenced and record.token is not None:
            self.fence(record.instance, record.token)
        self._runs.insert_one(self._doc(record))

    def fence(self, owner: str, token: int) -> None:
        """Refuse a write of a term that no longer holds the lease by the server's clock.

        The check and the write are two operations: a writer frozen between them for longer than the lease could
        still write once. The runs' own conditions (a finish needs its run `running`) close what that leaves.
        """
        if self._lease.find_one({"_id": LEASE, "owner": owner, "token": token, "$expr": _LIVE}, {"_id": 1}):
            return
        raise Fenced(owner, token, self.lease_holder(utc_now()))

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
        # Heard from within `alive` by the server's clock, the one that stamped each heartbeat.
        living = [d["_id"] for d in self._instances.find(_heard_within(alive), {"_id": 1})]
        result = self._runs.update_many(
            {"status": Status.RUNNING.value, "instance": {"$nin": living}},
            {"$set": {"status": Status.INTERRUPTED.value, "finished_at": to_ms(now), "summary": ORPHANED}},
        )  # fmt: skip
        return int(result.modified_count)

    def interrupt_term(self, token: int, now: datetime, summary: str) -> int:
        result = self._runs.update_many(
            {"status": Status.RUNNING.value, "token": {"$ne": None, "$lt": token}},
            {"$set": {"status": Status.INTERRUPTED.value, "finished_at": to_ms(now), "summary": summary}},
        )  # fmt: skip
        return int(result.modified_count)

    def heartbeat(self, instance: str, now: datetime) -> None:
        # seen_at by the server's clock (what orphans are judged by), clock_at by the instance's: their difference
        # is how far this instance's clock is off.
        self._instances.update_one({"_id": instance}, {"$currentDate": {"seen_at": True},
                                                       "$set": {"clock_at": to_ms(now)}}, upsert=True)  # fmt: skip

    def instances(self, alive: timedelta) -> list[Instance]:
        docs = self._instances.find(_heard_within(alive))
        found = [Instance(d["_id"], d["seen_at"], round((d["clock_at"] - d["seen_at"]).total_seconds(), 3)
                          if d.get("clock_at") else None) for d in docs]  # fmt: skip
        return sorted(found, key=lambda i: i.name)

    def acquire_lease(self, owner: str, ttl: timedelta, now: datetime) -> int | None:
        """Judged by the server's clock: `now` (the caller's) is not used, so a skewed instance cannot see a live
        lease as expired. One atomic update renews (same token) or takes over an expired lease (token + 1)."""
        from pymongo import ReturnDocument
        from pymongo.errors import DuplicateKeyError

        with contextlib.suppress(DuplicateKeyError):  # the first ask ever: an expired lease to take
            self._lease.insert_one({"_id": LEASE, "owner": "", "token": 0, "expires_at": EPOCH})
        mine = {"$eq": ["$owner", owner]}
        doc = self._lease.find_one_and_update(
            {"_id": LEASE, "$expr": {"$or": [mine, {"$not": [_LIVE]}]}},
            [{"$set": {"token": {"$cond": [{"$and": [mine, _LIVE]}, "$token", {"$add": ["$token", 1]}]},
                       "owner": owner, "expires_at": {"$add": ["$$NOW", int(ttl.total_seconds() * 1000)]},
                       "asked_at": "$$NOW"}}],
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        return None if doc is None else int(doc["token"])

    def release_lease(self, owner: str, token: int) -> None:
        self._lease.update_one({"_id": LEASE, "owner": owner, "token": token}, {"$set": {"expires_at": EPOCH}})

    def lease_holder(self, now: datetime) -> Lease | None:
        """Who holds the lease by the server's clock (`now` is not used)."""
        doc = self._lease.find_one({"_id": LEASE, "$expr": _LIVE})
        return None if doc is None else Lease(doc["owner"], int(doc["token"]), doc["expires_at"])

    def get_state(self, job_id: str, key: str, default: Any = None) -> Any:
        doc = self._state.find_one({"_id": f"{job_id}\x1f{key}"})
        return default if doc is None else load_state(doc["value"])

    def set_state(self, job_id: str, key: str, value: Any, fence: tuple[str, int] | None = None) -> None:
        if fence is not None:
            self.fence(*fence)
        # Stored as JSON text so both backends round-trip exactly the same values.
        self._state.update_one(
            {"_id": f"{job_id}\x1f{key}"},
            {"$set": {"job_id": job_id, "key": key, "value": dump_state(value), "updated_at": utc_now()}},
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

    def damage(self) -> str | None:
        return None  # the server checks its own storage; a failed operation says what it found

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
