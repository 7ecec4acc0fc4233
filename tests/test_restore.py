"""Restores and restore drills against SecantusDB: round trips, damage caught, faults, safety."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import decode_all
from pymongo import MongoClient

from jobs.backup.archive import ArchiveWriter, Header, Prelude, crc64, iter_documents
from jobs.backup.catalog import list_backups
from jobs.backup.drill import SCRATCH_PREFIX, DrillJob, DrillOptions, scratch_name
from jobs.backup.restore import STAGING_PREFIX, RestoreError, check, ns_mapper, restore
from jobs.backup.source import BackupOptions
from tests.conftest import FIXTURES, ROOT, Harness, opskeeper, write
from worker.job import JobContext, Outcome
from worker.ledger import JobState, SqliteLedger
from worker.schedule import JobSpec
from worker.timespec import parse_schedule

ARCHIVES_DIR = FIXTURES / "mongodump"


@pytest.fixture
def client(mongo_uri: str) -> Iterator[Any]:
    connection: Any = MongoClient(mongo_uri)
    yield connection
    connection.close()


def prefixed(prefix: str) -> Any:
    return lambda db, coll: (f"{prefix}_{db}", coll)


# --- any mongodump archive -----------------------------------------------------------


def test_oplog_archive_restores_with_the_right_counts(client: Any) -> None:
    """dump-w-oplog restores test.foo with 25 documents; the oplog is reported as skipped."""
    prefix = f"r{uuid.uuid4().hex[:6]}"
    with (ARCHIVES_DIR / "dump-w-oplog.archive").open("rb") as stream:
        report = restore(stream, client, prefixed(prefix))
    counts = {n.source: (n.documents, n.skipped) for n in report.namespaces}
    assert counts["test.foo"] == (25, "")
    assert counts[".oplog"] == (0, "oplog entries are not replayed")
    assert counts["admin.system.version"] == (0, "server system collection")
    assert client[f"{prefix}_test"].foo.count_documents({}) == 25
    assert f"{prefix}_admin" not in client.list_database_names()
    client.drop_database(f"{prefix}_test")


def test_old_archive_with_relaxed_metadata_restores(client: Any) -> None:
    """test.bar (mongodump 3.4, relaxed JSON, a decimal index version) restores with its document."""
    prefix = f"r{uuid.uuid4().hex[:6]}"
    with (ARCHIVES_DIR / "test.bar.archive").open("rb") as stream:
        report = restore(stream, client, prefixed(prefix))
    assert {n.source: n.documents for n in report.namespaces}["test.bar"] == 1
    client.drop_database(f"{prefix}_test")


def test_timeseries_archive_is_restored_or_reported_unsupported(client: Any) -> None:
    """A time-series collection restores where the target supports it, else is skipped with the reason."""
    prefix = f"r{uuid.uuid4().hex[:6]}"
    with (ARCHIVES_DIR / "timeseries.archive").open("rb") as stream:
        report = restore(stream, client, prefixed(prefix))
    ts = next(n for n in report.namespaces if n.source == "timeseries_test.foo_ts")
    assert ts.documents == 10 or "not supported by the target" in ts.skipped
    for name in client.list_database_names():
        if name.startswith(prefix):
            client.drop_database(name)


def test_malformed_metadata_is_a_clear_error(client: Any) -> None:
    """bad-index-metadata stops the restore with an error naming test.ixtest."""
    with (ARCHIVES_DIR / "bad-index-metadata.archive").open("rb") as stream, \
            pytest.raises(RestoreError, match=r"^test\.ixtest: metadata is not valid JSON"):  # fmt: skip
        restore(stream, client, prefixed(f"r{uuid.uuid4().hex[:6]}"))


def test_truncated_archive_is_a_clear_error(client: Any) -> None:
    """A cut-short archive is a RestoreError naming the namespace and byte offset."""
    prefix = f"r{uuid.uuid4().hex[:6]}"
    data = (ARCHIVES_DIR / "dump-w-oplog.archive").read_bytes()[:1500]
    with pytest.raises(RestoreError, match=r"archive truncated.* in test\.foo at byte \d+"):
        restore(io.BytesIO(data), client, prefixed(prefix))
    client.drop_database(f"{prefix}_test")


def test_ns_mapper_follows_mongorestore_wildcards() -> None:
    """--ns-from 'app.*' --ns-to 'copy_*.x_*' carries each wildcard over, in order."""
    rename = ns_mapper("app.*", "app_restored.*")
    assert rename("app", "users") == ("app_restored", "users")
    assert rename("other", "users") == ("other", "users")
    assert ns_mapper("*.*", "copy_*.*")("shop", "orders") == ("copy_shop", "orders")
    with pytest.raises(ValueError, match="same number"):
        ns_mapper("a.*", "b.c")


# --- round trip and damage ----------------------------------------------------------------


@pytest.fixture
def backed_up(tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness) -> Any:
    """A backup of the rich dataset (gzip) in a local storage: (prefix, storage path, entry)."""
    prefix, _ = source
    outcome = harness.run(uri=mongo_uri, databases=[f"{prefix}_*"], storage=str(tmp_path / "b"), compression="gzip")
    assert outcome.status.value == "ok", outcome.summary
    [entry] = list_backups(BackupOptions(storage=str(tmp_path / "b")).open_storage(), "nightly")
    return prefix, tmp_path / "b", entry


def decoded(client: Any, db: str, coll: str) -> list[dict[str, Any]]:
    docs = [d for batch in client[db][coll].find_raw_batches({}) for d in decode_all(batch)]
    return sorted(docs, key=lambda d: str(d["_id"]))


def test_round_trip_documents_indexes_and_views_equal_the_source(client: Any, backed_up: Any) -> None:
    """Every restored document equals the source's (decoded, not just counted); indexes and views too."""
    prefix, storage, entry = backed_up
    copy = f"c{uuid.uuid4().hex[:5]}"
    with (storage / entry.key).open("rb") as stream:
        report = restore(stream, client, lambda db, coll: (db.replace(prefix, copy), coll))
    try:
        assert check(client, report.namespaces, entry.manifest) == []
        for n in entry.manifest["namespaces"]:
            db, coll = n["ns"].split(".", 1)
            if n["type"] == "view":
                info = next(iter(client[db.replace(prefix, copy)].list_collections(filter={"name": coll})))
                assert info["type"] == "view"
                continue
            assert decoded(client, db.replace(prefix, copy), coll) == decoded(client, db, coll), n["ns"]
    finally:
        for name in client.list_database_names():
            if name.startswith(copy):
                client.drop_database(name)


