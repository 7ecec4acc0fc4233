"""Several daemons on one ledger, as real processes, on SQLite and on SecantusDB: one leader, clean hand-overs."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess, SentryReceiver, clean_env, free_port_closed, opskeeper, write
from worker.job import Status
from worker.ledger import open_ledger
from worker.runner import reruns
from worker.schedule import JobSpec

Start = Callable[..., DaemonProcess]
FAST_LEASE = {"OPSKEEPER_LEASE_TTL": "3s", "OPSKEEPER_LEASE_RENEW": "1s", "OPSKEEPER_SHUTDOWN_GRACE": "1s",
              "OPSKEEPER_LOG_FORMAT": "json"}  # fmt: skip


@pytest.fixture(params=["sqlite", "mongodb"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One ledger for every daemon of the test."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return f"{request.getfixturevalue('mongo_uri').rstrip('/')}/lead_{uuid.uuid4().hex[:8]}"


def daemons_env(ledger: str, **extra: str) -> dict[str, str]:
    return clean_env(OPSKEEPER_LEDGER=ledger, **{**FAST_LEASE, **extra})


def acquired(daemon: DaemonProcess, timeout: float = 20) -> dict[str, Any]:
    return daemon.wait_for(lambda e: e["event"] == "lease.acquired", timeout=timeout)[1]


def runs_of(ledger: str, job_id: str) -> list[Any]:
    opened = open_ledger(ledger)
    try:
        now = datetime.now(UTC)
        return [r for r in opened.runs(now - timedelta(hours=1), now + timedelta(minutes=1)) if r.job_id == job_id]
    finally:
        opened.close()


EVERY_SECOND = """\
jobs:
  - id: tick
    kind: command
    schedule: every 1s
    options: {argv: ["true"]}
"""


def roles(daemons: list[DaemonProcess]) -> tuple[DaemonProcess, list[DaemonProcess]]:
    """(the leader, the standbys), once each daemon has said which it is."""
    said = {id(d): d.wait_for(lambda e: e["event"] in ("lease.acquired", "lease.standby"))[1]["event"] for d in daemons}
    leaders = [d for d in daemons if said[id(d)] == "lease.acquired"]
    assert len(leaders) == 1, said
    return leaders[0], [d for d in daemons if d is not leaders[0]]


def started(daemon: DaemonProcess, key: str) -> Any:
    return next(
        e for e in daemon.events if e["event"] == ("daemon.started" if key == "instance" else "lease.acquired")
    )[key]


@pytest.mark.slow
@pytest.mark.parametrize("count", [2, 3])
def test_several_daemons_run_each_slot_once(count: int, shared: str, tmp_path: Path, daemon_factory: Start) -> None:
    """2 or 3 daemons on one ledger: one leads, and every scheduled time of an `every 1s` job runs exactly once."""
    config = write(tmp_path / "jobs.yaml", EVERY_SECOND)
    daemons = [daemon_factory(config, daemons_env(shared)) for _ in range(count)]
    leader, standbys = roles(daemons)
    index = 0
    for _ in range(8):
        index, _ = leader.finished("tick", after=index + 1)
    for daemon in [*standbys, leader]:  # standbys first: a leader stopped first hands over, rightly
        assert daemon.terminate() == 0
    assert all(e["event"] != "job.started" for d in standbys for e in d.events)
    runs = [r for r in runs_of(shared, "tick") if r.status is not Status.MISSED]
    assert len(runs) >= 8
    assert max(Counter(r.scheduled_at for r in runs).values()) == 1
    assert {(r.instance, r.token) for r in runs} == {(started(leader, "instance"), started(leader, "token"))}


LONG_AND_TICK = (
    EVERY_SECOND
    + """\
  - id: long
    kind: command
    schedule: every 1s
    alert_on: []
    options: {argv: ["sleep", "60"]}
