"""The mongodump archive format against archives mongodump itself wrote (shared/fixtures/mongodump)."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import pytest
import zstandard

from jobs.backup.archive import ArchiveReader, ArchiveWriter, End, Segment, crc64
from jobs.backup.catalog import verify
from tests.conftest import SHARED

FIXTURES = SHARED / "fixtures" / "mongodump"
ARCHIVES = ["test.bar", "dump-w-oplog", "timeseries", "bad-index-metadata"]


def read(name: str) -> bytes:
    return (FIXTURES / f"{name}.archive").read_bytes()


@pytest.mark.parametrize("name", ARCHIVES)
def test_fixture_parses_and_every_crc_checks(name: str) -> None:
    """Each real archive parses frame by frame and every namespace's CRC-64/XZ matches."""
    reader = ArchiveReader(io.BytesIO(read(name)))
    reader.read_prelude()
    events = list(reader.events())
    ends = [e for e in events if isinstance(e, End)]
    assert ends
    assert reader.crc_ok
    assert all(reader.crc_ok.values())
    assert {e.ns for e in ends} == set(reader.crc_ok)


@pytest.mark.parametrize("name", ARCHIVES)
def test_re_emitting_through_our_writer_gives_identical_bytes(name: str) -> None:
    """Header, preludes, segments and EOFs written by ArchiveWriter equal mongodump's bytes exactly."""
    original = read(name)
    reader = ArchiveReader(io.BytesIO(original))
    header = reader.read_prelude()
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    writer.header(header, reader.preludes)
    for event in reader.events():
        if isinstance(event, Segment):
            writer.segment(event.db, event.collection, event.data)
        else:
            writer.end(event.db, event.collection, event.crc)
    assert out.getvalue() == original


def test_counts_and_namespaces_of_the_oplog_archive() -> None:
    """dump-w-oplog holds test.foo (25 docs), admin.system.version (1) and the oplog (18)."""
    report = verify(io.BytesIO(read("dump-w-oplog")))
    assert report.ok, report.problems
    assert {n["ns"]: n["documents"] for n in report.namespaces} == {
        ".oplog": 18, "admin.system.version": 1, "test.foo": 25
    }  # fmt: skip


def test_crc_check_value() -> None:
    """CRC-64/XZ of '123456789' is the catalogued check value, also when computed in two steps."""
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA
    assert crc64(b"6789", crc64(b"12345")) == 0x995DC9BBDF1939FA


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress, lambda b: b])
def test_verify_reads_every_compression(compress: object) -> None:
    """verify detects gzip, zstd or no compression from the bytes themselves."""
    report = verify(io.BytesIO(compress(read("timeseries"))))  # type: ignore[operator]
    assert report.ok, report.problems
    assert ("timeseries_test.system.buckets.foo_ts", 10) in [(n["ns"], n["documents"]) for n in report.namespaces]


def test_malformed_metadata_is_reported_not_skipped() -> None:
    """mongorestore's own regression case: the malformed index metadata is named as a problem."""
    report = verify(io.BytesIO(read("bad-index-metadata")))
    assert not report.ok
    assert report.problems[0].startswith("test.ixtest: metadata is not valid JSON")


def test_truncated_archive_names_namespace_and_offset() -> None:
    """An archive cut short inside a collection's documents: the namespace and byte offset are named."""
    data = read("dump-w-oplog")
    report = verify(io.BytesIO(data[:1500]))
    assert not report.ok
    assert "archive truncated" in report.problems[0]
    assert " in test.foo at byte " in report.problems[0]


def first_document_offset(data: bytes) -> int:
    """Where the first document of the first segment starts (after its namespace header)."""
    reader = ArchiveReader(io.BytesIO(data))
    reader.read_prelude()
    (header_length,) = struct.unpack_from("<i", data, reader.offset)
    return reader.offset + header_length


def test_bit_flip_in_a_document_is_a_crc_mismatch_for_that_namespace() -> None:
    """One flipped bit inside a document's value fails that namespace's CRC, and only that one."""
    data = bytearray(read("dump-w-oplog"))
    start = first_document_offset(bytes(data))
    (length,) = struct.unpack_from("<i", data, start)
    data[start + length - 2] ^= 0x01  # the last byte of the last value, before the closing NUL
    report = verify(io.BytesIO(bytes(data)))
    bad = [n["ns"] for n in report.namespaces if not n["crc_ok"]]
    assert bad == ["admin.system.version"]
    assert report.problems[0].startswith("admin.system.version: CRC mismatch (archive offset ")


def test_bit_flip_in_a_length_is_a_frame_error_with_offset() -> None:
    """A corrupted document length is reported as a bad length, with the namespace and byte offset."""
    data = bytearray(read("test.bar"))
    start = first_document_offset(bytes(data))
    data[start + 3] ^= 0x7F
    report = verify(io.BytesIO(bytes(data)))
    assert not report.ok
    assert report.problems[0].startswith("bad document length ")
    assert report.problems[0].endswith(f" in admin.system.version at byte {start}")


def test_not_an_archive() -> None:
    """Any other file is refused at byte 0."""
    report = verify(io.BytesIO(b"PK\x03\x04 this is a zip"))
    assert report.problems == ["not a mongodump archive (bad magic number) at byte 0"]


def test_fixture_files_are_where_the_readme_says() -> None:
    """The shared fixtures exist (CI lays shared/ beside the checkout)."""
    assert all(Path(FIXTURES / f"{n}.archive").is_file() for n in ARCHIVES)


def test_verify_command_on_files_mongodump_wrote(env: dict[str, str]) -> None:
    """`backups verify PATH` checks an archive mongodump wrote (no manifest): exit 0, or 2 with the problem."""
    import json

    from tests.conftest import opskeeper

    good = opskeeper("backups", "verify", str(FIXTURES / "dump-w-oplog.archive"), "--json", env=env)
    assert good.code == 0
    assert json.loads(good.stdout)["namespaces"][-1] == {"ns": "test.foo", "documents": 25, "crc_ok": True}
    bad = opskeeper("backups", "verify", str(FIXTURES / "bad-index-metadata.archive"), env=env)
    assert bad.code == 2
    assert "problem: test.ixtest: metadata is not valid JSON" in bad.stdout
