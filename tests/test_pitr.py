"""Point-in-time recovery against the tests' SecantusDB: change capture, chains, gaps, restore --at, drills."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from jobs.backup.capture import CaptureOptions, ChangeCaptureJob
from jobs.backup.catalog import digest_batch, scan
from jobs.backup.changes import scan_changes
from jobs.backup.job import BackupJob
from jobs.backup.pitr import PointInTimeError, plan, restore_at
from jobs.backup.restore import ns_mapper
from jobs.backup.source import BackupOptions, majority_time
from worker.job import JobContext, Outcome
from worker.ledger.model import JobState
from worker.ledger.sqlite import SqliteLedger
from worker.schedule import JobSpec, parse_schedule


class Chain:
    """A backup job and its change_capture job over one database, run in-process as the runner runs them."""

    def __init__(self, uri: str, tmp_path: Path, db: str, **capture: Any) -> None:
        self.uri, self.db, self.store = uri, db, tmp_path / "store"
        self.ledger = SqliteLedger(tmp_path / "ledger.db")
        self.backup_options = BackupOptions(uri=uri, databases=(db,), storage=str(self.store))
        self.capture_options = CaptureOptions(backup="nightly", **capture)
        self.jobs = {
            "nightly": JobSpec(id="nightly", kind="backup", schedule=parse_schedule("@daily"),
                               options=self.backup_options),
            "capture": JobSpec(id="capture", kind="change_capture", schedule=parse_schedule("every 1m"),
                               options=self.capture_options),
        }  # fmt: skip

    def ctx(self, job_id: str) -> JobContext:
        return JobContext(job_id=job_id, run_id=uuid.uuid4().hex, scheduled_at=dt.datetime.now(dt.UTC),
                          deadline=time.monotonic() + 300, state=JobState(self.ledger, job_id),
                          cancel=threading.Event(), log=lambda *a, **k: None, jobs=self.jobs)  # fmt: skip

    def capture(self) -> Outcome:
        return ChangeCaptureJob(self.capture_options).run(self.ctx("capture"))

    def backup(self) -> Outcome:
        return BackupJob(self.backup_options).run(self.ctx("nightly"))

    def restore(self, client: Any, at: dt.datetime | None, into: str) -> tuple[Any, Any, Any]:
        storage = self.backup_options.open_storage()
        chosen = plan(scan(storage, "nightly").entries, scan_changes(storage, "capture"), at)
        report, replayed = restore_at(storage, chosen, client, ns_mapper(f"{self.db}.*", f"{into}.*"),
                                      replace=frozenset())  # fmt: skip
        return chosen, report, replayed


def state_of(client: Any, db: str) -> dict[str, tuple[int, str, list[str]]]:
    """Each collection's count, order-independent content digest and index names: what restored copies must equal."""
    found = {}
    for name in sorted(client[db].list_collection_names()):
        total, count = 0, 0
        for batch in client[db][name].find_raw_batches({}):
            total, n = digest_batch(total, batch)
            count += n
        found[name] = (count, f"{total:032x}", sorted(ix["name"] for ix in client[db][name].list_indexes()))
    return found


def next_second(client: Any, db: str) -> int:
    """Let the second of everything written so far end; return that second.

    The server's cluster time moves only with writes (mongod adds a no-op every 10 s when idle), so once the
    wall clock is past that second, one write to a database nobody captures moves it on."""
    written = int(majority_time(client, db).time)
    time.sleep(max(0.0, written + 1 - time.time()))  # the wall clock is what is awaited: no event marks a second
    client.pitr_clock.ticks.insert_one({})
    assert majority_time(client, db).time > written
    return written


@pytest.fixture
def client(mongo_uri: str) -> Any:
    c: Any = MongoClient(mongo_uri, tz_aware=True)
    yield c
    for name in c.list_database_names():
        if name.startswith("pitr_"):  # pitr_clock too
            c.drop_database(name)
    c.close()


