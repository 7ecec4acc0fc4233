"""The ledger behaves the same on SQLite and on MongoDB (SecantusDB, a real wire-protocol server)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.job import Status
from worker.ledger import Fenced, JobState, Lease, Ledger, RunRecord, SqliteLedger, next_token, open_ledger, to_ms

T0 = datetime(2026, 11, 26, 3, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "mongodb"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test runs once per backend; the MongoDB one gets its own database."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    uri = request.getfixturevalue("mongo_uri")
    return f"{uri.rstrip('/')}/ledger_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ledger(target: str) -> Iterator[Ledger]:
    opened = open_ledger(target)
    yield opened
    opened.close()


def run(job_id: str = "backup", started: datetime = T0, run_id: str | None = None, **kw: object) -> RunRecord:
    return RunRecord(
        run_id=run_id or uuid.uuid4().hex, job_id=job_id, kind="command", status=Status.RUNNING,
        started_at=started, scheduled_at=started - timedelta(milliseconds=5), host="worker-1", version="0.1.0",
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def finished(job_id: str, started: datetime, summary: str) -> RunRecord:
    return replace(run(job_id, started), status=Status.OK, finished_at=started + timedelta(seconds=1), summary=summary)


def test_open_ledger_picks_backend_by_target(tmp_path: Path) -> None:
    """A path opens SQLite (creating its folder); mongodb:// URLs open MongoDB."""
    opened = open_ledger(str(tmp_path / "deep" / "dir" / "x.db"))
    assert isinstance(opened, SqliteLedger)
    assert (tmp_path / "deep" / "dir" / "x.db").exists()
    opened.close()


def test_start_then_finish_records_the_whole_run(ledger: Ledger) -> None:
    """A finished run keeps every field, with the duration from start to end."""
    record = run()
    ledger.start(record)
    assert ledger.get(record.run_id).status is Status.RUNNING  # type: ignore[union-attr]
    ended = T0 + timedelta(seconds=2, milliseconds=500)
    assert ledger.finish(record.run_id, Status.FAIL, "3 of 5 down", {"down": ["a", "b", "c"], "n": 3}, ended)
    got = ledger.get(record.run_id)
    assert got is not None
    assert (got.status, got.summary, dict(got.details)) == (
        Status.FAIL,
        "3 of 5 down",
        {"down": ["a", "b", "c"], "n": 3},
    )
    assert got.started_at == to_ms(T0)
    assert got.scheduled_at == to_ms(T0 - timedelta(milliseconds=5))
    assert got.finished_at == to_ms(ended)
    assert got.duration_s == 2.5
    assert (got.job_id, got.kind, got.host, got.version) == ("backup", "command", "worker-1", "0.1.0")


def test_first_final_status_wins(ledger: Ledger) -> None:
    """Once a run is interrupted, its late thread cannot overwrite it with ok."""
    record = run()
    ledger.start(record)
    assert ledger.finish(record.run_id, Status.INTERRUPTED, "stopped", {}, T0 + timedelta(seconds=1))
    assert not ledger.finish(record.run_id, Status.OK, "fine", {}, T0 + timedelta(seconds=2))
    assert ledger.get(record.run_id).status is Status.INTERRUPTED  # type: ignore[union-attr]


def test_finish_of_unknown_run_is_false(ledger: Ledger) -> None:
    """Finishing a run that was never started changes nothing."""
    assert not ledger.finish("nope", Status.OK, "", {}, T0)
    assert ledger.get("nope") is None


def test_recent_is_newest_first_filtered_and_limited(ledger: Ledger) -> None:
    """History lists newest first, per job or for all, up to the limit."""
    for i in range(5):
        ledger.record(finished("backup", T0 + timedelta(minutes=i), f"b{i}"))
    ledger.record(finished("health", T0 + timedelta(minutes=10), "h"))
    assert [r.summary for r in ledger.recent(limit=3)] == ["h", "b4", "b3"]
    assert [r.summary for r in ledger.recent("backup", limit=10)] == ["b4", "b3", "b2", "b1", "b0"]
    assert ledger.recent("nothing") == []


