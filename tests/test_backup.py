"""Backups end to end: SecantusDB (a real MongoDB wire-protocol server) to disk and to moto's S3."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from pymongo import MongoClient

from jobs.backup.catalog import list_backups, verify
from jobs.backup.retention import BackupInfo, Retention, plan_retention
from jobs.backup.source import BackupOptions
from tests.conftest import AWS_ENV, Harness, opskeeper, write
from worker.storage.s3 import S3Storage


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_backup_to_disk_verifies_and_matches_the_source(
    compression: str, tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness
) -> None:
    """Every collection, view, index and BSON type is dumped; verify passes; counts equal the source."""
    prefix, counts = source
    outcome = harness.run(uri=mongo_uri, databases=[f"{prefix}_*"], storage=str(tmp_path / "backups"),
                          compression=compression)  # fmt: skip
    assert outcome.status.value == "ok", outcome.summary
    [entry] = list_backups(BackupOptions(storage=str(tmp_path / "backups")).open_storage(), "nightly")
    manifest = entry.manifest
    assert {n["ns"]: n["documents"] for n in manifest["namespaces"]} == counts
    assert manifest["consistent_snapshot"] is True  # SecantusDB runs as a replica set
    types = {n["ns"].split(".", 1)[1]: n["type"] for n in manifest["namespaces"]}
    assert types["paid_orders"] == "view"
    users = next(n for n in manifest["namespaces"] if n["ns"].endswith(".users"))
    assert any(ix.get("unique") for ix in users["indexes"])
    sessions = next(n for n in manifest["namespaces"] if n["ns"].endswith(".sessions"))
    assert any(ix.get("expireAfterSeconds") == 3600 for ix in sessions["indexes"])
    archive = tmp_path / "backups" / entry.key
    assert archive.name.endswith({"gzip": ".archive.gz", "zstd": ".archive.zst", "none": ".archive"}[compression])
    with archive.open("rb") as stream:
        report = verify(stream, manifest)
    assert report.ok, report.problems
    assert {n["ns"]: n["documents"] for n in report.namespaces if n["documents"]} == {
        ns: c for ns, c in counts.items() if c
    }
    assert not list((tmp_path / "backups").rglob("*.partial"))


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_backup_to_s3_and_cli_list_and_verify(
    compression: str, tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], s3_endpoint: str,
    bucket: str, env: dict[str, str],
) -> None:  # fmt: skip
    """A backup to S3 through `run-now`, encrypted at rest; `backups list` and `backups verify KEY` agree."""
    prefix, counts = source
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: nightly
    kind: backup
    schedule: "0 3 * * *"
    options:
      uri: "{mongo_uri}"
      databases: ["{prefix}_*"]
      storage: s3://{bucket}/mongo
      endpoint_url: {s3_endpoint}
      compression: {compression}
      sse: AES256
""")  # fmt: skip
    run_env = {**env, **AWS_ENV}
    result = opskeeper("run-now", "nightly", "--config", str(config), "--json", env=run_env)
    assert result.code == 0, result.stdout + result.stderr
    listed = json.loads(opskeeper("backups", "list", "--config", str(config), "--json", env=run_env).stdout)
    assert len(listed) == 1
    assert (listed[0]["job_id"], listed[0]["compression"]) == ("nightly", compression)
    assert listed[0]["documents"] == sum(counts.values())
    assert set(listed[0]) == {"key", "job_id", "created_at", "size_bytes", "compression", "collections", "documents",
                              "verified", "point_in_time"}  # fmt: skip
    assert listed[0]["point_in_time"] == []  # no change_capture job follows it
    checked = opskeeper("backups", "verify", listed[0]["key"], "--config", str(config), "--json", env=run_env)
    assert checked.code == 0, checked.stdout
    assert json.loads(checked.stdout)["ok"] is True
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("mongo/nightly/") for k in keys)
    assert s3.head_object(Bucket=bucket, Key="mongo/" + listed[0]["key"])["ServerSideEncryption"] == "AES256"
    suffix = {"zstd": ".archive.zst", "gzip": ".archive.gz", "none": ".archive"}[compression]
    assert sorted(k.endswith(suffix) for k in keys) == [False, True]
    assert sum(k.endswith(".manifest.json") for k in keys) == 1