@pytest.mark.parametrize("post_images", [True, False], ids=["post-images", "update-descriptions"])
def test_restore_to_three_chosen_seconds_is_digest_identical(
    client: Any, mongo_uri: str, tmp_path: Path, post_images: bool
) -> None:
    """Inserts, nested and array updates, deletes and a collection created mid-run, restored to three chosen
    seconds: each restored database equals the state recorded at that second, collection for collection, whether
    updates are replayed from post-images or from their update descriptions."""
    db = f"pitr_{uuid.uuid4().hex[:6]}"
    chain = Chain(mongo_uri, tmp_path, db, post_images=post_images)
    app = client[db]
    app.users.insert_many([{"_id": i, "name": f"u{i}", "tags": ["a", "b"], "profile": {"age": i}} for i in range(50)])
    app.users.create_index("name")
    assert chain.capture().status.value == "ok"
    backup = chain.backup()
    assert backup.status.value == "ok", backup.summary
    seconds, states = [], []
    # Phase 1: updates of nested fields and arrays, a delete, an insert.
    app.users.update_one({"_id": 1}, {"$set": {"profile.age": 99, "profile.city": "Lyon"}})
    app.users.update_one({"_id": 2}, {"$push": {"tags": "c"}, "$unset": {"name": ""}})
    app.users.update_one({"_id": 3}, {"$pop": {"tags": 1}})
    app.users.delete_one({"_id": 4})
    app.users.insert_one({"_id": 100, "name": "new", "when": dt.datetime(2026, 12, 3, tzinfo=dt.UTC)})
    seconds.append(next_second(client, db))
    states.append(state_of(client, db))
    assert chain.capture().status.value == "ok"
    # Phase 2: a collection created mid-run, with an index; a replace; an array element set.
    app.create_collection("orders")
    app.orders.create_index([("user", 1), ("at", -1)], name="by_user")
    app.orders.insert_many([{"user": i % 5, "at": i, "items": [{"sku": i, "n": 1}]} for i in range(20)])
    app.users.replace_one({"_id": 5}, {"_id": 5, "replaced": True})
    app.orders.update_many({"user": 1}, {"$set": {"items.0.n": 7}})
    seconds.append(next_second(client, db))
    states.append(state_of(client, db))
    # Phase 3: deletes across both, and updates that land in the same capture run as phase 2.
    app.orders.delete_many({"user": 2})
    app.users.update_many({"_id": {"$lt": 10}}, {"$inc": {"profile.age": 1}})
    seconds.append(next_second(client, db))
    states.append(state_of(client, db))
    app.users.delete_many({})  # the mistake the restore undoes
    last = chain.capture()
    assert last.status.value == "ok"
    modes = set(last.details["updates_replayed_from"].values())
    assert modes == ({"post-images"} if post_images else set())
    for n, (second, want) in enumerate(zip(seconds, states, strict=True)):
        into = f"{db}_r{n}"
        chosen, _report, replayed = chain.restore(client, dt.datetime.fromtimestamp(second, dt.UTC), into)
        assert chosen.archive.key == backup.details["key"]
        assert replayed.events > 0
        assert replayed.last is not None
        assert replayed.last[0] <= second
        assert state_of(client, into) == want, f"restored to {second} (phase {n + 1})"


def test_restore_before_the_chain_or_after_its_end_is_refused(client: Any, mongo_uri: str, tmp_path: Path) -> None:
    """A second before the oldest archive is consistent, or after the newest captured point, is refused and says
    which; nothing is restored."""
    db = f"pitr_{uuid.uuid4().hex[:6]}"
    chain = Chain(mongo_uri, tmp_path, db)
    client[db].things.insert_one({"x": 1})
    chain.capture()
    chain.backup()
    chain.capture()
    with pytest.raises(PointInTimeError, match="before the oldest point"):
        chain.restore(client, dt.datetime(2020, 1, 1, tzinfo=dt.UTC), f"{db}_r")
    with pytest.raises(PointInTimeError, match="after the newest point captured"):
        chain.restore(client, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), f"{db}_r")
    assert f"{db}_r" not in client.list_database_names()


