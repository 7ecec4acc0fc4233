"""The runner: exceptions become ERROR, transient errors retry, timeouts never wedge, secrets are masked."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import free_port_closed
from worker.job import Job, JobContext, JobOptions, Outcome, Status, TransientError
from worker.ledger import SqliteLedger
from worker.reporting.log import configure
from worker.reporting.redact import Redactor
from worker.reporting.sentry import SentryReporter
from worker.runner import Runner
from worker.schedule import JobSpec
from worker.timespec import parse_schedule


class Scripted:
    """A job whose behaviour each test supplies as a function of the context."""

    def __init__(self, behave: Callable[[JobContext], Outcome]) -> None:
        self.behave = behave
        self.calls = 0

    def run(self, ctx: JobContext) -> Outcome:
        self.calls += 1
        return self.behave(ctx)


def spec(job_id: str = "probe", **kw: Any) -> JobSpec:
    return JobSpec(id=job_id, kind="scripted", schedule=parse_schedule("every 1m"), options=JobOptions(), **kw)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    opened = SqliteLedger(tmp_path / "ledger.db")
    yield opened
    opened.close()


def runner_for(job: Scripted, ledger: SqliteLedger, secrets: tuple[str, ...] = ()) -> Runner:
    redactor = Redactor(secrets)
    sentry = SentryReporter(None, environment="test", release=None, traces_sample_rate=0, redactor=redactor)

    def build(kind: str, options: Any) -> Job:
        return job

    return Runner(ledger, sentry, redactor, ZoneInfo("UTC"), build=build)


def test_ok_outcome_is_recorded(ledger: SqliteLedger) -> None:
    """A job's own verdict, summary and details reach the ledger unchanged."""
    job = Scripted(lambda ctx: Outcome(Status.WARN, "disk 91% full", {"used": 91}))
    record = runner_for(job, ledger).run(spec())
    stored = ledger.get(record.run_id)
    assert stored is not None
    assert (stored.status, stored.summary, dict(stored.details)) == (Status.WARN, "disk 91% full", {"used": 91})


def test_exception_becomes_error_with_traceback(ledger: SqliteLedger) -> None:
    """An exception inside a job is an ERROR outcome naming it; the runner does not raise."""

    def boom(ctx: JobContext) -> Outcome:
        raise RuntimeError("mongodump archive truncated\nsecond line")

    record = runner_for(Scripted(boom), ledger).run(spec())
    assert record.status is Status.ERROR
    assert record.summary == "RuntimeError: mongodump archive truncated"
    assert "Traceback" in record.details["traceback"]
    assert ledger.get(record.run_id).status is Status.ERROR  # type: ignore[union-attr]


def test_transient_errors_are_retried_with_backoff(ledger: SqliteLedger) -> None:
    """Connection errors are retried up to `retries` times; the success records the attempts."""
    job = Scripted(lambda ctx: (_ for _ in ()).throw(ConnectionError("reset")) if job.calls < 3 else
                   Outcome(Status.OK, "up"))  # fmt: skip
    record = runner_for(job, ledger).run(spec(retries=2, retry_backoff=timedelta(milliseconds=5)))
    assert record.status is Status.OK
    assert job.calls == 3
    assert record.details["attempts"] == 3


def test_retries_run_out(ledger: SqliteLedger) -> None:
    """When every attempt fails transiently, the last error is the outcome."""
    job = Scripted(lambda ctx: (_ for _ in ()).throw(TransientError("503 from registry")))
    record = runner_for(job, ledger).run(spec(retries=1, retry_backoff=timedelta(milliseconds=5)))
    assert (record.status, record.summary, job.calls) == (Status.ERROR, "TransientError: 503 from registry", 2)


def test_other_errors_are_not_retried(ledger: SqliteLedger) -> None:
    """A bug (ValueError) is not transient: one attempt only."""
    job = Scripted(lambda ctx: (_ for _ in ()).throw(ValueError("bad option")))
    record = runner_for(job, ledger).run(spec(retries=3, retry_backoff=timedelta(milliseconds=5)))
    assert (record.status, job.calls) == (Status.ERROR, 1)


def test_timeout_returns_and_skips_while_the_straggler_lives(ledger: SqliteLedger) -> None:
    """A job that ignores its timeout is recorded `timeout`; its next run is skipped until it returns."""
    release = threading.Event()
    job = Scripted(lambda ctx: Outcome(Status.OK, "late") if release.wait(30) else Outcome(Status.FAIL, "never"))
    runner = runner_for(job, ledger)
    first = runner.run(spec(timeout=timedelta(milliseconds=200)))
    assert first.status is Status.TIMEOUT
    assert first.summary == "did not finish within its timeout of 200ms"
    second = runner.run(spec(timeout=timedelta(milliseconds=200)))
    assert second.status is Status.MISSED
    assert "still running past its timeout" in second.summary
    release.set()
    runner._stragglers["probe"].join(5)
    third = runner.run(spec(timeout=timedelta(seconds=5)))
    assert third.status is Status.OK
    assert ledger.get(first.run_id).status is Status.TIMEOUT  # type: ignore[union-attr]


