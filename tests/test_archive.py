"""The mongodump archive format against archives mongodump itself wrote (tests/fixtures/mongodump)."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import bson
import pytest
import zstandard

from jobs.backup.archive import TERM, ArchiveReader, ArchiveWriter, End, Header, Prelude, Segment, _ns_header, crc64
from jobs.backup.catalog import verify
from tests.conftest import FIXTURES, peak_rss_mb

ARCHIVES_DIR = FIXTURES / "mongodump"
ARCHIVES = ["test.bar", "dump-w-oplog", "timeseries", "bad-index-metadata"]


def read(name: str) -> bytes:
    return (ARCHIVES_DIR / f"{name}.archive").read_bytes()


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
    """Every archive the tests read is in the repository and named, with its origin, in tests/fixtures/README.md."""
    readme = (FIXTURES / "README.md").read_text()
    assert all((ARCHIVES_DIR / f"{n}.archive").is_file() and f"`{n}.archive`" in readme for n in ARCHIVES)


@pytest.mark.slow
def test_verify_command_on_files_mongodump_wrote(env: dict[str, str]) -> None:
    """`backups verify PATH` checks an archive mongodump wrote (no manifest): exit 0, or 2 with the problem."""
    import json

    from tests.conftest import opskeeper

    good = opskeeper("backups", "verify", str(ARCHIVES_DIR / "dump-w-oplog.archive"), "--json", env=env)
    assert good.code == 0
    assert json.loads(good.stdout)["namespaces"][-1] == {"ns": "test.foo", "documents": 25, "crc_ok": True}
    bad = opskeeper("backups", "verify", str(ARCHIVES_DIR / "bad-index-metadata.archive"), env=env)
    assert bad.code == 2
    assert "problem: test.ixtest: metadata is not valid JSON" in bad.stdout


# --- hostile and incomplete archives ----------------------------------------------------

HEADER = Header("8.0.0", "test")


def crafted(preludes: list[Prelude], parts: list[tuple[str, str, list[bytes] | None]]) -> bytes:
    """An archive from the given parts in order (documents: a segment; None: the EOF), CRCs as mongodump's."""
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    writer.header(HEADER, preludes)
    crcs: dict[str, int | None] = {}
    for db, coll, documents in parts:
        ns = f"{db}.{coll}"
        if documents is None:
            writer.end(db, coll, crcs.get(ns) or 0)
            continue
        data = b"".join(documents)
        crcs[ns] = crc64(data, crcs.get(ns)) if data else crcs.get(ns)
        writer.segment(db, coll, data)
    return out.getvalue()


def whole(db: str, coll: str, documents: list[bytes]) -> list[tuple[str, str, list[bytes] | None]]:
    """One namespace's segment and EOF."""
    return [(db, coll, documents), (db, coll, None)]


def docs(n: int, start: int = 0) -> list[bytes]:
    return [bson.encode({"_id": i, "name": f"user {i}"}) for i in range(start, start + n)]


def test_archive_cut_on_a_frame_boundary_is_incomplete() -> None:
    """Cut right after one namespace's EOF: the namespaces the prelude announced but never closed are named."""
    pre = [Prelude("app", name, "") for name in ("a", "b", "c")]
    full = crafted(pre, [*whole("app", "a", docs(5)), *whole("app", "b", docs(5)), *whole("app", "c", docs(5))])
    assert verify(io.BytesIO(full)).ok
    cut = crafted(pre, whole("app", "a", docs(5)))  # ends exactly after a's EOF and TERM
    assert full.startswith(cut)
    report = verify(io.BytesIO(cut))
    assert not report.ok
    assert report.problems == [
        f"archive incomplete: no EOF for app.b, app.c (announced in the prelude) at byte {len(cut)}"
    ]


@pytest.mark.parametrize(
    ("db", "coll", "rule"),
    [("../etc", "passwd", "may not contain '.' '/'"), ("app", "a\x00b", "may not contain a NUL byte"),
     ("a/b", "c", "may not contain '/'"), ("app", "x$y", "may not contain '$'"), ("", "users", "1 to 63 bytes")],
)  # fmt: skip
def test_hostile_namespace_names_are_a_named_error(db: str, coll: str, rule: str) -> None:
    """A namespace MongoDB would refuse (path tricks, NUL, '$') is one problem naming it and the rule."""
    report = verify(io.BytesIO(crafted([Prelude(db, coll, "")], whole(db, coll, docs(1)))))
    assert not report.ok
    assert report.problems[0].startswith(f"bad namespace {db + '.' + coll!r}: ")
    assert rule in report.problems[0]


def test_a_segment_of_a_namespace_the_prelude_never_announced_is_refused() -> None:
    """Documents for an unannounced namespace are a frame error, not a silently grown table."""
    data = crafted([Prelude("app", "a", "")], [("app", "a", docs(1)), ("app", "ghost", docs(1))])
    report = verify(io.BytesIO(data))
    assert report.problems[0].startswith("namespace not announced in the prelude in app.ghost at byte ")