@pytest.mark.parametrize("point", ["capture.slice_stored", "capture.manifest_stored", "capture.position_stored"])
def test_kill_9_of_the_capture_loses_and_duplicates_nothing(
    client: Any, mongo_uri: str, tmp_path: Path, point: str
) -> None:
    """A capture killed with SIGKILL after storing its events, after their manifest, or after its position: the
    next run goes on, and restores to a second before and after the kill are each exact."""
    import os
    import signal
    import subprocess
    import sys

    db = f"pitr_{uuid.uuid4().hex[:6]}"
    chain = Chain(mongo_uri, tmp_path, db)
    app = client[db]
    app.items.insert_many([{"_id": i, "n": 0} for i in range(30)])
    chain.capture()
    chain.backup()
    app.items.update_many({"_id": {"$lt": 10}}, {"$set": {"n": 1}})
    app.items.delete_one({"_id": 29})
    first, state_first = next_second(client, db), state_of(client, db)
    code = ("import sys; from pathlib import Path; from tests.test_pitr import Chain; "
            f"Chain({mongo_uri!r}, Path({str(tmp_path)!r}), {db!r}).capture()")  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", code], check=False, env={**os.environ, "OPSKEEPER_FAILPOINT": point},
                            cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    app.items.update_many({"_id": {"$gte": 20}}, {"$inc": {"n": 5}})
    app.items.insert_one({"_id": 100, "n": 100})
    second, state_second = next_second(client, db), state_of(client, db)
    assert chain.capture().status.value == "ok"
    for n, (at, want) in enumerate([(first, state_first), (second, state_second)]):
        _chosen, _report, _replayed = chain.restore(client, dt.datetime.fromtimestamp(at, dt.UTC), f"{db}_r{n}")
        assert state_of(client, f"{db}_r{n}") == want


def test_lost_history_is_a_gap_refused_inside_and_healed_by_the_next_backup(tmp_path: Path) -> None:
    """Capture that falls out of the oplog fails naming the reason; a restore to a second in the gap refuses with
    it; the next run starts a new chain, and once a backup joins it a second after that restores."""
    from secantus import SecantusDBServer

    with SecantusDBServer(storage_path=str(tmp_path / "db"), oplog_max_entries=100) as server:
        client: Any = MongoClient(server.uri, tz_aware=True)
        db = "pitr_gap"
        chain = Chain(server.uri, tmp_path, db)
        app = client[db]
        app.items.insert_one({"_id": 0, "n": 0})
        chain.capture()
        chain.backup()
        app.items.update_one({"_id": 0}, {"$set": {"n": 1}})
        assert chain.capture().status.value == "ok"
        app.items.insert_many([{"_id": i} for i in range(1, 1500)])  # more than the oplog holds, while not watching
        inside = next_second(client, db)
        lost = chain.capture()
        assert lost.status.value == "fail"
        assert "ChangeStreamHistoryLost" in lost.summary, lost.summary
        assert "the chain is broken after" in lost.summary
        [gap] = scan_changes(chain.backup_options.open_storage(), "capture").gaps
        assert "ChangeStreamHistoryLost" in gap.reason
        with pytest.raises(PointInTimeError, match=r"inside a gap.*ChangeStreamHistoryLost"):
            chain.restore(client, dt.datetime.fromtimestamp(inside, dt.UTC), f"{db}_r")
        assert chain.capture().status.value == "ok"  # a new chain, from now
        chain.backup()
        app.items.delete_many({"_id": {"$gt": 1480}})  # fewer than the oplog holds
        after, want = next_second(client, db), state_of(client, db)
        assert chain.capture().status.value == "ok"
        chosen, _report, _replayed = chain.restore(client, dt.datetime.fromtimestamp(after, dt.UTC), f"{db}_r")
        assert state_of(client, f"{db}_r") == want
        assert chosen.archive.created_at > gap_time(gap.detected_at) - dt.timedelta(seconds=5)
        client.close()