def test_interrupt_all_records_interrupted(ledger: SqliteLedger) -> None:
    """Runs in progress when the daemon stops are recorded `interrupted`, and see their cancel flag."""
    started, saw_cancel = threading.Event(), threading.Event()

    def block(ctx: JobContext) -> Outcome:
        started.set()
        if ctx.cancel.wait(30):
            saw_cancel.set()
        return Outcome(Status.OK, "finished anyway")

    runner = runner_for(Scripted(block), ledger)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(runner.run(spec())))
    thread.start()
    assert started.wait(10)
    assert runner.active() == ["probe"]
    assert not runner.wait_idle(0.05)
    runner.interrupt_all()
    assert runner.wait_idle(10)
    thread.join(10)
    assert result[0].status is Status.INTERRUPTED
    assert saw_cancel.is_set()
    assert ledger.get(result[0].run_id).status is Status.INTERRUPTED  # type: ignore[union-attr]


def test_secrets_are_masked_before_the_ledger(ledger: SqliteLedger) -> None:
    """A secret in a summary or details is stored masked; so is a connection-string password."""
    details = {"uri": "mongodb://app:pw-9876@db:27017/x", "note": "tok_live_123456"}
    job = Scripted(lambda ctx: Outcome(Status.FAIL, "login with tok_live_123456 failed", details))
    record = runner_for(job, ledger, secrets=("tok_live_123456",)).run(spec())
    stored = ledger.get(record.run_id)
    assert stored is not None
    assert stored.summary == "login with *** failed"
    assert stored.details == {"uri": "mongodb://app:***@db:27017/x", "note": "***"}


def test_state_carries_across_runs(ledger: SqliteLedger) -> None:
    """A job's state store remembers values between runs."""

    def count(ctx: JobContext) -> Outcome:
        n = ctx.state.get("n", 0) + 1
        ctx.state.set("n", n)
        return Outcome(Status.OK, f"run {n}")

    runner = runner_for(Scripted(count), ledger)
    assert [runner.run(spec()).summary for _ in range(3)] == ["run 1", "run 2", "run 3"]


def test_missed_is_recorded(ledger: SqliteLedger) -> None:
    """A missed run is a ledger row with its reason."""
    from worker.ledger import utc_now

    record = runner_for(Scripted(lambda ctx: Outcome(Status.OK, "")), ledger).missed(
        spec(), utc_now(), "missed: 12m late"
    )
    stored = ledger.get(record.run_id)
    assert stored is not None
    assert (stored.status, stored.summary) == (Status.MISSED, "missed: 12m late")


def test_a_run_whose_start_the_ledger_cannot_take_does_not_begin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No effect without a record: with the MongoDB ledger down the job is not called, the run is reported as
    missed (job.not_started), and the missed record is written once the ledger answers again."""
    configure("json", Redactor())
    from secantus import SecantusDBServer

    from worker.ledger import MongoLedger

    port = free_port_closed()
    server = SecantusDBServer(port=port, storage_path=str(tmp_path / "db"))
    server.start()
    ledger = MongoLedger(f"{server.uri.rstrip('/')}/ops?serverSelectionTimeoutMS=200")
    server.stop()
    redactor = Redactor()
    sentry = SentryReporter(None, environment="test", release=None, traces_sample_rate=0, redactor=redactor)
    job = Scripted(lambda ctx: Outcome(Status.OK, "must not run"))
    runner = Runner(ledger, sentry, redactor, ZoneInfo("UTC"), build=lambda kind, options: job)
    record = runner.run(spec())
    assert (record.status, job.calls) == (Status.MISSED, 0)
    assert record.summary.startswith("not started: the ledger did not record its start (cannot reach 127.0.0.1:")
    assert runner.flush_missed() == 0  # still down: kept for later
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["event"] for e in lines if e.get("run_id") == record.run_id] == ["job.not_started", "job.finished"]
    assert not any(e["event"] == "job.started" for e in lines)
    again = SecantusDBServer(port=port, storage_path=str(tmp_path / "db"))
    again.start()
    try:
        assert runner.flush_missed() == 1
        (kept,) = ledger.recent("probe")
        assert (kept.run_id, kept.status, kept.summary) == (record.run_id, Status.MISSED, record.summary)
    finally:
        ledger.close()
        again.stop()


def leading(runner: Runner, ledger: SqliteLedger, instance: str = "me") -> int:
    """Make `runner` the lease's holder, as the daemon does; its token."""
    token = ledger.acquire_lease(instance, timedelta(seconds=30), datetime.now(UTC))
    assert token is not None
    runner.instance, runner.token = instance, token
    return token


