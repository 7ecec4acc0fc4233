"""What a person reads at a terminal when something is wrong: one line naming the place and the rule, the right
exit code, never a traceback or a library's internals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import AWS_ENV, opskeeper, write


def test_a_missing_bucket_is_one_line_naming_it(tmp_path: Path, s3_endpoint: str, env: dict[str, str]) -> None:
    """`backups list` on an S3 bucket that does not exist: one line with the bucket's name, exit 3, no traceback."""
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: nightly
    kind: backup
    schedule: "0 3 * * *"
    options: {{uri: "mongodb://127.0.0.1:9/", storage: "s3://no-such-bucket-4711/mongo", endpoint_url: "{s3_endpoint}"}}
""")  # fmt: skip
    result = opskeeper("backups", "list", "--config", str(config), env={**env, **AWS_ENV})
    assert result.code == 3
    assert result.stderr.strip().splitlines() == [
        "opskeeper: S3: the bucket 'no-such-bucket-4711' does not exist (check the storage: URL and "
        "AWS_ENDPOINT_URL_S3)"
    ]  # fmt: skip
    assert result.stdout == ""


def test_a_mistyped_mongodb_uri_fails_validation(tmp_path: Path, env: dict[str, str]) -> None:
    """`mongdb://…` as a backup's uri is a configuration error at `validate` (exit 78) naming the job, the field and
    the rule, without the URI's password."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: nightly
    kind: backup
    schedule: "0 3 * * *"
    options: {uri: "mongdb://app:s3cret-pass@db.example.com/shop"}
""")  # fmt: skip
    result = opskeeper("validate", "--config", str(config), env=env)
    assert result.code == 78
    assert "nightly" in result.stderr
    assert "options.uri" in result.stderr
    assert "a MongoDB URI must start with mongodb:// or mongodb+srv://; it starts with 'mongdb://'" in result.stderr
    assert "s3cret-pass" not in result.stderr


def test_a_ledger_url_that_is_not_mongodb_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    """OPSKEEPER_LEDGER=mongdb://… is a settings error, not a SQLite file named after the URL."""
    result = opskeeper("history", env={**env, "OPSKEEPER_LEDGER": "mongdb://db.example.com/ops"})
    assert result.code == 78
    assert "OPSKEEPER_LEDGER (a mongodb:// URL, or a SQLite file's path) must start with mongodb://" in result.stderr
    assert not list(tmp_path.glob("mongdb*"))


def test_restore_to_a_mistyped_uri_is_a_usage_error(tmp_path: Path, env: dict[str, str]) -> None:
    """`restore --to mongdb://…`: exit 64 with the rule, before anything is read."""
    archive = tmp_path / "x.archive"
    archive.write_bytes(b"")
    result = opskeeper("restore", str(archive), "--to", "mongdb://127.0.0.1/x", env=env)
    assert result.code == 64
    assert result.stderr.strip() == "opskeeper: --to must start with mongodb:// or mongodb+srv://; it starts with " \
                                    "'mongdb://'"  # fmt: skip


def test_a_broken_lockfile_is_file_line_col_and_one_sentence(tmp_path: Path) -> None:
    """A pnpm lockfile that is not YAML, or a package-lock.json that is not JSON: FILE:LINE:COL and one line, with
    none of PyYAML's own layout ("<unicode string>", indented marks)."""
    from jobs.dependencies.lockfiles import LockfileError, read_lockfile

    pnpm = tmp_path / "pnpm-lock.yaml"
    pnpm.write_text("lockfileVersion: '9.0'\nimporters:\n  .:\n    dependencies: {a: [\n")
    with pytest.raises(LockfileError) as caught:
        read_lockfile(pnpm)
    assert str(caught.value) == f"{pnpm}:5:1: not valid YAML: while parsing a flow node did not find expected node " \
                                "content"  # fmt: skip
    npm = tmp_path / "package-lock.json"
    npm.write_text('{\n  "lockfileVersion": 3,\n  "packages": {,}\n}\n')
    with pytest.raises(LockfileError) as caught:
        read_lockfile(npm)
    assert str(caught.value) == f"{npm}:3:16: not valid JSON: Expecting property name enclosed in double quotes"


def test_restore_to_an_unreachable_server_says_so_and_honours_the_uris_timeout(tmp_path: Path,
                                                                              env: dict[str, str]) -> None:  # fmt: skip
    """`restore --to` a server nobody answers: one line "cannot reach HOST: reason", exit 3, no traceback; the
    URI's serverSelectionTimeoutMS=300 is what it waits."""
    from tests.conftest import FIXTURES, free_port_closed

    port = free_port_closed()
    archive = FIXTURES / "mongodump" / "dump-w-oplog.archive"
    result = opskeeper("restore", str(archive), "--to", f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300",
                       "--yes", env=env)  # fmt: skip
    assert result.code == 3
    assert result.stderr.strip().splitlines()[-1] == (f"opskeeper: cannot reach 127.0.0.1:{port}: Connection refused "
                                                      "(no server answered within 0.3 s)")  # fmt: skip
    assert "Traceback" not in result.stderr