def test_s3_going_away_mid_upload_leaves_nothing_and_the_next_run_cleans_up(
    tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """S3 stops answering mid-backup: the run errors, no complete-looking object, old backups intact."""
    from moto.server import ThreadedMotoServer

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="backups-fault")
    prefix, _ = source
    options = {"uri": mongo_uri, "databases": [f"{prefix}_*"], "storage": "s3://backups-fault/db",
               "endpoint_url": endpoint, "compression": "gzip"}  # fmt: skip
    assert harness.run(**options).status.value == "ok"  # a good backup to keep

    def pull_the_plug(event: str, fields: dict[str, Any]) -> None:
        if event == "backup.collection":
            server.stop()

    harness.on_log = pull_the_plug
    with pytest.raises(Exception, match=r"(?i)connect|endpoint|connection"):
        harness.run(**options)
    harness.on_log = None
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        storage = S3Storage("s3://backups-fault/db", endpoint_url=endpoint)
        backups = list_backups(storage, "nightly")
        assert len(backups) == 1  # the earlier backup, intact
        archives = [o.key for o in storage.objects("nightly/") if ".archive" in o.key]
        assert archives == [backups[0].key]  # no object for the failed run
        assert harness.run(**options).status.value == "ok"
        assert storage.pending_uploads() == []  # the abandoned multipart upload was aborted
        assert len(list_backups(storage, "nightly")) == 2
    finally:
        server.stop()


@pytest.mark.slow
def test_unreachable_mongodb_is_a_clear_error_without_the_password(tmp_path: Path, env: dict[str, str]) -> None:
    """MongoDB down: run-now exits 3 and the run's summary is one sentence, "cannot reach HOST: reason (…)", with no
    `<TopologyDescription …>`; the URI's own serverSelectionTimeoutMS is honoured (0.3 s, not our 10 s); the
    password is in no output."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: nightly
    kind: backup
    schedule: "@daily"
    options:
      uri: "mongodb://backup:Pa55-w0rd-XYZ@127.0.0.1:1/?serverSelectionTimeoutMS=300"
      storage: var/never
""")  # fmt: skip
    result = opskeeper("run-now", "nightly", "--config", str(config), "--json", env=env)
    assert result.code == 3
    out = json.loads(result.stdout)
    assert out["summary"] == "cannot reach 127.0.0.1:1: Connection refused (no server answered within 0.3 s)"
    assert out["details"]["error_type"] == "ServerSelectionTimeoutError"
    assert "Pa55-w0rd-XYZ" not in result.stdout + result.stderr
    text = opskeeper("run-now", "nightly", "--config", str(config), env=env)
    assert text.stdout.strip() == f"ERROR: nightly: {out['summary']}"
    assert "Topology" not in text.stdout + text.stderr


def test_password_in_uri_reaches_no_log_manifest_or_argv(
    tmp_path: Path, env: dict[str, str], mongo_uri: str, source: tuple[str, dict[str, int]]
) -> None:
    """With an authenticated URI, the password appears in no log line and no manifest."""
    prefix, _ = source
    admin: Any = MongoClient(mongo_uri)
    user, password = f"bk{uuid.uuid4().hex[:6]}", "Sup3r-Secret-Backup-Pw"
    admin.admin.command("createUser", user, pwd=password, roles=["root"])
    uri = mongo_uri.replace("mongodb://", f"mongodb://{user}:{password}@").rstrip("/") + "/?authSource=admin"
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: nightly
    kind: backup
    schedule: "@daily"
    options:
      databases: ["{prefix}_*"]
      storage: {tmp_path / "b"}