def test_a_prelude_over_its_cap_is_refused_before_it_is_read() -> None:
    """A 5 MiB metadata string is refused by its length alone, naming the limit."""
    data = crafted([Prelude("app", "a", "x" * (5 * 1024 * 1024))], whole("app", "a", []))
    report = verify(io.BytesIO(data))
    at = 4 + struct.unpack_from("<i", data, 4)[0]  # after the magic and the header
    (length,) = struct.unpack_from("<i", data, at)
    assert length > 5 * 1024 * 1024
    assert report.problems == [f"bad prelude length {length} (the limit is 5 to {4 * 1024 * 1024} bytes) at byte {at}"]


def test_many_large_preludes_are_refused_at_the_total_cap() -> None:
    """Ten 3.9 MiB preludes pass one by one but not together: the total cap is named."""
    meta = "x" * (4 * 1024 * 1024 - 200)
    pre = [Prelude("app", f"c{i}", meta) for i in range(10)]
    report = verify(io.BytesIO(crafted(pre, [])))
    assert report.problems[0].startswith("the prelude exceeds 32 MiB or 100000 namespaces at byte ")


@pytest.fixture(scope="module")
def segment_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small .gz holding one segment of 20 documents of 16 MiB each (320 MiB inside)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.archive.gz"
    big = [bson.encode({"_id": i, "pad": bson.Binary(b"\0" * (16 * 1024 * 1024 - 64))}) for i in range(1)]
    crc = None
    with gzip.open(path, "wb", compresslevel=1) as out:
        writer = ArchiveWriter(out)  # type: ignore[arg-type]
        writer.header(HEADER, [Prelude("app", "blobs", "")])
        out.write(_ns_header("app", "blobs", eof=False, crc=0))
        for i in range(20):
            doc = bson.encode({"_id": i, "pad": bson.Binary(b"\0" * (len(big[0]) - 30))})
            crc = crc64(doc, crc)
            out.write(doc)
        out.write(TERM)
        writer.end("app", "blobs", crc or 0)
    assert path.stat().st_size < 2 * 1024 * 1024
    return path


def test_verify_of_a_segment_bomb_stays_small(segment_bomb: Path) -> None:
    """verify streams a 320 MiB single segment of 16 MiB documents with a peak RSS under 150 MB."""
    rss, out = peak_rss_mb(f"from jobs.backup.catalog import verify\nr = verify(open({str(segment_bomb)!r}, 'rb'))\n"
                           "print(r.ok, r.namespaces)")  # fmt: skip
    assert out.startswith("True [{'ns': 'app.blobs', 'documents': 20")
    assert rss < 150, f"verify peaked at {rss:.0f} MB"