def test_a_start_recorded_after_the_lease_ran_out_does_not_begin(ledger: SqliteLedger) -> None:
    """Validity is asked again once the start is recorded: a slow start past it closes the run as missed, and the
    job is never called."""
    job = Scripted(lambda ctx: Outcome(Status.OK, "must not run"))
    runner = runner_for(job, ledger)
    leading(runner, ledger)
    runner.may_start = lambda: False
    record = runner.run(spec())
    stored = ledger.get(record.run_id)
    assert (job.calls, record.status) == (0, Status.MISSED)
    assert stored is not None
    assert (stored.status, stored.summary) == (Status.MISSED, "not started: the lease's validity ran out while "
                                               "the ledger recorded its start")  # fmt: skip


def test_a_run_that_outlives_the_lease_is_stopped(ledger: SqliteLedger) -> None:
    """A running job is stopped (cancel set, recorded interrupted) once its instance can no longer prove it holds
    the lease: one active instance means its runs too."""
    valid = threading.Event()
    valid.set()
    seen = threading.Event()

    def waits(ctx: JobContext) -> Outcome:
        valid.clear()  # the lease's validity ends while the job runs (a pause, a partition)
        seen.set()
        ctx.cancel.wait(30)
        return Outcome(Status.OK, "finished")

    runner = runner_for(Scripted(waits), ledger)
    leading(runner, ledger)
    runner.may_start = valid.is_set
    record = runner.run(spec(timeout=timedelta(seconds=60)))
    assert seen.is_set()
    assert record.status is Status.INTERRUPTED
    assert record.summary.startswith("stopped: this instance could no longer prove it holds the lease")
    assert ledger.get(record.run_id).status is Status.INTERRUPTED  # type: ignore[union-attr]


def test_a_deposed_runs_side_effect_is_fenced_and_its_token_reaches_the_job(ledger: SqliteLedger) -> None:
    """ctx.token and ctx.instance are the run's term; ctx.fence() passes while it holds the lease and raises
    Fenced once another instance holds it, so the side effect after it never happens; the history entry of the
    effect that did happen is kept, stamped with the run's term."""
    effects: list[int | None] = []
    entries: list[str] = []

    def rolls_back(ctx: JobContext) -> Outcome:
        ctx.fence()
        effects.append(ctx.token)
        ledger.release_lease(ctx.instance, ctx.token or 0)
        assert ledger.acquire_lease("successor", timedelta(seconds=30), datetime.now(UTC)) == (ctx.token or 0) + 1
        entries.append(ctx.record("rollback", Status.OK, "rolled back once", {}))
        ctx.fence()
        effects.append(-1)
        return Outcome(Status.OK, "rolled back twice")

    runner = runner_for(Scripted(rolls_back), ledger)
    token = leading(runner, ledger)
    record = runner.run(spec())
    assert effects == [token]
    (entry,) = entries
    kept = ledger.get(entry)
    assert kept is not None
    assert (kept.kind, kept.summary, kept.instance, kept.token) == ("rollback", "rolled back once", "me", token)
    assert record.status is Status.ERROR
    assert record.summary == (f"Fenced: fenced: me wrote with lease token {token}, which no longer holds the lease "
                              f"(successor holds it with token {token + 1})")  # fmt: skip


def test_what_a_run_did_while_the_ledger_went_away_is_written_when_it_returns(tmp_path: Path) -> None:
    """The ledger stops mid-run: the run's history entry (a rollback it made) and its end are kept and written once
    the ledger answers again, so nothing it did is lost and it does not stay `running`."""
    from secantus import SecantusDBServer

    from worker.ledger import MongoLedger

    port = free_port_closed()
    server = SecantusDBServer(port=port, storage_path=str(tmp_path / "db"))
    server.start()
    ledger = MongoLedger(f"{server.uri.rstrip('/')}/ops?serverSelectionTimeoutMS=200")
    entries: list[str] = []

    def rolls_back(ctx: JobContext) -> Outcome:
        server.stop()
        entries.append(ctx.record("rollback", Status.OK, "rolled back to dep-1", {"to": "dep-1"}))
        return Outcome(Status.OK, "healed")

    redactor = Redactor()
    sentry = SentryReporter(None, environment="test", release=None, traces_sample_rate=0, redactor=redactor)
    runner = Runner(ledger, sentry, redactor, ZoneInfo("UTC"), build=lambda kind, options: Scripted(rolls_back))
    record = runner.run(spec())
    assert record.status is Status.OK
    again = SecantusDBServer(port=port, storage_path=str(tmp_path / "db"))
    again.start()
    try:
        assert runner.flush_missed() == 0  # no missed run: an end and a history entry
        stored, entry = ledger.get(record.run_id), ledger.get(entries[0])
        assert stored is not None
        assert (stored.status, stored.summary) == (Status.OK, "healed")
        assert entry is not None
        assert (entry.kind, entry.summary, dict(entry.details)) == ("rollback", "rolled back to dep-1", {"to": "dep-1"})
    finally:
        ledger.close()
        again.stop()