""")  # fmt: skip
    result = opskeeper("run-now", "nightly", "--config", str(config), "--json", env={**env, "MONGODB_URI": uri})
    assert result.code == 0, result.stdout + result.stderr
    assert password not in result.stdout + result.stderr
    manifests = list((tmp_path / "b").rglob("*.manifest.json"))
    assert len(manifests) == 1
    text = manifests[0].read_text()
    assert password not in text
    assert re.search(rf'"source": "mongodb://{user}:\*\*\*@', text)
    admin.admin.command("dropUser", user)
    admin.close()


def test_retention_over_a_year_of_daily_backups() -> None:
    """A year of daily backups keeps 7 dailies, 4 weeklies, 6 monthlies, 1 yearly — and the drilled one."""
    start = dt.datetime(2026, 1, 1, 3, 0, tzinfo=dt.UTC)
    backups = [BackupInfo(f"b{i:03d}", start + dt.timedelta(days=i)) for i in range(365)]
    backups[40] = BackupInfo("b040", backups[40].created_at, verified=True)  # the newest that passed a drill
    now = backups[-1].created_at
    keep, delete = plan_retention(backups, Retention(keep_last=1, daily=7, weekly=4, monthly=6, yearly=1), now)
    kept = {b.key for b in keep}
    assert {f"b{i:03d}" for i in range(358, 365)} <= kept  # the last 7 days
    assert "b040" in kept
    assert len(keep) + len(delete) == 365
    newest = backups[-1].created_at
    weeks = {b.created_at.isocalendar()[:2] for b in keep if newest - b.created_at < dt.timedelta(days=28)}
    assert len(weeks) >= 4
    months = {(b.created_at.year, b.created_at.month) for b in keep}
    assert len(months) >= 6
    assert len(keep) <= 1 + 7 + 4 + 6 + 1 + 1
    assert all(b.key not in kept for b in delete)


def test_retention_never_deletes_the_newest_even_with_zero_counts() -> None:
    """Counts of zero still keep the newest backup."""
    backups = [BackupInfo(f"b{i}", dt.datetime(2026, 1, 1 + i, tzinfo=dt.UTC)) for i in range(5)]
    zero = Retention(keep_last=0, daily=0, weekly=0, monthly=0, yearly=0)
    keep, delete = plan_retention(backups, zero, dt.datetime(2026, 1, 6, tzinfo=dt.UTC))
    assert [b.key for b in keep] == ["b4"]
    assert len(delete) == 4


def last_only(n: int) -> dict[str, int]:
    """A retention that keeps the newest `n` backups and no period rules."""
    return {"keep_last": n, "daily": 0, "weekly": 0, "monthly": 0, "yearly": 0}


def test_pruning_after_backups_keeps_keep_last(
    tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness
) -> None:
    """With keep_last 2 and no period rules, the third backup prunes the first."""
    prefix, _ = source
    options = {"uri": mongo_uri, "databases": [f"{prefix}_*"], "storage": str(tmp_path / "b"),
               "retention": last_only(2)}  # fmt: skip
    first = harness.run(**options)
    harness.run(**options)
    third = harness.run(**options)
    assert third.details["pruned"] == [first.details["key"]]
    remaining = list_backups(BackupOptions(storage=str(tmp_path / "b")).open_storage(), "nightly")
    assert [e.key for e in remaining][-1] != first.details["key"]
    assert len(remaining) == 2
    assert not (tmp_path / "b" / first.details["key"]).exists()


@pytest.fixture
def mongodump_on_path(tmp_path: Path) -> tuple[Path, Path]:
    """A bin folder whose `mongodump` is the strict stand-in; and the log of its calls."""
    import stat
    import sys

    from tests.conftest import ROOT

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "mongodump"
    stand_in.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                        "from tests.fixtures.mongodump_standin import main\nmain()\n")  # fmt: skip
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    return bin_dir, tmp_path / "mongodump-calls.jsonl"


@pytest.mark.slow
def test_mongodump_engine_runs_one_real_command_line_per_database_with_the_password_off_argv(
    tmp_path: Path, env: dict[str, str], mongo_uri: str, source: tuple[str, dict[str, int]],
    mongodump_on_path: tuple[Path, Path],
) -> None:  # fmt: skip
    """engine: mongodump: --db per database (no --nsInclude), URI in a 0600 --config, a minimal environment.

    The stand-in refuses any option the real mongodump lacks; its archive is re-emitted into ours.
    """
    bin_dir, calls = mongodump_on_path
    prefix, counts = source
    admin: Any = MongoClient(mongo_uri)
    user, password = f"md{uuid.uuid4().hex[:6]}", "Tools-Secret-Pw-42"
    admin.admin.command("createUser", user, pwd=password, roles=["root"])
    uri = mongo_uri.replace("mongodb://", f"mongodb://{user}:{password}@").rstrip("/") + "/?authSource=admin"
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: tools-backup
    kind: backup
    schedule: "@daily"
    options: {{engine: mongodump, compression: gzip, databases: ["{prefix}_*"], storage: "{tmp_path / "b"}",
               exclude_collections: ["{prefix}_shop.sessions"], pass_env: [MONGODUMP_STANDIN_LOG]}}
""")  # fmt: skip
    run_env = {**env, "MONGODB_URI": uri, "PATH": f"{bin_dir}:{env['PATH']}", "MONGODUMP_STANDIN_LOG": str(calls),
               "AWS_SECRET_ACCESS_KEY": "aws-secret-never-passed"}  # fmt: skip
    result = opskeeper("run-now", "tools-backup", "--config", str(config), "--json", env=run_env)
    assert result.code == 0, result.stdout + result.stderr
    made = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [c["argv"][3:] for c in made] == [
        ["--readPreference=secondaryPreferred", f"--db={prefix}_crm"],
        ["--readPreference=secondaryPreferred", f"--db={prefix}_shop", "--excludeCollection=sessions"],
    ]
    for call in made:
        assert password not in " ".join(call["argv"])
        assert call["config_mode"] == 0o600
        assert call["config"] == {"uri": uri}
        assert "AWS_SECRET_ACCESS_KEY" not in call["env"]
        assert "MONGODB_URI" not in call["env"]
    [manifest_path] = (tmp_path / "b").rglob("*.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert (manifest["engine"], manifest["consistent_snapshot"]) == ("mongodump", False)
    expected = {ns: n for ns, n in counts.items() if not ns.endswith(".sessions")}
    assert {n["ns"]: n["documents"] for n in manifest["namespaces"]} == expected
    [stored] = (tmp_path / "b").rglob("*.archive.gz")
    with stored.open("rb") as stream:
        assert verify(stream, manifest).ok
    assert password not in result.stdout + result.stderr + manifest_path.read_text()
    assert not list(Path(tempfile.gettempdir()).glob(f"opskeeper-mongodump-{os.getpid()}-*"))
    admin.admin.command("dropUser", user)
    admin.close()


def test_mongodump_errors_are_its_own_words_not_a_truncated_archive(
    tmp_path: Path, env: dict[str, str], mongo_uri: str, source: tuple[str, dict[str, int]],
    mongodump_on_path: tuple[Path, Path],
) -> None:  # fmt: skip
    """When mongodump fails (here: a server it cannot reach), its exit code and stderr are the error."""
    bin_dir, _ = mongodump_on_path
    prefix, _ = source
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: tools-backup
    kind: backup
    schedule: "@daily"
    options: {{engine: mongodump, uri: "{mongo_uri}", databases: ["{prefix}_crm"], storage: "{tmp_path / "b"}"}}
""")  # fmt: skip
    (bin_dir / "mongodump").write_text("#!/bin/sh\necho 'error parsing command line options: unknown option \"x\"' >&2"
                                       "\nexit 1\n")  # fmt: skip
    result = opskeeper("run-now", "tools-backup", "--config", str(config), "--json", env={
        **env, "PATH": f"{bin_dir}:{env['PATH']}"})  # fmt: skip
    assert result.code == 3
    summary = json.loads(result.stdout)["summary"]
    assert 'mongodump exited 1: error parsing command line options: unknown option "x"' in summary
    assert "truncated" not in summary
    assert not list((tmp_path / "b").rglob("*.archive*"))


def test_a_crashed_runs_mongodump_config_is_swept(tmp_path: Path) -> None:
    """A config folder left by a dead process (kill -9) is removed; a live process's is kept."""
    from jobs.backup.mongodump import MONGODUMP_DIR, sweep_mongodump_configs

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{MONGODUMP_DIR}{dead.pid}-abc"
    live = tmp_path / f"{MONGODUMP_DIR}{os.getppid()}-def"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "mongodump.yaml").write_text("uri: mongodb://u:secret@h/")
    assert sweep_mongodump_configs(str(tmp_path)) == [str(stale)]
    assert live.exists()