"""
)


@pytest.mark.slow
def test_kill_9_of_the_leader(shared: str, tmp_path: Path, daemon_factory: Start) -> None:
    """After kill -9 of the leader a standby takes over within the lease's TTL, runs the next job, and closes
    the dead leader's running run as interrupted, leaving its own live run alone."""
    config = write(tmp_path / "jobs.yaml", LONG_AND_TICK)
    env = daemons_env(shared)
    first = daemon_factory(config, env)
    acquired(first)
    second = daemon_factory(config, env)
    second.wait_for(lambda e: e["event"] == "lease.standby")
    first.wait_for(lambda e: e["event"] == "job.started" and e.get("job_id") == "long")
    # A tick of the first leader's on record, so the slots below span both leaders (on a loaded machine the
    # kill could otherwise come before the first tick, and the second leader's alone would prove nothing).
    first.finished("tick")
    first.proc.kill()
    first.proc.wait(10)
    mark = len(second.events)
    # TTL 3 s + one renewal (1 s) + a margin for a loaded machine.
    second.wait_for(lambda e: e["event"] == "lease.acquired", after=mark, timeout=3 + 1 + 4)
    index, _ = second.finished("tick", after=mark, timeout=5)
    second.finished("tick", after=index + 1, timeout=5)
    second.wait_for(lambda e: e["event"] == "job.started" and e.get("job_id") == "long", after=mark, timeout=5)
    # Closed at the take-over, before the new term runs anything: its term ended with the lease.
    second.wait_for(lambda e: e["event"] == "ledger.term_runs_closed", after=mark, timeout=10)
    longs = {r.instance: r.status for r in runs_of(shared, "long") if r.status is not Status.MISSED}
    assert longs == {started(first, "instance"): Status.INTERRUPTED, started(second, "instance"): Status.RUNNING}
    assert started(second, "token") > started(first, "token")
    assert second.terminate() == 0
    # Every slot of `tick` has a record: run by one leader or the other, or missed during the vacancy, saying so.
    ticks = runs_of(shared, "tick")
    slots = sorted(r.scheduled_at for r in ticks if r.scheduled_at is not None)
    assert max((b - a).total_seconds() for a, b in itertools.pairwise(slots)) < 2
    # ... and the new leader's runs are in the old one's phase: one schedule, not two.
    offsets = [(s - slots[0]).total_seconds() % 1 for s in slots]
    assert all(min(o, 1 - o) < 0.01 for o in offsets), offsets
    vacant = [r for r in ticks if r.status is Status.MISSED and "no instance ran it" in r.summary]
    assert vacant, [(r.status, r.summary) for r in ticks]
    assert {(r.instance, r.token) for r in vacant} == {(started(second, "instance"), started(second, "token"))}


SLOW_ONCE = """\
jobs:
  - id: nightly
    kind: command
    schedule: every 5s
    rerun_interrupted: true
    options:
      shell: true
      argv: ["if [ -e {marker} ]; then exit 0; fi; touch {marker}; sleep 60"]
"""