def test_runs_are_a_half_open_window_oldest_first(ledger: Ledger) -> None:
    """A review reads the runs that started in [since, until), oldest first, of the kinds it names."""
    for i in range(5):
        ledger.record(finished("backup" if i % 2 else "health", T0 + timedelta(days=i), f"r{i}"))
    window = ledger.runs(T0 + timedelta(days=1), T0 + timedelta(days=4))
    assert [r.summary for r in window] == ["r1", "r2", "r3"]
    assert [r.job_id for r in window] == ["backup", "health", "backup"]
    assert ledger.runs(T0 + timedelta(days=9), T0 + timedelta(days=10)) == []
    kinds = [replace(finished("drill", T0 + timedelta(hours=h), f"k{h}"), kind=k) for h, k in
             ((1, "restore_drill"), (2, "health"), (3, "dependencies"))]  # fmt: skip
    for record in kinds:
        ledger.record(record)
    picked = ledger.runs(T0, T0 + timedelta(days=1), ("restore_drill", "dependencies"))
    assert [r.summary for r in picked] == ["k1", "k3"]


def test_record_keeps_a_missed_run(ledger: Ledger) -> None:
    """A run that never happened is stored as `missed` with its reason."""
    missed = replace(run(), status=Status.MISSED, finished_at=T0, summary="missed: 12m late")
    ledger.record(missed)
    got = ledger.get(missed.run_id)
    assert got is not None
    assert (got.status, got.summary, got.duration_s) == (Status.MISSED, "missed: 12m late", 0.0)


def test_orphans_are_the_runs_of_instances_gone_quiet(ledger: Ledger) -> None:
    """A `running` run is closed only when its own instance stopped heartbeating; the host name plays no part."""
    alive, quiet, never, done = (replace(run(), instance=name) for name in ("a", "b", "c", "a"))
    for record in (alive, quiet, never, done):
        ledger.start(record)
    ledger.finish(done.run_id, Status.OK, "", {}, T0 + timedelta(seconds=1))
    window = timedelta(seconds=1)
    ledger.heartbeat("b", datetime.now(UTC))
    # MongoDB stamps heartbeats with its own clock: wait until b's is older than the window by the ledger's.
    awaited(lambda: [i.name for i in ledger.instances(window)] == [], "b's heartbeat to age past the window")
    ledger.heartbeat("a", datetime.now(UTC))
    assert ledger.interrupt_orphans(datetime.now(UTC), window) == 2
    statuses = {r.instance: ledger.get(r.run_id).status for r in (alive, quiet, never)}  # type: ignore[union-attr]
    assert statuses == {"a": Status.RUNNING, "b": Status.INTERRUPTED, "c": Status.INTERRUPTED}
    assert ledger.get(done.run_id).status is Status.OK  # type: ignore[union-attr]
    assert {alive.host, quiet.host, never.host} == {"worker-1"}