def gap_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# --- restore_drill in point-in-time mode ------------------------------------------------------------------------


def pitr_drill(chain: Chain, mode: str) -> Outcome:
    from jobs.backup.drill import DrillJob, DrillOptions

    chain.jobs["drill"] = JobSpec(id="drill", kind="restore_drill", schedule=parse_schedule("@daily"),
                                  options=DrillOptions(backup_job="nightly", point_in_time=mode))  # fmt: skip
    return DrillJob(DrillOptions(backup_job="nightly", point_in_time=mode)).run(chain.ctx("drill"))


def changing_chain(client: Any, mongo_uri: str, tmp_path: Path) -> tuple[Chain, str]:
    db = f"pitr_{uuid.uuid4().hex[:6]}"
    chain = Chain(mongo_uri, tmp_path, db)
    app = client[db]
    app.accounts.insert_many([{"_id": i, "balance": 100, "history": []} for i in range(200)])
    chain.capture()
    chain.backup()
    for second in range(3):
        app.accounts.update_many(
            {"_id": {"$mod": [3, second]}}, {"$inc": {"balance": -5}, "$push": {"history": second}}
        )
        app.accounts.delete_one({"_id": 199 - second})
        app.accounts.insert_one({"_id": 1000 + second, "balance": second})
        next_second(client, db)
        assert chain.capture().status.value == "ok"
    return chain, db


def test_point_in_time_drill_passes_on_a_live_changing_database(client: Any, mongo_uri: str, tmp_path: Path) -> None:
    """A drill to a random captured second passes while the app keeps writing: every document equals the live one
    or the change stream shows it changed since; the record names the time, the events replayed and the RTO."""
    chain, db = changing_chain(client, mongo_uri, tmp_path)
    stop = threading.Event()

    def app_writes() -> None:
        n = 0
        while not stop.is_set():
            client[db].accounts.update_one({"_id": n % 150}, {"$inc": {"balance": 1}})
            n += 1

    writer = threading.Thread(target=app_writes)
    writer.start()
    try:
        outcome = pitr_drill(chain, "random")
    finally:
        stop.set()
        writer.join()
    assert outcome.status.value == "ok", outcome.summary
    assert outcome.details["documents_compared"] >= 190
    assert outcome.details["changed_after_target"] > 0  # the writer's updates, explained by the stream
    assert outcome.details["recovery_s"] > 0
    assert outcome.details["at"].endswith("Z")
    assert [n for n in client.list_database_names() if n.startswith("opskeeper_drill_")] == []