@pytest.mark.parametrize("damage", ["changed", "removed", "added", "index"])
def test_check_catches_damage_in_the_restored_copy(client: Any, backed_up: Any, damage: str) -> None:
    """A changed, missing or extra document, or a missing index, fails the check naming the collection."""
    prefix, storage, entry = backed_up
    copy = f"d{uuid.uuid4().hex[:5]}"
    with (storage / entry.key).open("rb") as stream:
        report = restore(stream, client, lambda db, coll: (db.replace(prefix, copy), coll))
    users = client[f"{copy}_shop"].users
    try:
        if damage == "changed":
            users.update_one({"email": "u7@example.com"}, {"$set": {"name": "Mallory"}})
        elif damage == "removed":
            users.delete_one({"email": "u7@example.com"})
        elif damage == "added":
            users.insert_one({"email": "extra@example.com"})
        else:
            users.drop_index("email_1")
        problems = check(client, report.namespaces, entry.manifest)
    finally:
        for name in client.list_database_names():
            if name.startswith(copy):
                client.drop_database(name)
    expected = {
        "changed": "content digest mismatch",
        "removed": "119 documents restored, the backup has 120",
        "added": "121 documents restored, the backup has 120",
        "index": "index email_1 is missing after the restore",
    }[damage]
    assert len(problems) == 1
    assert problems[0].startswith(f"{prefix}_shop.users: ")
    assert expected in problems[0]


# --- the drill job ------------------------------------------------------------------------