def test_mongodump_engine_without_the_binary_is_a_clear_error(
    tmp_path: Path, env: dict[str, str], mongo_uri: str, source: tuple[str, dict[str, int]]
) -> None:
    """engine: mongodump with no mongodump on PATH: an error saying so, and no backup left behind."""
    prefix, _ = source
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: tools-backup
    kind: backup
    schedule: "@daily"
    options: {{engine: mongodump, uri: "{mongo_uri}", databases: ["{prefix}_*"], storage: "{tmp_path / "b"}"}}
""")  # fmt: skip
    result = opskeeper(
        "run-now", "tools-backup", "--config", str(config), "--json", env={**env, "PATH": "/usr/bin:/bin"}
    )
    assert result.code == 3
    assert "no mongodump is installed here; use engine: native" in result.stdout
    assert not list((tmp_path / "b").rglob("*.archive*"))


def test_standalone_server_without_snapshots_still_backs_up(tmp_path: Path, harness: Harness) -> None:
    """A standalone server refuses snapshot reads: the backup goes on without one and says so."""
    from secantus import SecantusDBServer

    with SecantusDBServer(storage_path=str(tmp_path / "db"), replica_set_name=None) as server:
        client: Any = MongoClient(server.uri)
        client.app.items.insert_many([{"n": i} for i in range(40)])
        client.app.more.insert_many([{"n": i} for i in range(3)])
        outcome = harness.run(uri=server.uri, storage=str(tmp_path / "b"))
        client.close()
    assert outcome.status.value == "ok", outcome.summary
    assert outcome.details["consistent_snapshot"] is False
    assert outcome.details["documents"] == 43


# --- retention and the catalog under odd storage ---------------------------------------------


def copy_backup(storage: Path, entry: Any, job: str, created_at: dt.datetime) -> str:
    """A copy of a backup as if made at `created_at` under `job`'s folder (a skewed clock, a copied folder)."""
    stamp_ = f"{created_at:%Y%m%dT%H%M%S}.000Z"
    key = f"{job}/{stamp_}.archive.gz"
    (storage / job).mkdir(exist_ok=True)
    (storage / key).write_bytes((storage / entry.key).read_bytes())
    manifest = {**entry.manifest, "started_at": created_at.isoformat(), "key": key, "job_id": job}
    (storage / f"{job}/{stamp_}.manifest.json").write_text(json.dumps(manifest))
    return key