def test_point_in_time_drill_fails_on_a_damaged_slice_naming_it(client: Any, mongo_uri: str, tmp_path: Path) -> None:
    """One byte changed in a stored slice: the drill fails naming the slice, and replays nothing from it."""
    chain, _db = changing_chain(client, mongo_uri, tmp_path)
    storage = chain.backup_options.open_storage()
    damaged = next(s for s in scan_changes(storage, "capture").slices if s.events)
    path = chain.store / str(damaged.data_key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    outcome = pitr_drill(chain, "latest")
    assert outcome.status.value == "fail"
    assert str(damaged.data_key) in outcome.summary
    assert "sha256" in outcome.summary


def test_point_in_time_drill_names_the_documents_a_wrong_slice_restores(
    client: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """A slice rewritten consistently (its checksum updated) with one document's value changed: the comparison with
    the live database fails the drill and names that document."""
    import hashlib
    import json

    import bson
    import zstandard

    chain, db = changing_chain(client, mongo_uri, tmp_path)
    storage = chain.backup_options.open_storage()
    target = [s for s in scan_changes(storage, "capture").slices if s.events][-1]  # no later event covers it
    path = chain.store / str(target.data_key)
    raw = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
    events = bson.decode_all(raw)
    insert = [e for e in events if e["operationType"] == "insert"][-1]
    insert["fullDocument"]["balance"] = -999_999
    stored = zstandard.ZstdCompressor().compress(b"".join(bson.encode(e) for e in events))
    path.write_bytes(stored)
    manifest_path = chain.store / target.key
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = hashlib.sha256(stored).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    outcome = pitr_drill(chain, "latest")
    assert outcome.status.value == "fail", outcome.summary
    assert f"{db}.accounts _id={insert['documentKey']['_id']!r}: differs from the source" in outcome.summary


# --- the commands: run-now, restore --at, backups list, status ------------------------------------------------------


def test_restore_at_from_the_command_line_and_a_broken_chain_in_list_and_status(
    client: Any, mongo_uri: str, tmp_path: Path, env: dict[str, str]
) -> None:
    """`restore --job --at` prints the recovery point and the newest available and restores that second; after a
    captured collection is dropped, capture fails, `backups list` and `status` say the chain is broken and why, and
    `restore --at` a second after the drop refuses with that reason."""
    from tests.conftest import opskeeper, write

    db = f"pitr_{uuid.uuid4().hex[:6]}"
    config = str(write(tmp_path / "jobs.yaml", f"""\
jobs:
  - {{id: nightly, kind: backup, schedule: "@daily", options: {{uri: "{mongo_uri}", databases: [{db}],
      storage: "{tmp_path / 'store'}"}}}}
  - {{id: capture, kind: change_capture, schedule: every 1m, options: {{backup: nightly}}}}
"""))  # fmt: skip
    app = client[db]
    app.notes.insert_many([{"_id": i, "text": "draft"} for i in range(10)])
    for job in ("capture", "nightly"):
        assert opskeeper("run-now", job, "--config", config, env=env).code == 0
    app.notes.update_many({}, {"$set": {"text": "final"}})
    at, want = next_second(client, db), state_of(client, db)
    app.notes.delete_many({})
    assert opskeeper("run-now", "capture", "--config", config, env=env).code == 0
    moment = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = opskeeper("restore", "--config", config, "--job", "nightly", "--at", moment, "--to", mongo_uri,
                     "--ns-from", f"{db}.*", "--ns-to", f"{db}_r.*", env=env)  # fmt: skip
    assert done.code == 0, done.stderr
    assert f"recovery point {moment} (the end of that second)" in done.stdout
    assert "the newest point available is" in done.stdout
    assert state_of(client, f"{db}_r") == want
    listed = opskeeper("backups", "list", "--config", config, env=env).stdout
    assert "point in time (capture): restorable from" in listed
    assert "BROKEN" not in listed
    app.notes.drop()  # the chain cannot follow a dropped collection
    next_second(client, db)
    broken = opskeeper("run-now", "capture", "--config", config, env=env)
    assert broken.code == 2, broken.stdout + broken.stderr
    assert f"{db}.notes was dropped at" in broken.stdout
    listed = opskeeper("backups", "list", "--config", config, env=env).stdout
    assert f"BROKEN after that: {db}.notes was dropped at" in listed
    status = opskeeper("status", "--config", config, env=env).stdout
    assert "point in time (capture): BROKEN since" in status
    later = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    refused = opskeeper("restore", "--config", config, "--job", "nightly", "--at", later, "--to", mongo_uri,
                        "--ns-from", f"{db}.*", "--ns-to", f"{db}_r2.*", env=env)  # fmt: skip
    assert refused.code == 64, refused.stdout + refused.stderr
    assert "inside a gap" in refused.stderr
    assert f"{db}.notes was dropped" in refused.stderr
    assert f"{db}_r2" not in client.list_database_names()


def test_restore_at_usage_errors_name_the_rule(tmp_path: Path, env: dict[str, str]) -> None:
    """--at without a zone, --at beside an archive, --job without --at: one line each naming the rule; exit 64."""
    from tests.conftest import opskeeper, write

    config = str(write(tmp_path / "jobs.yaml", """\
jobs:
  - {id: nightly, kind: backup, schedule: "@daily", options: {storage: var/backups}}
  - {id: capture, kind: change_capture, schedule: every 1m, options: {backup: nightly}}
"""))  # fmt: skip
    uri = "mongodb://127.0.0.1:1/"
    cases = {
        ("--job", "nightly", "--at", "2026-12-03T09:15:00"): "give a UTC offset",
        ("some.archive", "--at", "latest"): "--at picks the archive itself",
        ("--job", "nightly"): "--job goes with --at",
        ("--job", "nightly", "--at", "yesterday"): "not an ISO 8601 time",
    }
    for args, message in cases.items():
        done = opskeeper("restore", "--config", config, *args, "--to", uri, env=env)
        assert done.code == 64, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)


def test_a_capture_job_must_name_a_backup_job(tmp_path: Path) -> None:
    """`backup:` naming no backup job is a validation error at that place, listing the backup jobs there are."""
    from tests.conftest import write
    from worker.registry import OPTIONS
    from worker.schedule import ConfigError, load_config

    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - {id: nightly, kind: backup, schedule: "@daily", options: {storage: var/backups}}
  - {id: capture, kind: change_capture, schedule: every 1m, options: {backup: nighlty}}
""")  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"jobs\[1\] \(capture\)\.options\.backup: no backup job 'nighlty'.*'nightly'"
    ):
        load_config(config, OPTIONS, env={})


def test_a_backlog_is_read_over_several_runs_in_slices_cut_between_cluster_times(
    client: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """With max_events 7 a backlog of 40 changes takes several runs, no slice splits a cluster time, each run says
    how far it got, and the chain restores the newest point exactly."""
    db = f"pitr_{uuid.uuid4().hex[:6]}"
    chain = Chain(mongo_uri, tmp_path, db, max_events=7)
    client[db].log.insert_one({"_id": -1})
    chain.capture()
    chain.backup()
    for i in range(40):
        client[db].log.insert_one({"_id": i})
    want = state_of(client, db)
    runs = [chain.capture() for _ in range(8)]
    assert [r.details["events"] for r in runs[:5]] == [7, 7, 7, 7, 7]
    assert sum(r.details["events"] for r in runs) == 40
    slices = scan_changes(chain.backup_options.open_storage(), "capture").slices
    assert all(a.through <= b.after for a, b in itertools.pairwise(slices))
    chain.restore(client, None, f"{db}_r")
    assert state_of(client, f"{db}_r") == want


def test_slices_no_retained_archive_needs_are_pruned_and_the_rest_kept(
    client: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """Slices that end before the oldest archive's join point go (manifest and events); every slice from that point
    on stays, and the newest point still restores."""
    db = f"pitr_{uuid.uuid4().hex[:6]}"
    chain = Chain(mongo_uri, tmp_path, db)
    chain.capture()
    client[db].a.insert_many([{"_id": i} for i in range(5)])
    old = chain.capture().details["key"]
    chain.backup()
    client[db].a.insert_one({"_id": 99})
    chain.capture()
    want = state_of(client, db)
    client[db].a.insert_one({"_id": 100})
    chain.capture()  # prunes after storing its own slice
    storage = chain.backup_options.open_storage()
    kept = scan_changes(storage, "capture").slices
    assert old not in [s.key for s in kept]
    assert not [o.key for o in storage.objects("capture/") if o.key.endswith(".bson.zst") and o.key.startswith(
        old.removesuffix(".changes.json").split("-")[0])]  # fmt: skip
    [archive] = scan(storage, "nightly").entries
    assert kept[0].after <= (archive.manifest["replay_from"]["t"], archive.manifest["replay_from"]["i"])
    client[db].a.delete_one({"_id": 100})
    next_second(client, db)
    chain.capture()
    chain.restore(client, None, f"{db}_r")
    assert state_of(client, f"{db}_r") == want