def test_documents_across_read_ahead_blocks_are_read_whole_and_in_order() -> None:
    """Documents of 100 B to 700 KB that straddle the reader's 1 MiB blocks come back byte for byte, CRCs right."""
    import random

    rnd = random.Random(5)  # noqa: S311 - test data, not secrets
    docs_ = [bson.encode({"_id": i, "pad": "x" * rnd.choice([100, 5_000, 300_000, 700_000])}) for i in range(40)]
    data = crafted([Prelude("app", "a", "")], whole("app", "a", docs_))
    assert len(data) > 5 * 1024 * 1024
    reader = ArchiveReader(io.BytesIO(data))
    reader.read_prelude()
    seen = b"".join(event.data for event in reader.events() if isinstance(event, Segment))
    assert seen == b"".join(docs_)
    assert reader.documents == {"app.a": 40}
    assert reader.crc_ok == {"app.a": True}
    cut = data[: len(data) // 2]  # truncated inside a document in the middle of a block
    report = verify(io.BytesIO(cut))
    assert report.problems[0].startswith("archive truncated: expected document in app.a at byte ")


def _re_emitted(collection: str, twice: bool = False) -> bytes:
    """The real dump-w-oplog archive with test.foo renamed to `collection`, its documents written twice if asked
    (so each _id repeats), CRCs recomputed: an archive restore must refuse."""
    from dataclasses import replace

    reader = ArchiveReader(io.BytesIO(read("dump-w-oplog")))
    header = reader.read_prelude()
    rename = {"test.foo": collection}
    preludes = [replace(p, collection=rename.get(p.ns, p.collection)) for p in reader.preludes]
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    writer.header(header, preludes)
    data: dict[str, bytes] = {}
    for event in reader.events():
        name = rename.get(event.ns, event.collection)
        if isinstance(event, Segment):
            data[event.ns] = data.get(event.ns, b"") + event.data
        else:
            body = data.get(event.ns, b"") * (2 if twice and event.ns == "test.foo" else 1)
            if body:
                writer.segment(event.db, name, body)
            writer.end(event.db, name, crc64(body))
    return out.getvalue()


def test_verify_refuses_a_namespace_restore_would_refuse() -> None:
    """A collection named `../../x`: verify fails naming the namespace and the rule (restore would refuse it too),
    instead of saying OK."""
    report = verify(io.BytesIO(_re_emitted("../../x")))
    assert not report.ok
    assert report.problems == ["bad namespace 'test.../../x': a collection name may not contain '..' at byte 117"]


def test_verify_finds_duplicate_ids_within_a_collection() -> None:
    """test.foo's 25 documents written twice: verify fails naming the collection and the 25 repeats; the archive
    as mongodump wrote it has none."""
    report = verify(io.BytesIO(_re_emitted("foo", twice=True)))
    assert report.problems == ["test.foo: 25 document(s) repeat an _id another document of the collection has (a "
                               "restore would stop at the first)"]  # fmt: skip
    assert verify(io.BytesIO(_re_emitted("foo"))).ok


def test_duplicate_id_check_past_its_limit_says_what_it_left() -> None:
    """With a limit of 10 documents, the rest are named as not checked, never passed off as checked."""
    from jobs.backup.ids import DuplicateIds

    ids = DuplicateIds(limit=10)
    reader = ArchiveReader(io.BytesIO(read("dump-w-oplog")))
    reader.read_prelude()
    for event in reader.events():
        if isinstance(event, Segment) and event.db:
            ids.add(event.ns, event.data)
    assert ids.problems() == []
    assert ids.gaps() == ["test.foo: 16 document(s) past the first 10 of the archive were not checked for duplicate "
                          "_id values"]  # fmt: skip


def test_duplicate_ids_are_found_whatever_the_id_type_and_position() -> None:
    """Repeated string, int and embedded-document _ids are found, also when `_id` is not the first field; documents
    without an _id are not duplicates of each other; distinct ones pass."""
    import bson

    from jobs.backup.ids import DuplicateIds

    docs = [{"_id": "a"}, {"_id": 7}, {"_id": {"k": 1}}, {"x": 1, "_id": "b"}, {"x": 1}, {"x": 2}]
    repeated = [{"_id": "a", "other": 1}, {"n": 3, "_id": 7}, {"_id": {"k": 1}}, {"_id": "b"}]
    ids = DuplicateIds()
    ids.add("app.users", b"".join(bson.encode(d) for d in docs))
    assert ids.problems() == []
    ids.add("app.users", b"".join(bson.encode(d) for d in repeated))
    assert ids.problems() == ["app.users: 4 document(s) repeat an _id another document of the collection has (a "
                              "restore would stop at the first)"]  # fmt: skip


class _Upload:
    """Where a sink's compressed bytes go; `fail_after` writes, it raises, as a lost S3 connection would."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.parts: list[bytes] = []
        self.fail_after = fail_after

    def write(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.parts) >= self.fail_after:
            raise OSError("connection reset by peer")
        self.parts.append(bytes(data))


def test_the_gzip_sink_writes_one_standard_stream_whatever_the_writes() -> None:
    """Compressed on ISA-L's thread, the archive is still one gzip stream the standard library reads back byte for
    byte, whatever the writes' sizes (a byte, a reused buffer, a view larger than a block); its hash and counts are
    the stored bytes'."""
    import hashlib
    import os

    from jobs.backup.catalog import CompressingSink

    upload = _Upload()
    sink = CompressingSink(upload, "gzip")
    written = bytearray()
    buffer = bytearray(4096)
    for n in range(300):
        buffer[:] = (bytes([n % 251]) * 2048) + os.urandom(2048)  # the same buffer each time, refilled
        sink.write(buffer)
        written += buffer
    sink.write(b"x")
    big = memoryview(os.urandom(1 << 20) + bytes(3 << 20))
    sink.write(big)
    written += b"x" + big
    sink.close()
    stored = b"".join(upload.parts)
    assert gzip.decompress(stored) == bytes(written)
    assert stored[:2] == b"\x1f\x8b"
    assert (sink.raw_bytes, sink.stored_bytes) == (len(written), len(stored))
    assert sink.sha256.hexdigest() == hashlib.sha256(stored).hexdigest()


def test_an_upload_failing_under_the_gzip_thread_fails_the_backup() -> None:
    """An error of the upload while the compressing thread writes is raised to the backup, never swallowed."""
    import os

    from jobs.backup.catalog import CompressingSink

    sink = CompressingSink(_Upload(fail_after=2), "gzip")

    def backup() -> None:
        for _ in range(64):
            sink.write(os.urandom(1 << 20))
        sink.close()

    with pytest.raises(OSError, match="connection reset by peer"):
        backup()