def drill(ledger: SqliteLedger, storage: Path, **options: Any) -> Outcome:
    backup = JobSpec(id="nightly", kind="backup", schedule=parse_schedule("@daily"),
                     options=BackupOptions(storage=str(storage), uri=options.pop("uri", None)))  # fmt: skip
    ctx = JobContext(
        job_id="drill", run_id=uuid.uuid4().hex, scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 300,
        state=JobState(ledger, "drill"), cancel=threading.Event(), log=lambda *a, **k: None, jobs={"nightly": backup},
    )  # fmt: skip
    return DrillJob(DrillOptions.model_validate(options)).run(ctx)


def scratch(client: Any) -> list[str]:
    return [n for n in client.list_database_names() if n.startswith(SCRATCH_PREFIX)]


def test_drill_passes_marks_verified_and_leaves_no_scratch(
    client: Any, backed_up: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """A drill of a good backup: OK, a recovery time, the backup marked verified, scratch databases gone."""
    _prefix, storage, entry = backed_up
    ledger = SqliteLedger(tmp_path / "drill.db")
    outcome = drill(ledger, storage, target_uri=mongo_uri)
    assert outcome.status.value == "ok", outcome.summary
    assert outcome.details["documents"] == entry.documents
    assert outcome.details["recovery_s"] > 0
    assert outcome.details["problems"] == []
    assert scratch(client) == []
    [again] = list_backups(BackupOptions(storage=str(storage)).open_storage(), "nightly")
    assert again.verified


def test_drill_of_a_doctored_archive_fails_and_cleans_up(
    client: Any, backed_up: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """An archive changed after its manifest was written fails the drill; nothing is left behind."""
    _prefix, storage, entry = backed_up
    archive = storage / entry.key
    import gzip

    data = bytearray(gzip.decompress(archive.read_bytes()))
    at = data.index(b"User 7")
    data[at : at + 6] = b"User X"  # same length: every frame still parses
    archive.write_bytes(gzip.compress(bytes(data)))
    outcome = drill(SqliteLedger(tmp_path / "d.db"), storage, target_uri=mongo_uri)
    assert outcome.status.value == "fail"
    # A change inside one document's bytes is caught by that namespace's CRC while streaming.
    assert outcome.summary.endswith("_shop.users: CRC mismatch in the archive")
    assert scratch(client) == []


def test_drill_of_a_truncated_archive_fails_clearly(
    client: Any, backed_up: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """A truncated stored archive: FAIL naming the problem, and no scratch database remains."""
    _prefix, storage, entry = backed_up
    archive = storage / entry.key
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    outcome = drill(SqliteLedger(tmp_path / "d.db"), storage, target_uri=mongo_uri)
    assert outcome.status.value == "fail"
    assert outcome.summary.startswith(f"restore of {entry.key} failed: ")
    assert scratch(client) == []


def test_leftover_scratch_from_a_crash_is_removed_next_run(
    client: Any, backed_up: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """Scratch data a crashed drill left behind is dropped by the next drill."""
    _prefix, storage, _entry = backed_up
    client[f"{SCRATCH_PREFIX}shop_20200101000000"].orders.insert_one({"left": "behind"})
    assert drill(SqliteLedger(tmp_path / "d.db"), storage, target_uri=mongo_uri).status.value == "ok"
    assert scratch(client) == []


@pytest.mark.slow
def test_target_down_is_an_error(backed_up: Any, tmp_path: Path) -> None:
    """With the target server unreachable, the drill raises (the runner records ERROR)."""
    from pymongo.errors import ServerSelectionTimeoutError

    from tests.conftest import free_port_closed

    _prefix, storage, _entry = backed_up
    uri = f"mongodb://127.0.0.1:{free_port_closed()}/?serverSelectionTimeoutMS=300"
    with pytest.raises(ServerSelectionTimeoutError):
        drill(SqliteLedger(tmp_path / "d.db"), storage, target_uri=uri)


# --- the restore command -------------------------------------------------------------------


def restore_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", "restore", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)  # fmt: skip


@pytest.mark.slow
def test_restore_refuses_a_database_with_data_and_changes_nothing(
    client: Any, mongo_uri: str, env: dict[str, str], tmp_path: Path
) -> None:
    """Restoring over a database that holds data without --drop refuses, and the data is untouched."""
    target = f"live{uuid.uuid4().hex[:5]}"
    client[target].foo.insert_one({"keep": "me"})
    archive = str(ARCHIVES_DIR / "dump-w-oplog.archive")
    result = restore_cli(env, archive, "--to", mongo_uri, "--ns-from", "test.*", "--ns-to", f"{target}.*")
    assert result.returncode == 64
    assert f"refusing to restore: {target} already holds data" in result.stderr
    assert list(client[target].foo.find({}, {"_id": 0})) == [{"keep": "me"}]
    dry = restore_cli(env, archive, "--to", mongo_uri, "--ns-from", "test.*", "--ns-to", f"{target}.*", "--dry-run")
    assert dry.returncode == 0
    assert f"test.foo -> {target}.foo" in dry.stdout
    assert "needs --drop" in dry.stdout
    no_tty = restore_cli(env, archive, "--to", mongo_uri, "--ns-from", "test.*", "--ns-to", f"{target}.*", "--drop")
    assert no_tty.returncode == 64
    assert "refusing to drop without confirmation" in no_tty.stderr
    assert client[target].foo.count_documents({}) == 1
    client.drop_database(target)


def test_restore_with_drop_and_yes_replaces_and_is_recorded(client: Any, mongo_uri: str, env: dict[str, str]) -> None:
    """--drop --yes replaces the database with the archive's data and records the restore in history."""
    target = f"live{uuid.uuid4().hex[:5]}"
    client[target].foo.insert_one({"old": True})
    archive = str(ARCHIVES_DIR / "dump-w-oplog.archive")
    result = restore_cli(env, archive, "--to", mongo_uri, "--ns-from", "test.*", "--ns-to", f"{target}.*",
                         "--drop", "--yes")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert client[target].foo.count_documents({}) == 25
    assert client[target].foo.count_documents({"old": True}) == 0
    history = json.loads(opskeeper("history", "--json", env=env).stdout)
    assert history[0]["kind"] == "restore"
    assert history[0]["summary"].startswith("restored ")
    client.drop_database(target)


def test_restore_config_with_a_drill_job_validates(tmp_path: Path) -> None:
    """A restore_drill job validates next to its backup job."""
    from worker.registry import OPTIONS
    from worker.schedule import load_config

    config = write(
        tmp_path / "jobs.yaml",
        """\
jobs:
  - {id: nightly, kind: backup, schedule: "@daily", options: {storage: var/backups}}
  - {id: monthly-drill, kind: restore_drill, schedule: "0 5 1 * *", options: {backup_job: nightly, max_age: 26h}}
""",
    )
    assert [j.kind for j in load_config(config, OPTIONS, env={}).jobs] == ["backup", "restore_drill"]


# --- restores that cannot lose data ------------------------------------------------------------


def snapshot(client: Any, db: str) -> dict[str, list[bytes]]:
    """Every collection of `db` with its documents' raw bytes, sorted: equal means byte-identical."""
    return {name: sorted(bytes(d) for batch in client[db][name].find_raw_batches({}) for d in iter_documents(batch))
            for name in sorted(client[db].list_collection_names())}  # fmt: skip


@pytest.fixture
def live(client: Any) -> Iterator[str]:
    """A database that holds the operator's data: 600 documents in two collections."""
    name = f"live{uuid.uuid4().hex[:6]}"
    client[name].foo.insert_many([{"n": i, "who": "operator"} for i in range(500)])
    client[name].bar.insert_many([{"n": i} for i in range(100)])
    yield name
    client.drop_database(name)


def archive_for(target: str, *, cut: bool = False, flip: bool = False, duplicate: bool = False) -> bytes:
    """An archive of target.foo (500) and target.bar (100); cut before bar's data, a bit flipped, or a dup _id."""
    foo = [bson.encode({"_id": i, "n": i, "who": "archive"}) for i in range(500)]
    bar = [bson.encode({"_id": i, "n": i}) for i in range(100)]
    if duplicate:
        foo[1] = bson.encode({"_id": "alice@example.com"})
        foo[2] = bson.encode({"_id": "alice@example.com"})
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    writer.header(Header("8.0.0", "test"), [Prelude(target, "foo", '{"indexes":[]}'), Prelude(target, "bar", "")])
    data = b"".join(foo)
    writer.segment(target, "foo", data)
    writer.end(target, "foo", crc64(data))
    if not cut:
        tail = b"".join(bar)
        writer.segment(target, "bar", tail)
        writer.end(target, "bar", crc64(tail) ^ (1 if flip else 0))
    return out.getvalue()


def staging_left(client: Any, db: str) -> list[str]:
    return [n for n in client[db].list_collection_names() if n.startswith(STAGING_PREFIX)]


@pytest.mark.parametrize("damage", ["cut", "flip", "duplicate"])
def test_restore_drop_yes_of_a_bad_archive_leaves_the_target_byte_identical(
    client: Any, mongo_uri: str, env: dict[str, str], tmp_path: Path, live: str, damage: str
) -> None:
    """--drop --yes with an archive cut on a frame boundary, a CRC mismatch or a duplicate _id changes nothing."""
    before = snapshot(client, live)
    path = tmp_path / "bad.archive"
    path.write_bytes(archive_for(live, cut=damage == "cut", flip=damage == "flip", duplicate=damage == "duplicate"))
    result = restore_cli(env, str(path), "--to", mongo_uri, "--drop", "--yes")
    assert result.returncode == 3, result.stderr
    reason = {
        "cut": f"archive incomplete: no EOF for {live}.bar",
        "flip": f"{live}.bar: CRC mismatch in the archive",
        "duplicate": f"{live}.foo: 1 document(s) in a batch have a duplicate key on index _id_ (values not shown)",
    }
    assert result.stderr.strip().splitlines()[-1].startswith(f"opskeeper: restore failed: {reason[damage]}")
    assert "alice" not in result.stderr + result.stdout
    assert snapshot(client, live) == before
    assert staging_left(client, live) == []


def test_restore_drop_yes_of_a_good_archive_swaps_every_collection_in(
    client: Any, mongo_uri: str, env: dict[str, str], tmp_path: Path, live: str
) -> None:
    """A whole archive replaces the database: its collections swapped in, the database's others dropped."""
    client[live].extra.insert_one({"not": "in the archive"})
    path = tmp_path / "good.archive"
    path.write_bytes(archive_for(live))
    result = restore_cli(env, str(path), "--to", mongo_uri, "--drop", "--yes")
    assert result.returncode == 0, result.stderr
    assert sorted(client[live].list_collection_names()) == ["bar", "foo"]
    assert client[live].foo.count_documents({"who": "archive"}) == 500
    assert client[live].bar.count_documents({}) == 100


def test_restore_checks_the_manifest_before_anything_is_replaced(
    client: Any, backed_up: Any, mongo_uri: str, env: dict[str, str]
) -> None:
    """A manifest whose count or sha256 disagrees with the archive stops the restore; nothing is created."""
    prefix, storage, entry = backed_up
    manifest_path = storage / (entry.key.removesuffix(".archive.gz") + ".manifest.json")
    manifest = json.loads(manifest_path.read_text())
    users = next(n for n in manifest["namespaces"] if n["ns"].endswith("_shop.users"))
    users["documents"] += 1
    manifest_path.write_text(json.dumps(manifest))
    copy = f"c{uuid.uuid4().hex[:6]}"
    result = restore_cli(env, str(storage / entry.key), "--to", mongo_uri, "--ns-from", f"{prefix}_*",
                         "--ns-to", f"{copy}_*")  # fmt: skip
    assert result.returncode == 3
    assert f"{prefix}_shop.users: 120 documents in the archive, the manifest says 121" in result.stderr
    assert not [n for n in client.list_database_names() if n.startswith(copy)
                and any(c for c in client[n].list_collection_names() if not c.startswith(STAGING_PREFIX))]  # fmt: skip
    manifest["sha256"] = "0" * 64
    users["documents"] -= 1
    manifest_path.write_text(json.dumps(manifest))
    result = restore_cli(env, str(storage / entry.key), "--to", mongo_uri, "--ns-from", f"{prefix}_*",
                         "--ns-to", f"{copy}_*")  # fmt: skip
    assert "differs from the manifest's 000000" in result.stderr
    for name in client.list_database_names():
        if name.startswith(copy):
            assert client[name].list_collection_names() == []
            client.drop_database(name)


def test_a_hostile_name_through_restore_is_one_line(mongo_uri: str, env: dict[str, str], tmp_path: Path) -> None:
    """'../' in a database name: one line naming it, the rule and the prelude's offset; exit 2, no traceback."""
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    writer.header(Header("8.0.0", "test"), [Prelude("../x", "y", "")])
    data = out.getvalue()
    path = tmp_path / "names.archive"
    path.write_bytes(data)
    result = restore_cli(env, str(path), "--to", mongo_uri)
    assert result.returncode == 2
    at = 4 + int.from_bytes(data[4:8], "little")  # the prelude follows the magic and the header
    assert result.stderr.strip() == (f"opskeeper: {path}: bad namespace '../x.y': a database name may not contain "
                                     f"'.' '/' at byte {at}")  # fmt: skip


# --- drills side by side -----------------------------------------------------------------------


def test_two_drills_at_once_on_one_server_both_pass(
    client: Any, backed_up: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """Two drills running together each drop only their own scratch databases; both pass."""
    _prefix, storage, _entry = backed_up
    outcomes: list[Outcome] = []

    def one(i: int) -> None:
        outcomes.append(drill(SqliteLedger(tmp_path / f"d{i}.db"), storage, target_uri=mongo_uri))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [o.status.value for o in outcomes] == ["ok", "ok"], [o.summary for o in outcomes]
    assert scratch(client) == []


def test_a_drill_spares_a_fresh_scratch_database_of_another_run(
    client: Any, backed_up: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """Another run's scratch made a minute ago survives; one older than the drill's timeout is swept."""
    _prefix, storage, _entry = backed_up
    now = datetime.now(UTC)
    fresh = scratch_name("shop", f"{now:%Y%m%d%H%M%S}", "abcdef12")
    stale = scratch_name("shop", f"{now - timedelta(hours=3):%Y%m%d%H%M%S}", "abcdef34")
    for name in (fresh, stale):
        client[name].orders.insert_one({"other": "drill"})
    assert drill(SqliteLedger(tmp_path / "d.db"), storage, target_uri=mongo_uri).status.value == "ok"
    assert scratch(client) == [fresh]
    client.drop_database(fresh)


def test_scratch_names_fit_and_keep_long_databases_apart() -> None:
    """Two 60-character database names sharing a prefix get distinct scratch names of at most 63 bytes."""
    a, b = scratch_name("x" * 59 + "a", "20261201000000", "r" * 32), scratch_name("x" * 59 + "b", "20261201000000", "r")
    assert a != b
    assert max(len(a), len(b)) <= 63
    assert a.startswith(f"{SCRATCH_PREFIX}20261201000000_rrrrrrrr_")


def test_a_drill_ignores_a_future_dated_backup_and_says_so(
    client: Any, backed_up: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """A backup dated next year is not drilled (it would pin every drill); the real newest is, with a WARN."""
    _prefix, storage, entry = backed_up
    key = "nightly/21000101T000000.000Z.archive.gz"
    (storage / key).write_bytes((storage / entry.key).read_bytes())
    (storage / "nightly/21000101T000000.000Z.manifest.json").write_text(
        json.dumps({**entry.manifest, "started_at": "2100-01-01T00:00:00+00:00"}))  # fmt: skip
    outcome = drill(SqliteLedger(tmp_path / "d.db"), storage, target_uri=mongo_uri)
    assert outcome.status.value == "warn"
    assert outcome.details["key"] == entry.key
    assert outcome.summary.endswith(f"but {key} is dated in the future (2100-01-01T00:00:00+00:00); not drilled")


@pytest.mark.slow
def test_restore_of_16_mib_documents_keeps_a_few_in_memory(client: Any, mongo_uri: str, tmp_path: Path) -> None:
    """Six 16 MiB documents in one segment restore in a fresh process peaking under 200 MB (a few in flight)."""
    import gzip

    from jobs.backup.archive import TERM, _ns_header
    from tests.conftest import peak_rss_mb

    path = tmp_path / "big.archive.gz"
    crc = None
    with gzip.open(path, "wb", compresslevel=1) as out:
        writer = ArchiveWriter(out)  # type: ignore[arg-type]
        writer.header(Header("8.0.0", "test"), [Prelude("app", "blobs", "")])
        out.write(_ns_header("app", "blobs", eof=False, crc=0))
        for i in range(6):
            doc = bson.encode({"_id": i, "pad": bson.Binary(b"\0" * (16 * 1024 * 1024 - 40))})
            crc = crc64(doc, crc)
            out.write(doc)
        out.write(TERM)
        writer.end("app", "blobs", crc or 0)
    target = f"big{uuid.uuid4().hex[:6]}"
    rss, out_text = peak_rss_mb(f"from pymongo import MongoClient\nfrom jobs.backup.restore import restore\n"
                                f"r = restore(open({str(path)!r}, 'rb'), MongoClient({mongo_uri!r}), "
                                f"lambda d, n: ({target!r}, n))\nprint(r.documents)")  # fmt: skip
    assert out_text.split() == ["6"]
    assert client[target].blobs.count_documents({}) == 6
    assert rss < 200, f"restore peaked at {rss:.0f} MB"
    client.drop_database(target)


def test_drill_of_an_archive_cut_on_a_frame_boundary_fails_naming_what_is_missing(
    client: Any, backed_up: Any, mongo_uri: str, tmp_path: Path
) -> None:
    """Cut right after one namespace's EOF, every frame parses: the drill still FAILs, naming the missing ones."""
    import gzip

    from jobs.backup.archive import ArchiveReader, End

    _prefix, storage, entry = backed_up
    data = gzip.decompress((storage / entry.key).read_bytes())
    reader = ArchiveReader(io.BytesIO(data))
    reader.read_prelude()
    cut = next(reader.offset for event in reader.events() if isinstance(event, End))
    (storage / entry.key).write_bytes(gzip.compress(data[:cut]))
    outcome = drill(SqliteLedger(tmp_path / "d.db"), storage, target_uri=mongo_uri)
    assert outcome.status.value == "fail"
    assert f"restore of {entry.key} failed: archive incomplete: no EOF for " in outcome.summary
    assert scratch(client) == []


# --- restoring in parallel ----------------------------------------------------------------


def interleaved_archive(
    db: str, names: tuple[str, ...], documents: int, run: int
) -> tuple[bytes, dict[str, list[bytes]]]:
    """An archive laid out as mongodump's: `names` in interleaved segments of `run` documents, each with an index."""
    docs = {n: [bson.encode({"_id": i, "n": i, "coll": n, "pad": "x" * (i % 300)}) for i in range(documents)]
            for n in names}  # fmt: skip
    meta = json.dumps({"indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"},
                                   {"v": 2, "key": {"n": -1}, "name": "n_-1"}]})  # fmt: skip
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    writer.header(Header("8.0.0", "test", concurrent_collections=4), [Prelude(db, n, meta) for n in names])
    crc: dict[str, int | None] = dict.fromkeys(names)
    for start in range(0, documents, run):
        for name in names:
            data = b"".join(docs[name][start : start + run])
            writer.segment(db, name, data)
            crc[name] = crc64(data, crc[name])
    for name in names:
        writer.end(db, name, crc[name] or 0)
    return out.getvalue(), docs


@pytest.mark.parametrize("parallel", [1, 4])
def test_a_parallel_restore_of_interleaved_collections_equals_the_archive(client: Any, parallel: int) -> None:
    """Four interleaved collections restore, whatever the workers, to exactly the archive's documents and indexes."""
    names = ("a", "b", "c", "d")
    data, docs = interleaved_archive("src", names, 6_000, 1_500)  # each has a full batch and a rest
    target = f"par{uuid.uuid4().hex[:6]}"
    report = restore(io.BytesIO(data), client, lambda db, coll: (target, coll), parallel=parallel)
    assert report.documents == 24_000
    assert snapshot(client, target) == {n: sorted(docs[n]) for n in names}
    for name in names:
        assert sorted(ix["name"] for ix in client[target][name].list_indexes()) == ["_id_", "n_-1"]
    assert report.index_s > 0
    client.drop_database(target)


def test_parallel_below_one_is_refused(client: Any) -> None:
    """restore(parallel=0) names the rule; the command line refuses --parallel 0 with its usage."""
    with pytest.raises(ValueError, match="parallel must be at least 1, not 0"):
        restore(io.BytesIO(archive_for("x")), client, parallel=0)
    done = subprocess.run([sys.executable, "-m", "worker", "restore", "a.archive", "--to", "mongodb://h/",
                           "--parallel", "0"], cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 64
    assert "--parallel: '0' is not a whole number from 1 to 64" in done.stderr


def test_an_index_the_data_breaks_fails_the_restore_and_leaves_the_target(client: Any, live: str) -> None:
    """A unique index the documents violate, built in the pool beside the load, stops everything before a swap."""
    before = snapshot(client, live)
    foo = [bson.encode({"_id": i, "email": "same@example.com"}) for i in range(3)]
    meta = json.dumps({"indexes": [{"v": 2, "key": {"email": 1}, "name": "email_1", "unique": True}]})
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    writer.header(Header("8.0.0", "test"), [Prelude(live, "foo", meta), Prelude(live, "bar", "")])
    writer.segment(live, "foo", b"".join(foo))
    writer.end(live, "foo", crc64(b"".join(foo)))
    writer.segment(live, "bar", b"")
    writer.end(live, "bar", 0)
    with pytest.raises(RestoreError, match=rf"{live}.foo: cannot build its indexes"):
        restore(io.BytesIO(out.getvalue()), client, replace=frozenset({live}))
    assert snapshot(client, live) == before
    assert staging_left(client, live) == []


def test_something_writing_into_a_staging_collection_stops_the_swap(client: Any, live: str) -> None:
    """A document that did not come from the archive, found by the server's count before the swap, is a failure."""
    before = snapshot(client, live)
    written: list[str] = []

    def intrude(_stored: int, _sent: int) -> None:
        for name in staging_left(client, live):
            if not written and name.endswith(".bar"):
                client[live][name].insert_one({"_id": "intruder"})
                written.append(name)

    with pytest.raises(RestoreError, match=r"holds 101 documents after the load, 100 were restored: something else"):
        restore(io.BytesIO(archive_for(live)), client, progress=intrude, replace=frozenset({live}), parallel=1)
    assert written
    assert snapshot(client, live) == before
    assert staging_left(client, live) == []


@pytest.mark.slow
def test_a_parallel_restore_killed_mid_way_leaves_the_target_as_it_was(
    client: Any, mongo_uri: str, env: dict[str, str], tmp_path: Path, live: str
) -> None:
    """kill -9 of `restore --drop --yes --parallel 4` while it loads: the operator's collections are as they were,
    and the next restore replaces them, leaving no staging behind."""
    before = snapshot(client, live)
    data, docs = interleaved_archive(live, ("foo", "bar"), 12_000, 2_000)
    path = tmp_path / "big.archive"
    path.write_bytes(data)
    argv = [sys.executable, "-m", "worker", "restore", str(path), "--to", mongo_uri, "--drop", "--yes",
            "--parallel", "4"]  # fmt: skip
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        # Wait for the event itself: documents in a staging collection, i.e. the load under way.
        while not any(client[live][n].estimated_document_count() for n in staging_left(client, live)):
            assert process.poll() is None, "the restore ended before it could be killed"
            assert time.monotonic() < deadline
        process.kill()
    finally:
        process.wait(30)
    left = staging_left(client, live)
    assert left, "killed before the swap, staging collections are what it leaves"
    assert {n: d for n, d in snapshot(client, live).items() if n not in left} == before
    result = restore_cli(env, str(path), "--to", mongo_uri, "--drop", "--yes")
    assert result.returncode == 0, result.stderr
    assert snapshot(client, live) == {n: sorted(docs[n]) for n in ("bar", "foo")}