def awaited(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll `condition` until it holds: the ledger's clock, not the test's, decides when a lease or heartbeat ages."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_lease_has_one_holder_and_a_token_per_term(ledger: Ledger) -> None:
    """One holder at a time; renewing keeps the token; a take-over after expiry or a release gets a larger one."""
    ttl, now = timedelta(seconds=30), lambda: datetime.now(UTC)
    assert ledger.acquire_lease("a", ttl, now()) == 1
    assert ledger.acquire_lease("b", ttl, now()) is None
    assert ledger.acquire_lease("a", ttl, now()) == 1  # renewed
    held = ledger.lease_holder(now())
    assert held is not None
    assert (held.owner, held.token) == ("a", 1)
    assert timedelta(seconds=25) < held.expires_at - now() <= ttl
    brief = timedelta(milliseconds=300)
    assert ledger.acquire_lease("a", brief, now()) == 1  # a renews for a moment only, then stops renewing
    awaited(lambda: ledger.lease_holder(now()) is None, "a's lease to expire")
    assert ledger.acquire_lease("b", ttl, now()) == 2  # b takes over
    assert ledger.acquire_lease("a", ttl, now()) is None
    ledger.release_lease("a", 1)  # a stale holder cannot give away b's term
    held = ledger.lease_holder(now())
    assert held is not None
    assert (held.owner, held.token) == ("b", 2)
    ledger.release_lease("b", 2)
    assert ledger.lease_holder(now()) is None
    assert ledger.acquire_lease("a", ttl, now()) == 3


def test_a_mongodb_lease_is_judged_by_the_servers_clock(mongo_uri: str) -> None:
    """On MongoDB the caller's clock plays no part: an instance 30 s (or an hour) ahead cannot take a live lease,
    and one 30 s behind cannot renew an expired one into the same term."""
    ledger = open_ledger(f"{mongo_uri.rstrip('/')}/skew_{uuid.uuid4().hex[:8]}")
    try:
        real = datetime.now(UTC)
        assert ledger.acquire_lease("healthy", timedelta(seconds=15), real) == 1
        for ahead in (timedelta(seconds=30), timedelta(hours=1)):
            assert ledger.acquire_lease("skewed", timedelta(seconds=15), real + ahead) is None
            assert ledger.lease_holder(real + ahead) is not None
        assert ledger.acquire_lease("healthy", timedelta(milliseconds=200), real) == 1
        awaited(lambda: ledger.lease_holder(datetime.now(UTC)) is None, "the lease to expire by the server's clock")
        assert ledger.acquire_lease("healthy", timedelta(seconds=15), real - timedelta(seconds=30)) == 2
    finally:
        ledger.close()


def test_a_write_stamped_with_a_deposed_term_is_refused(ledger: Ledger) -> None:
    """Fencing: start, record and job state written with a token that no longer holds the lease raise Fenced and
    change nothing; the holder's own writes, and unstamped ones (run-now), go through."""
    now = lambda: datetime.now(UTC)  # noqa: E731
    old = ledger.acquire_lease("old", timedelta(milliseconds=300), now())
    assert old == 1
    ledger.start(replace(run(run_id="before"), instance="old", token=old))
    awaited(lambda: ledger.lease_holder(now()) is None, "old's lease to expire")
    new = ledger.acquire_lease("new", timedelta(seconds=30), now())
    assert new == 2
    late = replace(run(run_id="late"), instance="old", token=old)
    with pytest.raises(
        Fenced,
        match=r"old wrote with lease token 1, which no longer holds the lease \(new holds it "
        r"with token 2\)",
    ):
        ledger.start(late)
    with pytest.raises(Fenced):
        ledger.record(replace(late, status=Status.MISSED, finished_at=T0))
    with pytest.raises(Fenced):
        ledger.set_state("backup", "cursor", "stale", ("old", old))
    assert ledger.get("late") is None
    assert ledger.get_state("backup", "cursor") is None
    ledger.start(replace(run(run_id="current"), instance="new", token=new))
    ledger.set_state("backup", "cursor", "fresh", ("new", new))
    ledger.start(run(run_id="unstamped"))
    assert [ledger.get(r) is not None for r in ("before", "current", "unstamped")] == [True] * 3
    assert ledger.get_state("backup", "cursor") == "fresh"


def test_instances_say_how_far_their_clocks_are_from_the_ledgers(ledger: Ledger, target: str) -> None:
    """A heartbeat keeps the instance's own time beside the ledger's: MongoDB gives the offset; SQLite, one
    machine with one clock, gives 0."""
    ledger.heartbeat("ahead", datetime.now(UTC) + timedelta(seconds=30))
    ledger.heartbeat("on-time", datetime.now(UTC))
    offsets = {i.name: i.clock_offset_s for i in ledger.instances(timedelta(minutes=1))}
    if target.startswith("mongodb"):
        assert 29 < offsets["ahead"] <= 30
        assert abs(offsets["on-time"]) < 1
    else:
        assert offsets == {"ahead": 0.0, "on-time": 0.0}


def test_a_new_term_closes_the_runs_of_the_ones_before(ledger: Ledger) -> None:
    """interrupt_term: `running` runs stamped with an older token become interrupted with the reason; the new
    term's own, unstamped ones (run-now) and finished ones are left alone."""
    old = ledger.acquire_lease("old", timedelta(milliseconds=200), datetime.now(UTC))
    assert old is not None
    ledger.start(replace(run(run_id="old-run"), instance="old", token=old))
    ledger.start(run(run_id="run-now"))
    awaited(lambda: ledger.lease_holder(datetime.now(UTC)) is None, "old's lease to expire")
    new = ledger.acquire_lease("new", timedelta(seconds=30), datetime.now(UTC))
    assert new == old + 1
    ledger.start(replace(run(run_id="new-run"), instance="new", token=new))
    assert ledger.interrupt_term(new, datetime.now(UTC), "its term of the lease ended") == 1
    got = {r: ledger.get(r) for r in ("old-run", "run-now", "new-run")}
    assert {r: (g.status, g.summary) for r, g in got.items() if g is not None} == {
        "old-run": (Status.INTERRUPTED, "its term of the lease ended"), "run-now": (Status.RUNNING, ""),
        "new-run": (Status.RUNNING, ""),
    }  # fmt: skip


def test_lease_race_has_one_winner(target: str) -> None:
    """Eight instances, each with its own connection, ask at the same moment: exactly one gets the lease."""
    contenders = [open_ledger(target) for _ in range(8)]
    barrier = threading.Barrier(len(contenders))
    won: dict[int, int | None] = {}

    def ask(i: int) -> None:
        barrier.wait()
        won[i] = contenders[i].acquire_lease(f"i{i}", timedelta(seconds=15), T0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in contenders:
        c.close()
    assert sorted(v for v in won.values() if v is not None) == [1]
    assert len(won) == 8


@pytest.mark.parametrize(("held", "owner", "at", "expected"), [
    (None, "a", 0, 1),
    (("a", 4, 10), "a", 5, 4),
    (("a", 4, 10), "b", 5, None),
    (("a", 4, 10), "b", 10, 5),
    (("a", 4, 10), "a", 11, 5),
])  # fmt: skip
def test_next_token(held: tuple[str, int, int] | None, owner: str, at: int, expected: int | None) -> None:
    """The token a request gets: a new lease 1, a renewal the same, any new term one more, a held lease none."""
    lease = None if held is None else Lease(held[0], held[1], T0 + timedelta(seconds=held[2]))
    assert next_token(lease, owner, T0 + timedelta(seconds=at)) == expected


def test_job_state_round_trips_and_is_per_job(ledger: Ledger) -> None:
    """Each job remembers JSON values under keys; overwriting replaces; jobs do not share."""
    state, other = JobState(ledger, "backup"), JobState(ledger, "health")
    assert state.get("last_good", "none") == "none"
    state.set("last_good", {"key": "2026/11/26.archive", "collections": {"users": 12}, "ok": True})
    state.set("streak", 1)
    state.set("streak", 2)
    assert state.get("last_good") == {"key": "2026/11/26.archive", "collections": {"users": 12}, "ok": True}
    assert state.get("streak") == 2
    assert other.get("streak") is None


def test_state_reads_back_as_json_would(ledger: Ledger) -> None:
    """State round-trips as JSON in both backends: an int key comes back a string (as json.dumps writes it),
    unicode and nesting intact."""
    ledger.set_state("deps", "cache", {1: "one", "registry": {"@acme/ü": {"doc": {"versions": {"1.0.0": {}}}}}})
    assert ledger.get_state("deps", "cache") == {"1": "one", "registry": {"@acme/ü": {"doc": {"versions": {
        "1.0.0": {}}}}}}  # fmt: skip


def test_state_written_by_the_standard_library_still_reads() -> None:
    """A value json.dumps wrote before (NaN and Infinity included, which orjson refuses) still loads."""
    import json
    import math

    from worker.ledger.model import load_state

    loaded = load_state(json.dumps({"ratio": float("nan"), "limit": float("inf"), "n": [1]}))
    assert math.isnan(loaded["ratio"])
    assert (loaded["limit"], loaded["n"]) == (float("inf"), [1])


def test_state_survives_reopening(tmp_path: Path) -> None:
    """SQLite state and history survive a restart (a new ledger on the same file)."""
    path = str(tmp_path / "l.db")
    first = open_ledger(path)
    first.set_state("j", "k", [1, 2])
    first.record(replace(run(), status=Status.OK, finished_at=T0))
    first.close()
    second = open_ledger(path)
    assert second.get_state("j", "k") == [1, 2]
    assert len(second.recent()) == 1
    second.close()


def test_checks_are_kept_filtered_and_pruned(ledger: Ledger) -> None:
    """Probe checks come back oldest first, by job and endpoint, and pruning drops only old ones."""
    from worker.job import CheckRecord
    from worker.ledger import CHECKS_KEPT, JobChecks

    def check(job: str, endpoint: str, minutes: int, verdict: str = "ok") -> CheckRecord:
        return CheckRecord(job_id=job, endpoint=endpoint, at=T0 + timedelta(minutes=minutes), verdict=verdict,
                           state="UP", status_code=200, latency_ms=12.5, reason="")  # fmt: skip

    ledger.record_checks([check("h", "api", 1), check("h", "web", 2), check("other", "api", 3)])
    ledger.record_checks([check("h", "api", 4, "fail")])
    got = ledger.checks(T0, "h", "api")
    assert [(c.at, c.verdict, c.latency_ms, c.status_code) for c in got] == [
        (to_ms(T0 + timedelta(minutes=1)), "ok", 12.5, 200),
        (to_ms(T0 + timedelta(minutes=4)), "fail", 12.5, 200),
    ]
    assert len(ledger.checks(T0)) == 4
    assert len(ledger.checks(T0 + timedelta(minutes=2), "h")) == 2
    assert ledger.endpoints(T0) == [("h", "api"), ("h", "web"), ("other", "api")]
    assert ledger.endpoints(T0 + timedelta(minutes=3)) == [("h", "api"), ("other", "api")]
    # Recording a check a month later prunes this job's checks older than the longest window.
    JobChecks(ledger, "h").record([check("h", "api", int(CHECKS_KEPT.total_seconds() // 60) + 3)])
    assert [c.endpoint for c in ledger.checks(T0, "h")] == ["api", "api"]
    assert len(ledger.checks(T0, "other")) == 1


def test_a_ledger_file_from_before_the_lease_is_upgraded(tmp_path: Path) -> None:
    """An older SQLite ledger gains the instance, token and check-in columns; a left-over `running` row is an orphan."""
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, kind TEXT NOT NULL,"
                " status TEXT NOT NULL, scheduled_at TEXT, started_at TEXT NOT NULL, finished_at TEXT,"
                " duration_s REAL, summary TEXT NOT NULL, details TEXT NOT NULL, host TEXT NOT NULL,"
                " version TEXT NOT NULL)")  # fmt: skip
    old.execute("INSERT INTO runs VALUES ('r1', 'backup', 'backup', 'running', NULL, '2026-11-26T03:00:00.000+00:00',"
                " NULL, NULL, '', '{}', 'worker-1', '0.1.0')")  # fmt: skip
    old.commit()
    old.close()
    ledger = SqliteLedger(path)
    try:
        assert ledger.get("r1") == RunRecord(run_id="r1", job_id="backup", kind="backup", status=Status.RUNNING,
                                             started_at=T0.replace(microsecond=0), host="worker-1",
                                             version="0.1.0")  # fmt: skip
        assert ledger.interrupt_orphans(T0 + timedelta(minutes=1), timedelta(seconds=15)) == 1
        token = ledger.acquire_lease("i1", timedelta(seconds=30), datetime.now(UTC))
        ledger.start(replace(run(), instance="i1", token=token, check_in="c1"))
        (newest,) = ledger.recent(limit=1)
        assert (newest.instance, newest.token, newest.check_in) == ("i1", token, "c1")
    finally:
        ledger.close()


def test_a_sqlite_file_deleted_or_replaced_while_open_is_an_error_not_a_fork(tmp_path: Path) -> None:
    """Deleting or swapping the ledger file under an open ledger makes every later call name that, not write on."""
    from worker.ledger import LedgerError

    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    ledger.start(run("backup", T0, run_id="first"))
    path.unlink()
    with pytest.raises(LedgerError, match=rf"the ledger {path} was deleted while opskeeper had it open"):
        ledger.start(run("backup", T0, run_id="second"))
    other = SqliteLedger(tmp_path / "other.db")
    other.close()
    (tmp_path / "other.db").replace(path)
    with pytest.raises(LedgerError, match="was replaced by another file"):
        ledger.recent()
    ledger.close()


def test_the_daemon_reports_a_deleted_ledger(tmp_path: Path) -> None:
    """A daemon whose SQLite ledger is deleted says so in its log (lease.unreachable naming the file)."""
    from tests.conftest import DaemonProcess, clean_env, write

    config = write(tmp_path / "jobs.yaml", "jobs:\n  - id: tick\n    kind: command\n    schedule: every 1s\n"
                                           "    options: {argv: ['true']}\n")  # fmt: skip
    path = tmp_path / "ledger.db"
    daemon = DaemonProcess(config, clean_env(OPSKEEPER_LEDGER=str(path)))
    try:
        daemon.wait_for(lambda e: e["event"] == "job.finished")
        path.unlink()
        _, trouble = daemon.wait_for(lambda e: e["event"] in ("lease.unreachable", "ledger.error"))
        assert f"the ledger {path} was deleted while opskeeper had it open" in trouble["error"]
    finally:
        daemon.terminate()


def test_last_success_skips_failed_and_running_runs(ledger: Ledger) -> None:
    """The newest ok or warn run of the job, however many failures came after it."""
    ledger.record(finished("backup", T0, "first ok"))
    ledger.record(replace(finished("backup", T0 + timedelta(hours=1), "warned"), status=Status.WARN))
    for i in range(3):
        ledger.record(replace(finished("backup", T0 + timedelta(hours=2 + i), f"f{i}"), status=Status.FAIL))
    ledger.start(run("backup", T0 + timedelta(hours=9)))
    found = ledger.last_success("backup")
    assert found is not None
    assert found.summary == "warned"
    assert ledger.last_success("nothing") is None


def test_check_days_aggregate_per_endpoint_and_utc_day(ledger: Ledger) -> None:
    """Counts, failures, degraded and latency of non-failed checks per (job, endpoint, UTC day)."""
    from worker.job import CheckRecord
    from worker.ledger import DayOfChecks

    def check(endpoint: str, at: datetime, verdict: str, latency: float | None) -> CheckRecord:
        return CheckRecord(job_id="h", endpoint=endpoint, at=at, verdict=verdict, state="UP", status_code=200,
                           latency_ms=latency, reason="")  # fmt: skip

    day1 = datetime(2026, 11, 26, 23, 59, tzinfo=UTC)
    late = datetime(2026, 11, 27, 0, 30, tzinfo=UTC)
    ledger.record_checks([check("api", day1, "ok", 10.0), check("api", day1, "degraded", 30.0),
                          check("api", day1, "fail", 5000.0), check("api", late, "ok", 20.0),
                          check("web", late, "fail", None)])  # fmt: skip
    assert ledger.check_days(datetime(2026, 11, 26, tzinfo=UTC)) == [
        DayOfChecks("h", "api", "2026-11-26", 3, 1, 1, 20.0, 30.0),
        DayOfChecks("h", "api", "2026-11-27", 1, 0, 0, 20.0, 20.0),
        DayOfChecks("h", "web", "2026-11-27", 1, 1, 0, None, None),
    ]


def test_runs_filtered_by_status(ledger: Ledger) -> None:
    """A review asks only for the troubled runs: ok ones are never read."""
    ledger.record(finished("health", T0, "fine"))
    ledger.record(replace(finished("health", T0 + timedelta(minutes=1), "down"), status=Status.FAIL))
    ledger.record(replace(finished("backup", T0 + timedelta(minutes=2), "late"), status=Status.MISSED))
    found = ledger.runs(T0, T0 + timedelta(hours=1), statuses=["fail", "missed"])
    assert [r.summary for r in found] == ["down", "late"]


def test_day_figures_outlive_the_pruned_checks(ledger: Ledger) -> None:
    """Checks go after 31 days, but each day's figures stay for the status page's 90-day bars."""
    from worker.job import CheckRecord
    from worker.ledger import JobChecks

    def check(at: datetime, verdict: str) -> CheckRecord:
        return CheckRecord(job_id="h", endpoint="api", at=at, verdict=verdict, state="UP", status_code=200,
                           latency_ms=50.0, reason="")  # fmt: skip

    log = JobChecks(ledger, "h")
    old = T0 - timedelta(days=60)
    log.record([check(old, "ok"), check(old + timedelta(minutes=1), "fail")])
    log.record([check(T0, "ok")])
    assert [c.at for c in ledger.checks(old - timedelta(days=1), "h")] == [to_ms(T0)]
    days = {d.day: (d.checks, d.failures) for d in ledger.check_days(old - timedelta(days=1))}
    assert days == {old.date().isoformat(): (2, 1), T0.date().isoformat(): (1, 0)}


def test_an_older_sqlite_ledger_gets_its_day_figures_on_open(tmp_path: Path) -> None:
    """A ledger written before the per-day table folds the checks it holds when it is next opened."""
    import sqlite3

    from worker.job import CheckRecord

    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.record_checks([CheckRecord(job_id="h", endpoint="api", at=T0, verdict="fail", state="DOWN",
                                      status_code=None, latency_ms=None, reason="refused")])  # fmt: skip
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute("DROP TABLE check_days")
    ledger = SqliteLedger(tmp_path / "ledger.db")
    [day] = ledger.check_days(T0 - timedelta(days=1))
    assert (day.day, day.checks, day.failures, day.latency_avg_ms) == (T0.date().isoformat(), 1, 1, None)
    ledger.close()