@pytest.mark.slow
def test_sigterm_hands_over_and_the_successor_reruns_the_interrupted_run(
    shared: str, tmp_path: Path, daemon_factory: Start, sentry: SentryReceiver
) -> None:
    """A deploy's SIGTERM: the leader releases the lease, the standby takes over, re-runs the run the grace cut
    short, and that run closes the same Crons slot ok; no `error` check-in is sent for the interruption."""
    config = write(tmp_path / "jobs.yaml", SLOW_ONCE.format(marker=tmp_path / "marker"))
    env = daemons_env(shared, SENTRY_DSN=sentry.dsn)
    old = daemon_factory(config, env)
    acquired(old)
    new = daemon_factory(config, env)
    new.wait_for(lambda e: e["event"] == "lease.standby")
    old.wait_for(lambda e: e["event"] == "job.started" and e.get("job_id") == "nightly", timeout=15)
    mark = len(new.events)
    old.proc.send_signal(signal.SIGTERM)
    old.wait_for(lambda e: e["event"] == "lease.released")
    new.wait_for(lambda e: e["event"] == "lease.acquired", after=mark, timeout=2 + 2)
    assert old.proc.wait(40) == 0  # one SIGTERM, as Render sends: a second one could land in its interpreter's exit
    _, rerun = new.wait_for(lambda e: e["event"] == "job.started" and "rerun_of" in e, after=mark, timeout=10)
    _, done = new.finished("nightly", after=mark, timeout=10)
    assert done["status"] == "ok"
    runs = {r.run_id: r for r in runs_of(shared, "nightly")}
    interrupted = runs[rerun["rerun_of"]]
    assert interrupted.status is Status.INTERRUPTED
    assert runs[rerun["run_id"]].check_in == interrupted.check_in
    assert runs[rerun["run_id"]].scheduled_at == interrupted.scheduled_at
    assert new.terminate() == 0
    slot = [c["status"] for c in sentry.wait_items("check_in", 3) if c["check_in_id"] == interrupted.check_in]
    assert slot == ["in_progress", "in_progress", "ok"]
    assert all(c["status"] != "error" for c in sentry.items("check_in"))


def test_only_safe_kinds_rerun_by_default() -> None:
    """Backups, drills, checks and reviews are re-run after a deploy; commands and probes only when asked."""

    def job(kind: str, **kw: Any) -> JobSpec:
        return JobSpec(id="j", kind=kind, schedule="@daily", **kw)

    assert [reruns(job(k)) for k in ("backup", "restore_drill", "dependencies", "weekly_review", "security_review")] \
        == [True] * 5  # fmt: skip
    assert [reruns(job(k)) for k in ("command", "health", "deploys", "atlas_backup")] == [False] * 4
    assert reruns(job("command", rerun_interrupted=True))
    assert not reruns(job("backup", rerun_interrupted=False))