def test_a_future_dated_backup_never_makes_prune_delete_todays(
    tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness
) -> None:
    """keep_last 1 and a backup dated next year: each run keeps its own backup; the odd one is named (WARN)."""
    prefix, _ = source
    options = {"uri": mongo_uri, "databases": [f"{prefix}_*"], "storage": str(tmp_path / "b"),
               "retention": last_only(1)}  # fmt: skip
    first = harness.run(**options)
    [entry] = list_backups(BackupOptions(storage=str(tmp_path / "b")).open_storage(), "nightly")
    future = copy_backup(tmp_path / "b", entry, "nightly", dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
    second = harness.run(**options)
    assert second.status.value == "warn"
    assert "1 backup(s) dated in the future, kept and not counted: " + future in second.summary
    assert second.details["pruned"] == [first.details["key"]]
    keys = {e.key for e in list_backups(BackupOptions(storage=str(tmp_path / "b")).open_storage(), "nightly")}
    assert keys == {second.details["key"], future}


def test_prune_takes_keys_from_the_listing_never_from_a_manifest(
    tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness
) -> None:
    """A manifest whose `key` points into another job's folder cannot make pruning delete that job's backup."""
    prefix, _ = source
    storage = tmp_path / "b"
    base = {"uri": mongo_uri, "databases": [f"{prefix}_*"], "storage": str(storage)}
    harness.job_id = "other"
    victim = harness.run(**base).details["key"]
    harness.job_id = "nightly"
    harness.run(**base)
    [mine] = list_backups(BackupOptions(storage=str(storage)).open_storage(), "nightly")
    manifest_path = storage / mine.key.replace(".archive.gz", ".manifest.json")
    manifest_path.write_text(json.dumps({**mine.manifest, "key": victim}))
    copy_backup(storage, mine, "nightly", dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
    harness.run(**base, retention=last_only(1))
    assert (storage / victim).is_file()
    assert [e.key for e in list_backups(BackupOptions(storage=str(storage)).open_storage(), "other")] == [victim]


def test_a_corrupt_manifest_is_skipped_and_reported_everywhere(
    tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness, env: dict[str, str]
) -> None:
    """One garbage manifest: list shows the rest with a warning naming it, backups still run and prune (WARN)."""
    prefix, _ = source
    storage = tmp_path / "b"
    options = {"uri": mongo_uri, "databases": [f"{prefix}_*"], "storage": str(storage)}
    good = harness.run(**options).details["key"]
    (storage / "nightly" / "20260101T000000.000Z.archive.gz").write_bytes(b"\x1f\x8b")
    (storage / "nightly" / "20260101T000000.000Z.manifest.json").write_text('{"format": "opskeeper-backup/1", "ke')
    outcome = harness.run(**options)
    assert outcome.status.value == "warn"
    assert "nightly/20260101T000000.000Z.manifest.json: unreadable manifest, skipped (" in outcome.summary
    config = write(tmp_path / "jobs.yaml", f"jobs:\n  - id: nightly\n    kind: backup\n    schedule: '@daily'\n"
                                           f"    options: {{storage: {storage}, uri: {mongo_uri}}}\n")  # fmt: skip
    listing = opskeeper("backups", "list", "--json", "--config", str(config), env=env)
    assert listing.code == 0
    assert good in {e["key"] for e in json.loads(listing.stdout)}
    assert "warning: nightly/20260101T000000.000Z.manifest.json: unreadable manifest, skipped" in listing.stderr


def test_an_archive_whose_manifest_failed_is_removed_then_or_next_run(
    tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """ENOSPC writing the manifest: the run fails and its archive goes; an older orphan goes at the next prune."""
    from worker.storage.local import LocalStorage

    prefix, _ = source
    storage = tmp_path / "b"
    options = {"uri": mongo_uri, "databases": [f"{prefix}_*"], "storage": str(storage)}
    real_put = LocalStorage.put

    def disk_full(self: LocalStorage, key: str, data: bytes) -> None:
        if key.endswith(".manifest.json"):
            raise OSError(28, "No space left on device")
        real_put(self, key, data)

    monkeypatch.setattr(LocalStorage, "put", disk_full)
    with pytest.raises(OSError, match="No space left"):
        harness.run(**options)
    assert [p.name for p in (storage / "nightly").iterdir()] == []
    monkeypatch.setattr(LocalStorage, "put", real_put)
    orphan = storage / "nightly" / "20260101T000000.000Z.archive.gz"
    orphan.write_bytes(b"left by a crash between archive and manifest")
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).timestamp()
    import os

    os.utime(orphan, (old, old))
    fresh = storage / "nightly" / "20260102T000000.000Z.archive.gz"  # a run that may be writing its manifest now
    fresh.write_bytes(b"")
    harness.run(**options)
    assert not orphan.exists()
    assert fresh.exists()
    reason = "an archive without a manifest (a failed run's)"
    assert (
        "backup.orphan_removed",
        {"key": "nightly/20260101T000000.000Z.archive.gz", "reason": reason},
    ) in harness.logged


# --- S3 at size ---------------------------------------------------------------------------------


def test_part_sizes_let_10000_parts_reach_s3s_object_limit() -> None:
    """Without an estimate, parts start at 8 MiB and grow so 10,000 of them pass 5 TiB, each at most 5 GiB."""
    from worker.storage.s3 import MAX_PART, MAX_PARTS, MIN_PART, part_size

    sizes, done = [], 0
    for n in range(MAX_PARTS):
        sizes.append(part_size(None, n, done))
        done += sizes[-1]
    assert sizes[0] == MIN_PART
    assert sizes == sorted(sizes)
    assert max(sizes) <= MAX_PART
    assert done >= 5 * 1024**4


def test_part_sizes_follow_the_estimate_and_grow_when_it_proves_low() -> None:
    """A 100 GB estimate gives one uniform part size that fits; past the estimate parts grow again."""
    from worker.storage.s3 import MAX_PARTS, part_size

    estimate = 100 * 10**9
    first = part_size(estimate, 0, 0)
    assert first * (MAX_PARTS - 1) >= estimate * 1.25
    assert part_size(estimate, 5000, 5000 * first) == first
    assert part_size(estimate, 9000, 2 * estimate) > first


def test_a_multipart_upload_to_s3_sends_parts_from_the_pool_and_commits_in_order(bucket: str, s3_endpoint: str) -> None:
    """30 MiB through S3Upload: four parts, bytes identical, none pending; a small one never asks for dbStats."""
    import hashlib

    storage = S3Storage(f"s3://{bucket}/db", endpoint_url=s3_endpoint)
    data = hashlib.shake_256(b"opskeeper").digest(30 * 1024 * 1024)
    asked: list[int] = []
    upload = storage.upload("job/big.archive", estimate=lambda: asked.append(1) or len(data))
    for start in range(0, len(data), 1_000_003):
        upload.write(data[start : start + 1_000_003])
    upload.commit()
    assert upload.part_sizes == [8 * 1024 * 1024] * 3 + [6 * 1024 * 1024]
    assert asked == []
    with storage.open("job/big.archive") as stream:
        assert stream.read() == data
    assert storage.pending_uploads() == []


# --- the fast gzip and the cheaper digest ---------------------------------------------------------


def test_the_gzip_archive_is_plain_gzip_for_the_standard_library(
    tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness
) -> None:
    """The default (ISA-L) gzip archive decompresses with stdlib gzip to exactly the archive our reader checks."""
    import gzip

    from jobs.backup.catalog import GZIP_ENGINE

    prefix, _ = source
    outcome = harness.run(uri=mongo_uri, databases=[f"{prefix}_*"], storage=str(tmp_path / "b"))
    stored = (tmp_path / "b" / outcome.details["key"]).read_bytes()
    raw = gzip.decompress(stored)
    assert len(raw) == outcome.details["archive_bytes"]
    assert raw[:4] == bytes.fromhex("6de29981")
    assert GZIP_ENGINE == "isa-l"  # the wheel is installed here; elsewhere stdlib zlib writes the same format


def test_format_1_manifests_with_blake2b_digests_still_verify(
    tmp_path: Path, mongo_uri: str, source: tuple[str, dict[str, int]], harness: Harness
) -> None:
    """A manifest of format /1 is read with BLAKE2b-128 digests; its figures pass, and the algorithm matters."""
    import hashlib

    from jobs.backup.archive import ArchiveReader, Segment, iter_documents
    from jobs.backup.catalog import HashingReader, decompressed

    prefix, _ = source
    harness.run(uri=mongo_uri, databases=[f"{prefix}_*"], storage=str(tmp_path / "b"))
    [entry] = list_backups(BackupOptions(storage=str(tmp_path / "b")).open_storage(), "nightly")
    assert (entry.manifest["format"], entry.manifest["digest_algorithm"]) == ("opskeeper-backup/2", "xxh3-128")
    archive = tmp_path / "b" / entry.key
    blake: dict[str, int] = {}
    with archive.open("rb") as stream:
        reader = ArchiveReader(decompressed(HashingReader(stream)))
        for event in reader.events():
            if isinstance(event, Segment):
                for doc in iter_documents(event.data):
                    digest = int.from_bytes(hashlib.blake2b(doc, digest_size=16).digest(), "big")
                    blake[event.ns] = (blake.get(event.ns, 0) + digest) % (1 << 128)
    old = {k: v for k, v in entry.manifest.items() if k != "digest_algorithm"} | {"format": "opskeeper-backup/1"}
    old["namespaces"] = [{**n, "digest": f"{blake.get(n['data_ns'], 0):032x}"} for n in entry.manifest["namespaces"]]
    with archive.open("rb") as stream:
        assert verify(stream, old).ok
    with archive.open("rb") as stream:  # xxh3 figures under a /1 label: the digests no longer match
        report = verify(stream, {**entry.manifest, "format": "opskeeper-backup/1", "digest_algorithm": None})
    assert any(p.endswith("content digest differs from the manifest") for p in report.problems)


def test_two_writers_of_one_key_at_once_both_commit_and_the_last_wins(tmp_path: Path) -> None:
    """Local storage: uploads of the same key open side by side (two drills marking one backup verified) each
    commit; the key holds the last one committed, and no partial file is left."""
    from worker.storage.local import LocalStorage

    storage = LocalStorage(str(tmp_path / "backups"))
    first, second = storage.upload("nightly/x.verified.json"), storage.upload("nightly/x.verified.json")
    first.write(b"first")
    second.write(b"second")
    second.commit()
    first.commit()
    with storage.open("nightly/x.verified.json") as stored:
        assert stored.read() == b"first"
    assert [o.key for o in storage.objects()] == ["nightly/x.verified.json"]
    assert not list((tmp_path / "backups").rglob("*.partial"))


def test_a_backup_of_every_database_never_sweeps_in_our_scratch_copies(mongo_uri: str) -> None:
    """No `databases:`: every database is chosen except a drill's scratch database and a guarded restore's staging
    collections, even when a pattern would match them."""
    from jobs.backup.drill import scratch_name
    from jobs.backup.source import select

    tag = uuid.uuid4().hex[:6]
    client: Any = MongoClient(mongo_uri)
    scratch = scratch_name(f"shop{tag}", "20261203040000", uuid.uuid4().hex)
    try:
        client[f"shop{tag}"].users.insert_one({"n": 1})
        client[f"shop{tag}"]["opskeeper_restore_1a2b3c4d.users"].insert_one({"n": 1})
        client[scratch].users.insert_one({"n": 1})
        everything = {f"{n.db}.{n.name}" for n in select(BackupOptions(), client)}
        assert f"shop{tag}.users" in everything
        assert not [ns for ns in everything if "opskeeper_" in ns]
        matching = select(BackupOptions(databases=("*",), collections=("*",)), client)
        assert not [n for n in matching if "opskeeper_" in f"{n.db}.{n.name}"]
    finally:
        for name in (f"shop{tag}", scratch):
            client.drop_database(name)
        client.close()