def test_a_full_disk_names_the_file_and_the_folder(tmp_path: Path) -> None:
    """A backup write the file system refuses (here a file-size limit, as a full disk refuses: the OS's error has no
    file name) names the backup file and its folder."""
    import subprocess
    import sys

    script = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from worker.storage.local import LocalStorage
upload = LocalStorage({str(tmp_path / "backups")!r}).upload("nightly/x.archive.gz")
try:
    upload.write(b"x" * 100_000)
    upload.commit()
except OSError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path.cwd())
    said = result.stdout.strip()
    assert said.startswith("[Errno 27] File too large (writing x.archive.gz in ")
    assert str(tmp_path / "backups" / "nightly") in said


def test_a_damaged_ledger_is_refused_at_start(tmp_path: Path, env: dict[str, str]) -> None:
    """A SQLite ledger with corrupt pages: `run` refuses to start (exit 3), naming the file, what SQLite's
    quick_check found and how to recover; it does not run blind."""
    from datetime import UTC, datetime

    from worker.job import Status
    from worker.ledger import RunRecord, SqliteLedger

    path = Path(env["OPSKEEPER_LEDGER"])
    ledger = SqliteLedger(path)
    now = datetime.now(UTC)
    for n in range(400):
        ledger.record(RunRecord(run_id=f"r{n}", job_id="beat", kind="command", status=Status.OK, started_at=now,
                                finished_at=now, summary="x" * 200))  # fmt: skip
    ledger.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for at in range(3 * page, len(data) - page, 7 * page):  # leave the header page; scramble pages in the middle
        data[at + 8 : at + 200] = bytes(range(192))
    path.write_bytes(bytes(data))
    config = write(tmp_path / "jobs.yaml", "jobs:\n  - id: beat\n    kind: command\n    schedule: every 1s\n"
                                           "    options: {argv: ['true']}\n")  # fmt: skip
    result = opskeeper("run", "--config", str(config), "--for", "3s", env=env)
    assert result.code == 3, result.stderr
    said = result.stderr.strip().splitlines()[-1]
    assert said.startswith(f"opskeeper: the ledger {path.resolve()} is damaged (")
    assert f"move it aside (mv {path.resolve()} {path.resolve()}.damaged)" in said


@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("backed up 3 collections", 100, "backed up 3 collections"),
    ("express 4.21.2 → 4.22.1, mongoose 8.9.5 → 8.12.0, dotenv 16.4.7 → 16.5.0", 40,
     "express 4.21.2 → 4.22.1, mongoose…"),
    ("a" * 50, 20, "a" * 19 + "…"),  # one long token: cut where it must be
    ("line one\n  line two", 100, "line one line two"),
])  # fmt: skip
def test_summaries_are_cut_at_a_word_with_an_ellipsis(text: str, limit: int, expected: str) -> None:
    """A summary longer than its limit ends at a word with "…", never mid-word, and is one line."""
    from worker.job import Outcome, Status, cut

    assert cut(text, limit) == expected
    assert len(cut(text, limit)) <= limit
    assert Outcome(Status.OK, "word " * 200).summary.endswith("word…")


def test_sizes_and_counts_read_as_a_person_would_write_them() -> None:
    """14 kB, not 0.0 MB; 1 collection, not 1 collections."""
    from worker.job import counted, format_size

    assert [format_size(n) for n in (None, 512, 14_200, 3_200_000, 1.4e9)] == ["–", "512 B", "14.2 kB", "3.2 MB",
                                                                                "1.4 GB"]  # fmt: skip
    assert [counted(n, "collection") for n in (0, 1, 2, 1250)] == ["0 collections", "1 collection", "2 collections",
                                                                  "1,250 collections"]  # fmt: skip


def test_a_subcommands_usage_error_shows_its_own_usage(env: dict[str, str]) -> None:
    """An unknown option to `status` or `backups list`: that subcommand's usage and name, exit 64."""
    for argv, usage in ((["status", "--bogus"], "usage: opskeeper status "),
                        (["backups", "list", "--x"], "usage: opskeeper backups list ")):  # fmt: skip
        result = opskeeper(*argv, env=env)
        assert result.code == 64
        assert result.stderr.startswith(usage), result.stderr
        assert result.stderr.strip().endswith(f"opskeeper {' '.join(argv[:-1])}: error: unrecognized arguments: "
                                              f"{argv[-1]}")  # fmt: skip


def test_negative_retention_is_refused_at_validate(tmp_path: Path, env: dict[str, str]) -> None:
    """`keep_last: -5` is a configuration error naming the place and the rule, not "keep none"."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: nightly
    kind: backup
    schedule: "0 3 * * *"
    options: {storage: var/b, retention: {keep_last: -5}}
""")  # fmt: skip
    result = opskeeper("validate", "--config", str(config), env=env)
    assert result.code == 78
    assert f"{config}:5:" in result.stderr
    assert "jobs[0] (nightly).options.retention.keep_last: Input should be greater than or equal to 0, got -5" in \
        result.stderr  # fmt: skip