@pytest.fixture
def mongod(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A SecantusDB server in a process of its own, so a test can freeze it (SIGSTOP) like a network partition."""
    port = free_port_closed()
    server = subprocess.Popen([str(Path(sys.executable).parent / "secantusd-py"), "--port", str(port),
                               "--storage-path", str(tmp_path / "db")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    uri = f"mongodb://127.0.0.1:{port}/freeze"
    from pymongo import MongoClient

    probe: Any = MongoClient(uri, serverSelectionTimeoutMS=20_000)
    probe.admin.command("ping")
    probe.close()
    yield server, uri
    server.send_signal(signal.SIGCONT)
    server.terminate()
    server.wait(20)


@pytest.mark.slow
def test_a_leader_cut_off_from_its_ledger_stops_starting_runs(
    mongod: tuple[subprocess.Popen[bytes], str], tmp_path: Path, daemon_factory: Start
) -> None:
    """The ledger freezes for longer than the TTL: the leader steps down and starts nothing until it holds the
    lease again; when the ledger answers again it resumes under a new token."""
    server, uri = mongod
    config = write(tmp_path / "jobs.yaml", EVERY_SECOND)
    daemon = daemon_factory(config, daemons_env(f"{uri}?serverSelectionTimeoutMS=1500&socketTimeoutMS=1500"))
    acquired(daemon)
    daemon.finished("tick")
    server.send_signal(signal.SIGSTOP)
    lost, _ = daemon.wait_for(lambda e: e["event"] == "lease.lost", timeout=20)
    server.send_signal(signal.SIGCONT)
    again, back = daemon.wait_for(lambda e: e["event"] == "lease.acquired", after=lost, timeout=30)
    # A run admitted while the lease was still valid may log `job.started` late: its ledger write was
    # blocked by the frozen server. What must not happen is a run scheduled after the lead was lost.
    lost_at = datetime.fromisoformat(daemon.events[lost]["timestamp"].replace("Z", "+00:00"))
    late = [e for e in daemon.events[lost:again] if e["event"] == "job.started"]
    assert all(datetime.fromisoformat(e["scheduled_at"]) < lost_at for e in late), late
    assert back["token"] > started(daemon, "token")
    daemon.finished("tick", after=again)
    assert daemon.terminate() == 0


@pytest.mark.parametrize("ledger_kind", ["sqlite", "mongodb"])
def test_render_with_a_sqlite_ledger_on_the_wiped_disk_warns(ledger_kind: str, tmp_path: Path, mongo_uri: str,
                                                             sentry: SentryReceiver) -> None:  # fmt: skip
    """On Render (RENDER=true) a SQLite ledger outside a persistent disk is a warning in the log and in Sentry;
    a MongoDB ledger is not. The start line says which ledger, where, and which instance."""
    config = write(tmp_path / "jobs.yaml", EVERY_SECOND)
    ledger = str(tmp_path / "var" / "ledger.db") if ledger_kind == "sqlite" else f"{mongo_uri.rstrip('/')}/render"
    env = clean_env(OPSKEEPER_LEDGER=ledger, OPSKEEPER_LOG_FORMAT="json", RENDER="true", SENTRY_DSN=sentry.dsn,
                    RENDER_INSTANCE_ID="srv-abc-5d8f9")  # fmt: skip
    result = opskeeper("run", "--config", str(config), "--for", "1s", env=env)
    assert result.code == 0, result.stderr
    lines = result.json_lines()
    start = next(e for e in lines if e["event"] == "daemon.started")
    assert start["ledger"] == ledger_kind
    assert start["instance"].startswith("srv-abc-5d8f9:")
    warned = [e for e in lines if e["event"] == "ledger.not_durable"]
    if ledger_kind == "sqlite":
        assert start["ledger_at"] == ledger
        assert len(warned) == 1
        assert "not on a persistent disk: Render wipes it on every deploy" in warned[0]["summary"]
        (event,) = [e for e in sentry.wait_items("event", 1) if "persistent disk" in e.get("message", "")]
        assert event["level"] == "warning"
    else:
        assert warned == []
        assert start["ledger_at"].endswith("/render")


@pytest.mark.slow
def test_run_now_beside_a_leader_is_not_taken_for_an_orphan(shared: str, tmp_path: Path,
                                                            daemon_factory: Start) -> None:  # fmt: skip
    """A `run-now` longer than the lease's TTL, on the ledger a daemon leads, heartbeats and ends `ok`."""
    config = write(tmp_path / "jobs.yaml", EVERY_SECOND + """\
  - id: manual
    kind: command
    schedule: "@yearly"
    options: {argv: ["sleep", "5"]}
""")  # fmt: skip
    env = daemons_env(shared)
    daemon = daemon_factory(config, env)
    acquired(daemon)
    result = opskeeper("run-now", "manual", "--config", str(config), "--json", env=env)
    assert result.code == 0, result.stderr
    (run,) = runs_of(shared, "manual")
    assert run.status is Status.OK
    assert daemon.terminate() == 0


#: libfaketime (Debian's faketime package): preloaded, it shifts the daemon's wall clock, not its monotonic one.
FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


@pytest.mark.slow
@pytest.mark.skipif(FAKETIME is None, reason="faketime is not installed: apt-get install faketime (as root; .ci/run "
                    "does)")  # fmt: skip
@pytest.mark.parametrize("skew", ["+30s", "-30s"])
def test_an_instance_whose_clock_is_off_takes_no_live_lease(skew: str, mongo_uri: str, tmp_path: Path,
                                                            daemon_factory: Start) -> None:  # fmt: skip
    """On the MongoDB ledger a standby whose clock runs 30 s ahead (or behind) never takes the healthy leader's
    lease: every slot runs once, all by the leader; `status` names the skewed instance and its offset."""
    shared = f"{mongo_uri.rstrip('/')}/skew_{uuid.uuid4().hex[:8]}"
    config = write(tmp_path / "jobs.yaml", EVERY_SECOND)
    env = daemons_env(shared)
    leader = daemon_factory(config, env)
    acquired(leader)
    skewed = daemon_factory(config, {**env, "LD_PRELOAD": str(FAKETIME), "FAKETIME": skew,
                                     "FAKETIME_DONT_FAKE_MONOTONIC": "1"}, spawn=True)  # fmt: skip
    _, standby = skewed.wait_for(lambda e: e["event"] in ("lease.acquired", "lease.standby"))
    assert standby["event"] == "lease.standby"
    offset = (datetime.fromisoformat(skewed.events[0]["timestamp"]) - datetime.now(UTC)).total_seconds()
    assert abs(offset - int(skew[:-1])) < 5, "faketime shifts the daemon's clock"
    index = len(leader.events)
    for _ in range(3 * 3):  # three lease TTLs of 3 s
        index, _ = leader.finished("tick", after=index + 1)
    status = opskeeper("status", "--json", "--config", str(config), env=env)
    assert status.code == 1, status.stderr  # an instance's clock off: attention
    scheduler = json.loads(status.stdout)["scheduler"]
    assert [i["what"] for i in json.loads(status.stdout)["needs_attention"]] == ["scheduler"]
    review = opskeeper("report", "weekly", "--json", "--config", str(config), env=env)
    assert review.code == 0, review.stderr
    needs = [n for n in json.loads(review.stdout)["needs_attention"] if n["area"] == "scheduler"]
    assert skewed.terminate() == 0
    assert leader.terminate() == 0
    assert not [e for e in skewed.events if e["event"] in ("lease.acquired", "job.started")]
    runs = [r for r in runs_of(shared, "tick") if r.status is not Status.MISSED]
    assert max(Counter(r.scheduled_at for r in runs).values()) == 1
    assert {r.instance for r in runs} == {started(leader, "instance")}
    assert scheduler["lease"]["holder"] == started(leader, "instance")
    offsets = {row["instance"]: row["clock_offset_s"] for row in scheduler["instances"]}
    assert abs(offsets[started(skewed, "instance")] - int(skew[:-1])) < 2
    assert abs(offsets[started(leader, "instance")]) < 2
    direction = "ahead of" if skew.startswith("+") else "behind"
    said = rf"instance {re.escape(started(skewed, 'instance'))}: its clock is (\d+\.\d) s {direction} the ledger's; "
    # Two readings a moment apart: the offset includes each heartbeat's delay, so the figure may differ a little.
    for lines in (scheduler["attention"], [n["message"] for n in needs]):
        (line,) = lines
        found = re.match(said, line)
        assert found, line
        assert abs(float(found[1]) - 30) < 2


EFFECTS = """jobs:
  - id: tick
    kind: command
    schedule: every 1s
    alert_on: []
    options:
      shell: true
      argv: ["echo $OPSKEEPER_RUN_ID $OPSKEEPER_FENCING_TOKEN >> {effects}"]
"""


def secantusd(port: int, storage: Path) -> subprocess.Popen[bytes]:
    """A SecantusDB server in a process of its own, answering once this returns."""
    server = subprocess.Popen([str(Path(sys.executable).parent / "secantusd-py"), "--port", str(port),
                               "--storage-path", str(storage)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    from pymongo import MongoClient

    probe: Any = MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=20_000)
    probe.admin.command("ping")
    probe.close()
    return server


@pytest.mark.slow
def test_a_ledger_outage_leaves_no_effect_without_a_record(tmp_path: Path, daemon_factory: Start) -> None:
    """The ledger's server stops for longer than the lease: no run starts whose start is not recorded (every
    effect's run id is in the ledger, run), and the slots of the outage are recorded as missed once it is back."""
    port, storage, effects = free_port_closed(), tmp_path / "db", tmp_path / "effects"
    server = secantusd(port, storage)
    uri = f"mongodb://127.0.0.1:{port}/outage?serverSelectionTimeoutMS=700&socketTimeoutMS=700"
    config = write(tmp_path / "jobs.yaml", EFFECTS.format(effects=effects))
    daemon = daemon_factory(config, daemons_env(uri))
    try:
        acquired(daemon)
        index, _ = daemon.finished("tick")
        index, _ = daemon.finished("tick", after=index + 1)
        server.terminate()
        server.wait(20)
        lost, _ = daemon.wait_for(lambda e: e["event"] == "lease.lost", after=index, timeout=20)
        server = secantusd(port, storage)
        again, _ = daemon.wait_for(lambda e: e["event"] == "lease.acquired", after=lost, timeout=30)
        index, _ = daemon.finished("tick", after=again)
        daemon.finished("tick", after=index + 1)
        assert daemon.terminate() == 0
        ticks = runs_of(uri, "tick")
    finally:
        server.terminate()
        server.wait(20)
    assert [r for r in ticks if r.status is Status.RUNNING] == [], "every run that began has its end recorded"
    done = {r.run_id: r for r in ticks if r.status is not Status.MISSED}
    made = [line.split() for line in effects.read_text().splitlines()]
    assert made
    assert [run_id for run_id, _ in made if run_id not in done] == []  # no effect without its record
    assert all(int(token) == done[run_id].token for run_id, token in made)
    not_started = [e for e in daemon.events if e["event"] == "job.not_started"]
    missed = [r for r in ticks if r.status is Status.MISSED]
    assert missed
    reasons = ("not started: ", "missed: no instance ran it", "skipped: the previous run")
    assert all(r.summary.startswith(reasons) for r in missed), [r.summary for r in missed]
    assert {e["run_id"] for e in not_started} <= {r.run_id for r in missed}
    slots = sorted(r.scheduled_at for r in ticks if r.scheduled_at is not None)
    assert max((b - a).total_seconds() for a, b in itertools.pairwise(slots)) < 2, "every slot has a record"


LONGER_THAN_THE_LEASE = """jobs:
  - id: long
    kind: command
    schedule: every 2s
    alert_on: []
    options: {argv: ["sleep", "20"]}
"""


@pytest.mark.slow
def test_sigterm_mid_run_hands_over_only_after_the_run(mongo_uri: str, tmp_path: Path,
                                                       daemon_factory: Start) -> None:  # fmt: skip
    """SIGTERM while a 20 s run is going (the lease's TTL is 3 s): the leader keeps its lease until the run ends
    within the grace, then hands over; no two runs of the job overlap, and the run ends ok, not interrupted."""
    shared = f"{mongo_uri.rstrip('/')}/handover_{uuid.uuid4().hex[:8]}"
    config = write(tmp_path / "jobs.yaml", LONGER_THAN_THE_LEASE)
    env = daemons_env(shared, OPSKEEPER_SHUTDOWN_GRACE="30s")
    old = daemon_factory(config, env)
    acquired(old)
    new = daemon_factory(config, env)
    new.wait_for(lambda e: e["event"] == "lease.standby")
    _, first = old.wait_for(lambda e: e["event"] == "job.started" and e.get("job_id") == "long", timeout=15)
    old.proc.send_signal(signal.SIGTERM)
    finished, _ = old.finished("long", timeout=30)
    released, _ = old.wait_for(lambda e: e["event"] == "lease.released", timeout=10)
    assert finished < released
    assert old.proc.wait(40) == 0
    new.wait_for(lambda e: e["event"] == "lease.acquired", timeout=10)
    new.wait_for(lambda e: e["event"] == "job.started" and e.get("job_id") == "long", timeout=10)
    assert new.terminate() == 0
    runs = sorted((r for r in runs_of(shared, "long") if r.status is not Status.MISSED), key=lambda r: r.started_at)
    assert runs[0].run_id == first["run_id"]
    assert runs[0].status is Status.OK
    for before, after in itertools.pairwise(runs):
        assert before.finished_at is not None
        assert before.finished_at <= after.started_at, "two runs of one job overlapped"
